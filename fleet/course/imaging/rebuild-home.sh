# shellcheck shell=bash

__rebuild_home() {
  local user=$1 home=/home/$1 new=/home/.fleet-new-$1 old=/home/.fleet-old-$1; shift
  rm -rf -- "$new" "$old"
  mkdir -m 0700 -- "$new" && chown -- "$user:" "$new" && chmod --reference="$home" -- "$new" || return 1
  # shellcheck disable=SC2016  # single quotes on purpose: the user's own bash expands these
  runuser -u "$user" -- bash -c '
    set -eu; new=$1 home=$2; shift 2
    cp -a /etc/skel/. "$new"/
    while [ $# -gt 1 ]; do
      kind=$1 rel=$2; shift 2
      if [ "$kind" = dir ]; then
        mkdir -p -- "$new/$rel"
        if [ -d "$home/$rel" ] && [ ! -L "$home/$rel" ]; then chmod --reference="$home/$rel" -- "$new/$rel"; fi
      elif { [ -e "$home/$rel" ] || [ -L "$home/$rel" ]; } && [ ! -e "$new/$rel" ]; then
        case $rel in */*) mkdir -p -- "$new/${rel%/*}" ;; esac
        mv -T -- "$home/$rel" "$new/$rel" && echo "carried into the new home: $rel"
      fi
    done' _ "$new" "$home" "$@" || return 1
  mv -T -- "$home" "$old" && mv -T -- "$new" "$home" && rm -rf -- "$old" || return 1
  echo "removed: everything in $home but /etc/skel and the course's own content (home rebuilt)"
}
