# shellcheck shell=bash
mkdir -p @STATE_DIR@/pending
# apt with a bounded wait for the dpkg lock: fresh cloud images run unattended upgrades at boot.
__apt() {
  local timeout=$1; shift
  apt-get -q -o DPkg::Lock::Timeout="$timeout" -o Acquire::Retries=3 "$@" 2>&1 | grep -v '^\(Reading\|Building\|Get:\|Hit:\|Ign:\|Fetched\|Selecting\|Preparing\|Unpacking\|Setting up\|Processing\)'
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ] && [ "$timeout" -gt 0 ]; then
    __lock_holder
  fi
  return "$rc"
}
__lock_holder() {
  python3 -I - <<'PY' 2>/dev/null
@DPKG_LOCK_HOLDER@
PY
}
