"""The two scripts a host receives: one batched probe of facts, one batched apply.

Both travel on the SSH channel's stdin to `bash -s` (as root through sudo), so file
contents and secrets never appear in a process's arguments. Sections of output are
delimited by a random marker the script cannot print by accident.
"""
from __future__ import annotations

import re
import secrets as _random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.engine import hostscripts, rootguard
from fleet.engine.facts import Fact
from fleet.engine.steps import KEPT, STATE_DIR, Handler, Outcome, Step, Verify, read_as
from fleet.shell import as_user, q

# Seconds a fact read as a course user may take (see __read_as), and what it says when stopped.
USER_READ_S = 45   # above the 30 s bound on a user's batched hash (stat_batch), which frees a FIFO first
READ_STOPPED = re.compile(r"^fleet: reading as \S+ took over \d+ s and was stopped.*$", re.M)

# The shell functions every script starts with (mark, __read_as with its time limit USER_READ_S,
# __http_ok), those a step's commands may call as root or, inside a user's territory, as that user
# (__put, __retry), and those of the apply script only (__apt, __lock_holder): fleet/engine/hostscripts.
PRELUDE = hostscripts.load("prelude.sh")
STEP_FUNCTIONS = hostscripts.load("step-functions.sh")

# Root writes only where no other user can move things under it: fleet.engine.rootguard walks each
# path a root step declares from / with lstat on descriptors, checks every folder and link on the
# way, makes the missing folders itself and refuses with `refused: PATH: ...` (exit 1). Isolated
# Python (-I): nothing from the environment or the current folder is imported.
ROOT_TERRITORY = ("__GUARD=" + q(Path(rootguard.__file__).read_text()) + "\n"
                  '__root_territory() { python3 -I -c "$__GUARD" "$@"; }\n')

APPLY_FUNCTIONS = (hostscripts.load("apply-functions.sh", STATE_DIR=STATE_DIR,
                                    DPKG_LOCK_HOLDER=hostscripts.load("dpkg_lock_holder.py"))
                   + STEP_FUNCTIONS + ROOT_TERRITORY)


def _nonce() -> str:
    return _random.token_hex(8)


@dataclass
class Probe:
    facts: list[Fact]
    verifies: list[Verify]
    nonce: str = field(default_factory=_nonce)
    user_read_s: int = USER_READ_S

    def script(self) -> str:
        parts = [f"__N={self.nonce}", f"__URS={int(self.user_read_s)}", PRELUDE]
        for user, paths in self._stat_paths().items():
            parts.append(f"mark stats {user or ''}\n( {read_as(user, stat_batch(paths, bounded=bool(user)))}\n) 2>&1")
        for index, fact in enumerate(self.facts):
            if not fact.stat_path:
                parts.append(f"mark fact {index}\n( {fact.command}\n) 2>&1")
        for index, verify in enumerate(self.verifies):
            parts.append(f"mark verify {index}\n{_verify_body(verify, wait_s=0)}\nmark rc $?")
        # A glob, not `ls`: every process a no-op probe starts is paid on every host, every run.
        parts.append(f"mark pending\nfor __p in {STATE_DIR}/pending/*; do [ -e \"$__p\" ] && echo \"${{__p##*/}}\"; done\n"
                     "mark done")
        return "\n".join(parts) + "\n"

    def _stat_paths(self) -> dict[str | None, list[str]]:
        """Paths for the batched stat, by the user whose territory they are (None: root)."""
        by_user: dict[str | None, list[str]] = {}
        for fact in self.facts:
            if fact.stat_path:
                by_user.setdefault(fact.user, []).append(fact.stat_path)
        return by_user

    def parse(self, output: str) -> tuple[dict[str, Any], dict[int, tuple[bool, str]], set[str], dict[str, str]]:
        """Parsed facts by key, verify results by index, pending handler markers, and fact errors."""
        sections = split_sections(output, self.nonce)
        facts: dict[str, Any] = {}
        errors: dict[str, str] = {}
        verifies: dict[int, tuple[bool, str]] = {}
        pending: set[str] = set()
        for header, body in sections:
            kind, _, rest = header.partition(" ")
            if kind == "fact":
                self._parse_facts([(self.facts[int(rest)], body)], facts, errors)
            elif kind == "stats":
                user = rest.strip() or None
                stopped = READ_STOPPED.search(body)
                by_path = split_stat_batch(body)
                self._parse_facts([(f, stopped.group(0) if stopped else by_path.get(f.stat_path, "ABSENT"))
                                   for f in self.facts if f.stat_path and f.user == user], facts, errors)
            elif kind == "verify":
                verifies[int(rest)] = (False, body)
            elif kind == "rc":
                index = max(verifies)
                verifies[index] = (rest.strip() == "0", verifies[index][1])
            elif kind == "pending":
                pending = {line.strip() for line in body.splitlines() if line.strip()}
        return facts, verifies, pending, errors

    @staticmethod
    def _parse_facts(outputs: list[tuple[Fact, str]], facts: dict[str, Any], errors: dict[str, str]) -> None:
        for fact, text in outputs:
            stopped = READ_STOPPED.search(text)
            if stopped:   # whatever came before the limit is not the fact
                errors[fact.key] = stopped.group(0)
                continue
            try:
                facts[fact.key] = fact.parse(text)
            except Exception as exc:  # a parser meeting odd output fails the steps that need it
                errors[fact.key] = f"could not read fact {fact.key}: {exc}: {text.strip()[:200]}"


