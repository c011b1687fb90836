# Receives the course's wheels from the controller (fleet/engine/wheels.py): a tar stream on
# stdin, right after this script. The set replaces the folder's content as a whole, so a cut
# transfer leaves the previous set in place and the next run sends it again.
set -u
umask 022
state=/var/lib/jupyter-fleet
dir="$state/wheels"
mkdir -p "$state"
# Leftovers of transfers cut over an hour ago (a run in flight is younger than that).
find "$state" -maxdepth 1 -name '.wheels-*' -mmin +60 -exec rm -rf {} + 2>/dev/null
incoming=$(mktemp -d "$state/.wheels-XXXXXX") || exit 1

receive() {
  if ! tar -x -f - -C "$incoming" --no-same-owner --no-same-permissions; then
    rm -rf "$incoming"
    echo "the wheels did not arrive whole"
    return 1
  fi
  chmod 0755 "$incoming"
  rm -rf "$dir.old"
  if [ -d "$dir" ]; then mv -T "$dir" "$dir.old"; fi
  mv -T "$incoming" "$dir" && rm -rf "$dir.old"
  echo "received $(find "$dir" -maxdepth 1 -name '*.whl' | wc -l) wheels"
}

# Last line, parsed whole before it runs: tar reads the rest of stdin, then the shell exits.
receive; exit $?
