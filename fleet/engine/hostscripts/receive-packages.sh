# shellcheck shell=bash
# Receives the packages the controller sends before an apply (fleet/engine/runner.py): a tar
# stream on stdin, right after this script, holding wheels/*.whl (the course lock's, for
# fleet/engine/wheels.py) and debs/*.deb (for apt's own cache, fleet/engine/debs.py).
# The wheels replace the folder's content as a whole, so a cut transfer leaves the previous
# set in place; the .debs are moved into apt's cache one by one, where apt checks each.
set -u
umask 022
state=/var/lib/jupyter-fleet
wheels="$state/wheels"
mkdir -p "$state" /var/cache/apt/archives
# Leftovers of transfers cut over an hour ago (a run in flight is younger than that).
find "$state" -maxdepth 1 -name '.incoming-packages-*' -mmin +60 -exec rm -rf {} + 2>/dev/null
incoming=$(mktemp -d "$state/.incoming-packages-XXXXXX") || exit 1

receive() {
  if ! tar -x -f - -C "$incoming" --no-same-owner --no-same-permissions; then
    rm -rf "$incoming"
    echo "the packages did not arrive whole"
    return 1
  fi
  if [ -d "$incoming/wheels" ]; then
    chmod 0755 "$incoming/wheels"
    rm -rf "$wheels.old"
    if [ -d "$wheels" ]; then mv -T "$wheels" "$wheels.old"; fi
    mv -T "$incoming/wheels" "$wheels" && rm -rf "$wheels.old"
  fi
  if [ -d "$incoming/debs" ]; then
    find "$incoming/debs" -maxdepth 1 -name '*.deb' -type f -exec mv -f -t /var/cache/apt/archives/ {} +
  fi
  rm -rf "$incoming"
  echo "received the packages"
}

# Last line, parsed whole before it runs: tar reads the rest of stdin, then the shell exits.
receive; exit $?