def stat_batch(paths: list[str], bounded: bool = False) -> str:
    """One `stat` and one `sha256sum` for many paths, printed as `path_fact` would print each.
    Links are not hashed. `bounded`: in a user's territory a file may turn into a FIFO between
    the test and the read; a time limit keeps that from holding the probe."""
    quoted = " ".join(q(p) for p in paths)
    hasher = "timeout -k 1 30 sha256sum" if bounded else "sha256sum"
    return (f"stat -c '%F|%a|%U|%G|%n' -- {quoted} 2>/dev/null; __fs=(); "
            f"for __f in {quoted}; do [ -f \"$__f\" ] && [ ! -L \"$__f\" ] && __fs+=(\"$__f\"); done; "
            f"[ ${{#__fs[@]}} -eq 0 ] || {hasher} -- \"${{__fs[@]}}\" 2>/dev/null; true")


def split_stat_batch(text: str) -> dict[str, str]:
    """stat_batch's output as {path: the text a single path_fact prints}."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("|", 4)
        if len(fields) == 5 and fields[0] in FILE_KINDS:
            found[fields[4]] = ["|".join(fields[:4])]
        elif "  " in line:
            digest, _, path = line.partition("  ")
            if path in found:
                found[path].append(f"SHA {digest}  -")
    return {path: "\n".join(lines) for path, lines in found.items()}


# What `stat -c %F` prints: tells a stat line from a sha256sum line.
FILE_KINDS = {"regular file", "regular empty file", "directory", "symbolic link", "fifo", "socket",
              "character special file", "block special file", "weird file"}


def split_sections(output: str, nonce: str) -> list[tuple[str, str]]:
    marker = f"\n@@{nonce}@@ "
    chunks = ("\n" + output).split(marker)
    sections = []
    for chunk in chunks[1:]:
        header, _, body = chunk.partition("\n")
        sections.append((header.strip(), body))
    return sections


def _verify_body(verify: Verify, wait_s: float) -> str:
    body = as_user(verify.user, verify.script)
    if wait_s <= 0:
        return f"( {body}\n) 2>&1"
    # Retried every 0.1 s (a service that starts in 1.13 s is seen at 1.2 s, not at 2 s) until
    # wait_s passes; the status of the last attempt is the verdict.
    return (f"( __out=$(mktemp); __end=$(( ${{EPOCHSECONDS}} + {int(wait_s)} )); while :; do "
            f"if ( {body}\n) >\"$__out\" 2>&1; then __rc=0; break; else __rc=$?; fi; "
            f"[ ${{EPOCHSECONDS}} -lt $__end ] || break; sleep 0.1; done; cat \"$__out\"; rm -f \"$__out\"; exit $__rc )")


@dataclass
class Change:
    index: int
    step: Step
    outcome: Outcome


@dataclass
class Apply:
    changes: list[Change]
    handlers: list[Handler]
    notified: set[str]          # handler markers to set or honour
    verifies: list[Verify]
    nonce: str = field(default_factory=_nonce)

    def script(self) -> str:
        parts = [f"__N={self.nonce}", f"__URS={USER_READ_S}", PRELUDE, APPLY_FUNCTIONS]
        for change in self.changes:
            markers = [h.marker for h in self.handlers if h.name in change.step.notify]
            # The pending marker is set before the change, so a cut mid-change still restarts next run.
            touch = f"touch {' '.join(map(q, markers))}\n" if markers else ""
            body = self._in_territory(change.step, "\n".join(change.outcome.commands))
            stop = "" if not change.step.critical else f"if [ $__rc -ne 0 ] && [ $__rc -ne {KEPT} ]; then mark abort; exit 1; fi\n"
            # Starting a stopped unit loads every change made so far: its pending restart is moot.
            moot = [h.marker for h in self.handlers if h.unit and h.unit == change.outcome.starts]
            clear = f"[ $__rc -eq 0 ] && rm -f {' '.join(map(q, moot))}\n" if moot else ""
            parts.append(f"mark step {change.index}\n__t0=$EPOCHREALTIME\n{touch}( set -e\n{body}\n) 2>&1 </dev/null\n"
                         f"__rc=$?; mark rc $__rc $__t0 $EPOCHREALTIME\n{clear}{stop}")
        for handler in self.handlers:
            if handler.marker in self.notified:
                parts.append(f"if [ -e {q(handler.marker)} ]; then mark handler {handler.name}\n__t0=$EPOCHREALTIME\n"
                             f"( set -e\n{handler.command}\n) 2>&1 </dev/null\n__rc=$?; mark rc $__rc $__t0 $EPOCHREALTIME\n"
                             f"[ $__rc -eq 0 ] && rm -f {q(handler.marker)}; fi")
        for index, verify in enumerate(self.verifies):
            parts.append(f"mark verify {index}\n__t0=$EPOCHREALTIME\n{_verify_body(verify, verify.wait_s)} </dev/null\n"
                         "__rc=$?; mark rc $__rc $__t0 $EPOCHREALTIME")
        parts.append("mark done")
        return "\n".join(parts) + "\n"

    def _in_territory(self, step: Step, body: str) -> str:
        """A step's commands where they belong: as its user inside that user's territory (the
        script travels on stdin, never in arguments), else as root behind the territory guard."""
        user = step.runs_as
        if user:
            end = f"__FLEET_END_{self.nonce}"
            inner = f"set -eu\numask 022\nexport LC_ALL=C\n{STEP_FUNCTIONS}\n{body}"
            return (f"runuser -u {q(user)} -- bash -c '__s=$(cat); exec </dev/null; eval \"$__s\"' <<'{end}'\n"
                    f"{inner}\n{end}")
        paths = step.paths()
        return f"__root_territory {' '.join(map(q, paths))}\n{body}" if paths else body

    def parse(self, output: str) -> dict[str, Any]:
        """{'steps': {index: rc}, 'handlers': {name: rc}, 'verifies': {i: ok}, each table also as
        '<table>_output' and '<table>_seconds', 'aborted': bool, 'done': bool}"""
        result: dict[str, Any] = {"steps": {}, "handlers": {}, "verifies": {}, "aborted": False, "done": False}
        current: tuple[str, Any] | None = None
        text = ""
        for header, body in split_sections(output, self.nonce):
            kind, _, rest = header.partition(" ")
            if kind in ("step", "handler", "verify"):
                current, text = (kind, int(rest) if kind != "handler" else rest), body
            elif kind == "rc" and current:
                rc, *stamps = rest.split()
                table = {"step": "steps", "handler": "handlers", "verify": "verifies"}[current[0]]
                result[table][current[1]] = (int(rc) == 0) if current[0] == "verify" else int(rc)
                result.setdefault(table + "_output", {})[current[1]] = (text + body).strip()
                result.setdefault(table + "_seconds", {})[current[1]] = _elapsed(stamps)
                current = None
            elif kind == "abort":
                result["aborted"] = True
            elif kind == "done":
                result["done"] = True
        if current:  # the script ended inside a step: the host died or the connection was cut
            result["cut"] = current
            result["cut_output"] = text
        return result


def _elapsed(stamps: list[str]) -> float | None:
    """Seconds between two of bash's $EPOCHREALTIME (bash 5); None where bash had none. The
    decimal separator follows the host's locale."""
    try:
        start, end = (float(x.replace(",", ".")) for x in stamps)
    except ValueError:
        return None
    return round(end - start, 3)
