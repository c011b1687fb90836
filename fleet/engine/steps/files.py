"""Steps on paths: folders, files (and templates through them), absence, one line in a file;
and the path fact they share (type, mode, owner, hash, content for diffs)."""
from __future__ import annotations

import base64
import difflib
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from fleet.engine.facts import Fact
from fleet.engine.steps.base import MAX_DIFF_BYTES, Outcome, Step, check_path, read_as, territory
from fleet.shell import q

# --- facts shared by several steps -------------------------------------------------

def _parse_stat(text: str) -> dict[str, Any] | None:
    lines = text.strip().splitlines()
    if not lines or lines[0] == "ABSENT":
        return None
    kind, mode, owner, group = lines[0].split("|")
    info: dict[str, Any] = {"kind": kind, "mode": mode.zfill(4), "owner": owner, "group": group, "sha256": None, "content": None,
            "too_big": False}
    for line in lines[1:]:
        tag, _, value = line.partition(" ")
        if tag == "SHA":
            info["sha256"] = value.split()[0]
        elif tag == "B64":
            info["content"] = base64.b64decode(value)
        elif tag == "BIG":
            info["too_big"] = True
    return info


def path_fact(path: str, content: bool = False, user: str | None = None) -> Fact:
    """Type, mode, owner, group and sha256 of a path; with content=True also its bytes (for diffs),
    or `too_big` over MAX_DIFF_BYTES. Read as `user` where the path is that user's territory."""
    p = q(path)
    # A regular file that is not a link: root never reads through a link it did not make.
    cmd = (f"if [ -e {p} ] || [ -L {p} ]; then stat -c '%F|%a|%U|%G' {p}; "
           f"if [ -f {p} ] && [ ! -L {p} ]; then echo \"SHA $(sha256sum < {p})\"; ")
    if content:
        cmd += (f"if [ $(stat -c %s {p}) -le {MAX_DIFF_BYTES} ]; then echo \"B64 $(base64 -w0 < {p})\"; "
                "else echo BIG; fi; ")
    cmd += "fi; else echo ABSENT; fi"
    user = territory(user)
    kind = "content" if content else "stat"
    key = f"{kind}@{user}:{path}" if user else f"{kind}:{path}"
    return Fact(key, read_as(user, cmd), _parse_stat, stat_path=None if content else path, user=user)


def _attr_commands(path: str, have: dict[str, Any], owner: str | None, group: str | None, mode: str | None) -> list[str]:
    commands = []
    if (owner and have["owner"] != owner) or (group and have["group"] != group):
        commands.append(f"chown {q((owner or '') + (':' + group if group else ''))} {q(path)}")
    if mode and have["mode"] != mode.zfill(4):
        commands.append(f"chmod {q(mode)} {q(path)}")
    return commands


def _not_owned(path: str, have: dict[str, Any], user: str | None) -> Outcome | None:
    """In a user's territory the user must own what a step changes: root changes no owner there."""
    if user and have["owner"] != user:
        return Outcome(False, f"refused: {path} belongs to {have['owner']}, not {user}; root does not change "
                              f"ownership inside {user}'s folders (fix it by hand)", failed=True)
    return None


@dataclass
class Directory(Step):
    path: str
    owner: str | None = None
    group: str | None = None
    mode: str | None = None
    notify: tuple[str, ...] = ()
    user: str | None = None  # territory: created and kept as this user (it must then be the owner)

    def __post_init__(self) -> None:
        self.path = check_path(self.path, "path")
        self.name = f"directory {self.path}"

    def facts(self, diff: bool = False) -> list[Fact]:
        return [path_fact(self.path, user=self.user)]

    def paths(self) -> tuple[str, ...]:
        return (self.path,)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have = facts[path_fact(self.path, user=self.user).key]
        if have is None:
            commands = [f"mkdir -p {q(self.path)}"]
            commands += _attr_commands(self.path, {"owner": "", "group": "", "mode": ""}, self.owner, self.group, self.mode)
            return Outcome(True, f"create {self.path}", commands)
        if have["kind"] != "directory":
            return Outcome(False, f"{self.path} exists and is a {have['kind']}, not a directory", failed=True)
        if refused := _not_owned(self.path, have, self.runs_as):
            return refused
        commands = _attr_commands(self.path, have, self.owner, self.group, self.mode)
        if commands:
            return Outcome(True, f"fix owner/mode of {self.path}", commands)
        return Outcome(False, f"{self.path} already present")


