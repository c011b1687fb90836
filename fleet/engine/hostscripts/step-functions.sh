# shellcheck shell=bash
# Atomic write: content to a temp file beside the target, synced, then renamed over it.
__put() {
  local dest=$1 mode=$2 owner=$3 group=$4 tmp
  mkdir -p "$(dirname "$dest")"
  # Temp files an interrupted run left behind never became the target: clear them.
  rm -f "$(dirname "$dest")"/.fleet-tmp.*
  tmp=$(mktemp "$(dirname "$dest")/.fleet-tmp.XXXXXX") || return 1
  if ! { printf %s "$5" | base64 -d > "$tmp" && chmod "$mode" "$tmp" && chown "$owner:$group" "$tmp" \
    && sync "$tmp" && mv -f "$tmp" "$dest"; }; then rm -f "$tmp"; return 1; fi
}
# Bounded retries for network installs, so a slow registry does not fail a run.
__retry() {
  local n=$1 i; shift
  for i in $(seq "$n"); do "$@" && return 0; [ "$i" -lt "$n" ] && sleep $((i * 2)); done
  return 1
}
