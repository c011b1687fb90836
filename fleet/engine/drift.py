"""Drift grouped across hosts: hosts whose changes are identical share one block, so 28 machines
that drifted the same way read as one diff, not 28 copies.

Works on the JSON shape of host results (`dataclasses.asdict(HostResult)`), so a run read back
from a `--json` file groups exactly like a live one.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fleet.engine.facts import Fact
from fleet.shell import q

CHANGES = ("would change", "changed", "failed")
# Hosts that could not be compared: grouped by their status alone (their errors name addresses).
NOT_COMPARED = ("unreachable", "interrupted", "skipped")


def change_set(host: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two hosts' drift the same: every changed or failed step (a secret file by the
    digest of its masked diff, which is never shown), the handlers and the failing checks."""
    if host.get("status") in NOT_COMPARED:
        return (("status", host["status"]),)
    steps = tuple((s["role"], s["name"], s["status"], s["message"], s.get("digest") or s.get("diff") or "")
                  for s in host.get("steps", []) if s["status"] in CHANGES)
    verifies = tuple(v["name"] for v in host.get("verifies", []) if not v["ok"])
    return steps + tuple(("handler", h) for h in host.get("handlers", [])) + tuple(("verify", v) for v in verifies)


def groups(hosts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per distinct change set, largest first, hosts unlike any other last.
    Hosts with nothing to report (status ok, no change) are in no group."""
    by_set: dict[tuple[Any, ...], list[str]] = {}
    for name, host in hosts.items():
        key = change_set(host)
        if key:
            by_set.setdefault(key, []).append(name)
    ordered = sorted(by_set.values(), key=lambda names: (-len(names), natural_key(names[0])))
    result = []
    for names in ordered:
        names = sorted(names, key=natural_key)
        first = hosts[names[0]]
        result.append({
            "hosts": names,
            "label": compact(names),
            "status": first.get("status"),
            "changes": [{k: s.get(k) for k in ("role", "name", "status", "message", "diff")}
                        for s in first.get("steps", []) if s["status"] in CHANGES],
            "handlers": list(first.get("handlers", [])),
            "failed_verifies": [v["name"] for v in first.get("verifies", []) if not v["ok"]],
            "unique": len(names) == 1,
        })
    return result


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def natural_key(name: str) -> tuple[Any, ...]:
    """h2 before h10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def compact(names: list[str]) -> str:
    """['h01'..'h27', 'h30'] -> 'h01..h27, h30': runs of three or more consecutive numbers with
    the same prefix (and digit count) collapse into first..last."""
    ordered = sorted(dict.fromkeys(names), key=natural_key)
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) >= 3:
            out.append(f"{run[0]}..{run[-1]}")
        else:
            out.extend(run)
        run.clear()

    for name in ordered:
        if run and _follows(run[-1], name):
            run.append(name)
            continue
        flush()
        run.append(name)
    flush()
    return ", ".join(out)


def _follows(previous: str, name: str) -> bool:
    a, b = _NUMBERED.match(previous), _NUMBERED.match(name)
    if not a or not b or a.group(1) != b.group(1):
        return False
    # h09 -> h10 keeps the width; 9 -> 10 without zero padding is fine too
    padded = a.group(2).startswith("0") or b.group(2).startswith("0")
    if padded and len(a.group(2)) != len(b.group(2)):
        return False
    return int(b.group(2)) == int(a.group(2)) + 1


# ---------------------------------------------------------------- secret files
# A secret file's content is never read back (no diff is shown), yet two hosts' drift of it must
# be told apart. The probe sends the wanted content with this host's secrets (its token, its
# password hash) replaced by a placeholder; the host replaces the same secrets in its copy, diffs
# the two (plain `diff`: changed lines only, no context, so the host's name in a header line
# does not count) and returns only the hash of that diff. Hosts edited alike share the hash.
PLACEHOLDER = "@@fleet-secret@@"


def masked_diff_fact(path: str, wanted: bytes, secrets: list[str]) -> Fact:
    """sha256 of `diff wanted actual`, both without secrets ('absent' when there is no file).
    The secrets travel in the probe script on stdin, as the apply script's contents do."""
    text = wanted.decode(errors="replace")
    for secret in secrets:
        text = text.replace(secret, PLACEHOLDER)
    encoded = base64.b64encode(text.encode()).decode()
    p = q(path)
    # Never through a link (O_NOFOLLOW) and never held by a FIFO (O_NONBLOCK): a link or anything
    # but a regular file is a digest of its own, and nothing behind it is read.
    lines = [f"if [ -L {p} ]; then echo link; exit 0; fi",
             f"if [ -e {p} ] && [ ! -f {p} ]; then echo not-a-file; exit 0; fi",
             f"__m=$(dd if={p} iflag=nofollow,nonblock status=none 2>/dev/null && printf x) || "
             "{ echo absent; exit 0; }", "__m=${__m%x}",
             f"__w=$(printf %s {q(encoded)} | base64 -d && printf x); __w=${{__w%x}}"]
    for secret in secrets:
        lines += [f"__s={q(secret)}", f'__m=${{__m//"$__s"/{PLACEHOLDER}}}']
    lines.append('diff <(printf %s "$__w") <(printf %s "$__m") | sha256sum')
    key = hashlib.sha256("\0".join([path, encoded, *secrets]).encode()).hexdigest()[:12]
    return Fact(f"masked-diff:{path}:{key}", "( " + "\n".join(lines) + "\n)", lambda out: out.split()[0][:16])


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