@dataclass
class File(Step):
    path: str
    content: bytes | str
    owner: str = "root"
    group: str = "root"
    mode: str = "0644"
    secret: bool = False
    notify: tuple[str, ...] = ()
    label: str | None = None
    user: str | None = None  # territory: written as this user (then owner must be that user)

    def __post_init__(self) -> None:
        self.path = check_path(self.path, "path")
        if isinstance(self.content, str):
            self.content = self.content.encode()
        self.sha256 = hashlib.sha256(self.content).hexdigest()
        if self.runs_as and (self.owner, self.group) == ("root", "root"):
            # Written as the user: theirs, with their login group (`chown user:`), unless said otherwise.
            self.owner, self.group = self.runs_as, ""
        self.name = self.label or f"file {self.path}"
        self._diff = False

    def facts(self, diff: bool = False) -> list[Fact]:
        self._diff = diff and not self.secret
        return [path_fact(self.path, content=self._diff, user=self.user)]

    def paths(self) -> tuple[str, ...]:
        return (self.path,)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have = facts[path_fact(self.path, content=self._diff, user=self.user).key]
        if have is not None and have["kind"] not in ("regular file", "regular empty file"):
            return Outcome(False, f"{self.path} exists and is a {have['kind']}, not a file", failed=True)
        if have is not None and (refused := _not_owned(self.path, have, self.runs_as)):
            return refused
        if have is None or have["sha256"] != self.sha256:
            diff = self._unified_diff(have) if self._diff else None
            write = f"__put {q(self.path)} {q(self.mode)} {q(self.owner)} {q(self.group)} {q(base64.b64encode(self.content_bytes).decode())}"
            return Outcome(True, f"{'create' if have is None else 'update'} {self.path}", [write], diff)
        commands = _attr_commands(self.path, have, self.owner, self.group, self.mode)
        if commands:
            return Outcome(True, f"fix owner/mode of {self.path}", commands)
        return Outcome(False, f"{self.path} already up to date")

    @property
    def content_bytes(self) -> bytes:
        """The content: bytes since __post_init__."""
        assert isinstance(self.content, bytes)
        return self.content

    def _unified_diff(self, have: dict[str, Any] | None) -> str:
        old = (have or {}).get("content") or b""
        lines = difflib.unified_diff(old.decode(errors="replace").splitlines(True),
                                     self.content_bytes.decode(errors="replace").splitlines(True),
                                     fromfile=f"{self.path} (host)" if have else "/dev/null",
                                     tofile=f"{self.path} (wanted)")
        return "".join(lines)


@dataclass
class Absent(Step):
    path: str
    notify: tuple[str, ...] = ()
    reason: str = ""
    user: str | None = None  # territory: removed as this user

    def __post_init__(self) -> None:
        self.path = check_path(self.path, "path")
        self.name = f"absent {self.path}"

    def facts(self, diff: bool = False) -> list[Fact]:
        return [path_fact(self.path, user=self.user)]

    def paths(self) -> tuple[str, ...]:
        return (self.path,)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        if facts[path_fact(self.path, user=self.user).key] is None:
            return Outcome(False, f"{self.path} already absent")
        why = f" ({self.reason})" if self.reason else ""
        return Outcome(True, f"remove {self.path}{why}", [f"rm -rf -- {q(self.path)}"])


@dataclass
class Line(Step):
    """One line in a file: replaced where `regexp` matches, appended otherwise."""

    path: str
    line: str
    regexp: str | None = None
    mode: str = "0644"
    notify: tuple[str, ...] = ()
    user: str | None = None  # territory: read and written as this user

    def __post_init__(self) -> None:
        self.path = check_path(self.path, "path")
        self.name = f"line in {self.path}"

    def facts(self, diff: bool = False) -> list[Fact]:
        return [path_fact(self.path, content=True, user=self.user)]

    def paths(self) -> tuple[str, ...]:
        return (self.path,)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have = facts[path_fact(self.path, content=True, user=self.user).key]
        if have is not None:
            # Rewriting a file Line could not read whole would lose everything but the line.
            if have["kind"] not in ("regular file", "regular empty file"):
                return Outcome(False, f"{self.path} exists and is a {have['kind']}, not a file; left intact", failed=True)
            if have.get("too_big") or have.get("content") is None:
                return Outcome(False, f"{self.path} is over {MAX_DIFF_BYTES // 1024} KiB, more than a line edit "
                                      "reads; left intact (manage it with a file or template step)", failed=True)
        try:
            old = ((have or {}).get("content") or b"").decode()
        except UnicodeDecodeError as exc:
            return Outcome(False, f"{self.path} is not UTF-8 text (byte {exc.start}); left intact", failed=True)
        lines = old.splitlines()
        if self.line in lines:
            return Outcome(False, f"line already in {self.path}")
        pattern = re.compile(self.regexp) if self.regexp else None
        hits = [i for i, text in enumerate(lines) if pattern and pattern.search(text)]
        if hits:
            lines[hits[-1]] = self.line
        else:
            lines.append(self.line)
        mine = (self.runs_as, "") if self.runs_as else ("root", "root")
        owner, group, mode = (have["owner"], have["group"], have["mode"]) if have else (*mine, self.mode)
        # Delegate the write to a File step: same atomic write, same diff.
        file = File(self.path, "\n".join(lines) + "\n", owner=owner, group=group, mode=mode, user=self.user)
        file._diff = True
        outcome = file.plan({path_fact(self.path, content=True, user=self.user).key: have})
        outcome.message = f"{'replace' if hits else 'add'} line in {self.path}"
        return outcome
