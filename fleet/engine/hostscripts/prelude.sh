# shellcheck shell=bash
set -u
umask 022
# Root works from / with root's home: nothing in a login user's home or the current folder is
# read by what runs here (Python's `json.py`, R's `.Rprofile`); Python is also told so directly.
cd / || exit 1
export HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONSAFEPATH=1
unset PYTHONPATH PYTHONSTARTUP PYTHONHOME PYTHONUSERBASE R_PROFILE_USER R_ENVIRON_USER
mark() { printf '\n@@%s@@ %s\n' "$__N" "$*"; }
# A fact in a user's territory is read as that user (fleet.engine.steps.read_as); a user that does
# not exist yet owns nothing there. /etc/passwd is read by bash itself: no process per fact
# for local users. The read has a time limit (USER_READ_S): what the user planted (git's
# core.fsmonitor, a FIFO) costs this host seconds, reported, never the run. Its output goes to a
# file, not a pipe, so a process the user leaves behind cannot hold the probe open either.
__read_as() {
  local name rest found='' out rc
  while IFS=: read -r name rest; do [ "$name" = "$1" ] && found=1 && break; done < /etc/passwd
  # Not a local user: ask NSS (LDAP and the like) before calling it absent.
  if [ -z "$found" ] && ! getent passwd "$1" >/dev/null; then echo ABSENT; return; fi
  out=$(mktemp) || return 1
  # The subshell keeps bash's own "Killed" notice out of the fact.
  ( timeout -k 3 "$__URS" runuser -u "$1" -- bash -c "$2" >"$out" 2>&1 </dev/null ) 2>/dev/null
  rc=$?
  cat "$out"; rm -f "$out"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    printf '\nfleet: reading as %s took over %s s and was stopped (a command the user planted?)\n' "$1" "$__URS"
  fi
  return "$rc"
}
# HTTP GET through bash's /dev/tcp: no process started (cheap in every probe), and a token
# passed here is never in any process's arguments. Succeeds on a 2xx status line.
__http_ok() {
  local host=$1 port=$2 path=$3 token=${4:-} status=
  if ! exec 3<>"/dev/tcp/$host/$port"; then echo "nothing answers on $host:$port"; return 1; fi 2>/dev/null
  { printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\n' "$path" "$host" "$port"
    [ -z "$token" ] || printf 'Authorization: token %s\r\n' "$token"
    printf '\r\n'; } >&3
  IFS= read -r -t 5 status <&3
  exec 3<&- 3>&-
  case $status in "HTTP/1."?" 2"*) return 0 ;; esac
  echo "GET $path on $host:$port: ${status:-no reply within 5 s}"
  return 1
}
