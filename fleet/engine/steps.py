"""Steps: idempotent operations that compare facts with the wanted state.

Each step lists the facts it reads, then `plan` compares them with what is wanted and
returns an Outcome: unchanged with a message ("python3-venv already installed"), or
changed with the shell commands that make it so. The check sits next to the change;
commands never decide on their own whether something changed.
"""
from __future__ import annotations

import base64
import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from fleet.errors import InputError
from fleet.engine.facts import Fact
from fleet.shell import as_user, q

STATE_DIR = "/var/lib/jupyter-fleet"
# A command says "left alone on purpose" (e.g. student work) by printing a line starting with
# "kept:" and exiting with this status; apt's 100 and git's 128 cannot be mistaken for it.
KEPT = 199
MAX_DIFF_BYTES = 256 * 1024


@dataclass
class Outcome:
    changed: bool
    message: str
    commands: list[str] = field(default_factory=list)
    diff: str | None = None
    failed: bool = False
    starts: str | None = None  # a unit this change starts fresh: a pending restart of it is moot


class Step:
    """Base class. Subclasses set `name` and implement `facts` and `plan`.

    Territory: a step that touches a path inside a non-root user's territory (a home, a
    checkout, ~/.ipython) sets `user`; its facts and commands then run as that user, so
    links, hard links, FIFOs or git config the user planted cannot redirect them. A step
    without `user` runs as root and the apply script refuses it where any folder on the
    way to one of its `paths()` is another user's (see fleet.engine.remote.ROOT_TERRITORY)."""

    name: str = ""
    notify: tuple[str, ...] = ()
    critical: bool = True  # a failure stops the host's remaining steps
    secret: bool = False   # never show a diff of this step's content
    user: str | None = None

    def facts(self, diff: bool = False) -> list[Fact]:
        return []

    def paths(self) -> tuple[str, ...]:
        """Paths whose folders this step writes in: checked before a root step changes them."""
        return ()

    def secrets(self) -> list[str]:
        """Values this step knows that must be masked wherever output is shown (e.g. URL passwords)."""
        return []

    @property
    def runs_as(self) -> str | None:
        """The user the step's facts and commands run as; None for root."""
        return territory(self.user)


def territory(user: str | None) -> str | None:
    return user if user and user != "root" else None


def read_as(user: str | None, command: str) -> str:
    """A fact's command as `user` (the probe's `__read_as`, fleet.engine.remote). A user that does not
    exist yet (a first run creates it) owns nothing: the fact reads ABSENT."""
    user = territory(user)
    return f"__read_as {q(user)} {q(command)}" if user else command


def home_territory(path: str, user: str | None) -> str | None:
    """`user` when `path` lies in that user's home (/home/USER/...), else None (root's, checked at apply)."""
    user = territory(user)
    return user if user and PurePosixPath(path).is_relative_to(f"/home/{user}") else None

    def plan(self, facts: dict[str, Any]) -> Outcome:
        raise NotImplementedError


# --- facts shared by several steps -------------------------------------------------

def _parse_stat(text: str) -> dict | None:
    lines = text.strip().splitlines()
    if not lines or lines[0] == "ABSENT":
        return None
    kind, mode, owner, group = lines[0].split("|")
    info = {"kind": kind, "mode": mode.zfill(4), "owner": owner, "group": group, "sha256": None, "content": None,
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


def _attr_commands(path: str, have: dict, owner: str | None, group: str | None, mode: str | None) -> list[str]:
    commands = []
    if (owner and have["owner"] != owner) or (group and have["group"] != group):
        commands.append(f"chown {q((owner or '') + (':' + group if group else ''))} {q(path)}")
    if mode and have["mode"] != mode.zfill(4):
        commands.append(f"chmod {q(mode)} {q(path)}")
    return commands


def _not_owned(path: str, have: dict, user: str | None) -> Outcome | None:
    """In a user's territory the user must own what a step changes: root changes no owner there."""
    if user and have["owner"] != user:
        return Outcome(False, f"refused: {path} belongs to {have['owner']}, not {user}; root does not change "
                              f"ownership inside {user}'s folders (fix it by hand)", failed=True)
    return None


def _check_path(path: str, what: str) -> str:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"expected an absolute path without '..', got {path!r}", key=what)
    return str(pure)


# --- steps -----------------------------------------------------------------------

def dpkg_fact(packages: tuple[str, ...]) -> Fact:
    def parse(text: str) -> dict[str, str]:
        installed = {}
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].startswith("ii"):
                installed[parts[0].split(":")[0]] = parts[2]
        return installed
    cmd = f"dpkg-query -W -f='${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' {' '.join(map(q, packages))} 2>/dev/null; true"
    return Fact("dpkg:" + ",".join(packages), cmd, parse)


APT_AGE = Fact(
    "apt-cache-age",
    # One process (stat); the clock and the newest of the two times come from bash itself.
    f"t=0; for m in $(stat -c %Y {STATE_DIR}/apt-updated /var/lib/apt/lists/partial 2>/dev/null); do "
    "[ \"$m\" -gt \"$t\" ] && t=$m; done; echo $(( EPOCHSECONDS - t ))",
    lambda text: int(text.strip() or 10**9),
)


@dataclass
class Apt(Step):
    packages: tuple[str, ...]
    cache_max_age: int = 86400
    lock_timeout: int = 300
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.packages = tuple(self.packages)
        self.name = "apt " + " ".join(self.packages)

    def facts(self, diff: bool = False) -> list[Fact]:
        return [dpkg_fact(self.packages), APT_AGE]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        installed = facts[dpkg_fact(self.packages).key]
        missing = [p for p in self.packages if p not in installed]
        if not missing:
            return Outcome(False, f"{', '.join(self.packages)} already installed")
        commands = []
        if facts[APT_AGE.key] > self.cache_max_age:
            commands.append(f"__apt {self.lock_timeout} update && touch {STATE_DIR}/apt-updated")
        commands.append(f"__apt {self.lock_timeout} install -y --no-install-recommends {' '.join(map(q, missing))}")
        return Outcome(True, f"install {', '.join(missing)}", commands)


def venv_fact(venv: str) -> Fact:
    def parse(text: str) -> dict | None:
        lines = text.split()
        if "VENV" not in lines:
            return None
        packages = {}
        for line in lines:
            if line.endswith(".dist-info"):
                stem = line.rsplit("/", 1)[-1][: -len(".dist-info")]
                name, _, version = stem.rpartition("-")
                packages[canonicalize_name(name)] = version
        return packages
    v = q(venv)
    cmd = f"if [ -x {v}/bin/python ]; then echo VENV; ls -1d {v}/lib/python3*/site-packages/*.dist-info 2>/dev/null; fi; true"
    return Fact(f"venv:{venv}", cmd, parse)


def unsatisfied(requirements: list[str], installed: dict[str, str]) -> list[str]:
    missing = []
    for spec in requirements:
        req = Requirement(spec)
        version = installed.get(canonicalize_name(req.name))
        if version is None or (req.specifier and not req.specifier.contains(version, prereleases=True)):
            missing.append(spec)
    return missing


@dataclass
class Pip(Step):
    venv: str
    packages: list[str]
    python: str = "python3"
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.venv = _check_path(self.venv, "venv")
        for spec in self.packages:
            try:
                Requirement(spec)
            except InvalidRequirement as exc:
                raise InputError(f"not a pip requirement: {spec!r} ({exc})", key="packages") from None
        self.name = f"pip {' '.join(self.packages)} in {self.venv}"

    def facts(self, diff: bool = False) -> list[Fact]:
        return [venv_fact(self.venv)]

    def paths(self) -> tuple[str, ...]:
        return (self.venv + "/bin",)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        installed = facts[venv_fact(self.venv).key]
        commands = []
        if installed is None:
            commands.append(f"{q(self.python)} -m venv {q(self.venv)}")
            missing = list(self.packages)
        else:
            missing = unsatisfied(self.packages, installed)
        if not missing:
            return Outcome(False, f"{', '.join(self.packages)} already satisfied in {self.venv}")
        commands.append(f"__retry 3 {q(self.venv + '/bin/pip')} install --disable-pip-version-check -q "
                        f"{' '.join(map(q, missing))}")
        verb = "create venv, install" if installed is None else "install"
        return Outcome(True, f"{verb} {', '.join(missing)}", commands)


@dataclass
class Directory(Step):
    path: str
    owner: str | None = None
    group: str | None = None
    mode: str | None = None
    notify: tuple[str, ...] = ()
    user: str | None = None  # territory: created and kept as this user (it must then be the owner)

    def __post_init__(self) -> None:
        self.path = _check_path(self.path, "path")
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
        self.path = _check_path(self.path, "path")
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
            write = f"__put {q(self.path)} {q(self.mode)} {q(self.owner)} {q(self.group)} {q(base64.b64encode(self.content).decode())}"
            return Outcome(True, f"{'create' if have is None else 'update'} {self.path}", [write], diff)
        commands = _attr_commands(self.path, have, self.owner, self.group, self.mode)
        if commands:
            return Outcome(True, f"fix owner/mode of {self.path}", commands)
        return Outcome(False, f"{self.path} already up to date")

    def _unified_diff(self, have: dict | None) -> str:
        old = (have or {}).get("content") or b""
        lines = difflib.unified_diff(old.decode(errors="replace").splitlines(True),
                                     self.content.decode(errors="replace").splitlines(True),
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
        self.path = _check_path(self.path, "path")
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
        self.path = _check_path(self.path, "path")
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


def unit_fact(unit: str) -> Fact:
    def parse(text: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return Fact(f"unit:{unit}", f"systemctl show {q(unit)} -p LoadState -p ActiveState -p UnitFileState; true", parse)


@dataclass
class Service(Step):
    unit: str
    enabled: bool = True
    running: bool = True
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.name = f"service {self.unit}"

    def facts(self, diff: bool = False) -> list[Fact]:
        return [unit_fact(self.unit)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have = facts[unit_fact(self.unit).key]
        commands, said = [], []
        is_enabled = have.get("UnitFileState") in ("enabled", "enabled-runtime", "static", "alias")
        is_running = have.get("ActiveState") in ("active", "activating", "reloading")
        if self.enabled != is_enabled:
            commands.append(f"systemctl {'enable' if self.enabled else 'disable'} -q {q(self.unit)}")
            said.append("enable" if self.enabled else "disable")
        if self.running != is_running:
            commands.append(f"systemctl {'start' if self.running else 'stop'} {q(self.unit)}")
            said.append("start" if self.running else "stop")
        if not commands:
            return Outcome(False, f"{self.unit} already {'enabled' if self.enabled else 'disabled'} and "
                                  f"{'running' if self.running else 'stopped'}")
        # A unit file written earlier in this run is only seen after a reload; a new unit always
        # gets one, a known one only when systemd says its file changed (a reload costs systemd
        # a tenth of a second of parsing every unit).
        reload = "systemctl daemon-reload" if have.get("LoadState") != "loaded" else reload_if_changed(self.unit)
        return Outcome(True, f"{' and '.join(said)} {self.unit}", [reload] + commands,
                       starts=self.unit if self.running and not is_running else None)


def reload_if_changed(unit: str) -> str:
    """Shell: `systemctl daemon-reload` only when the unit's file changed since systemd read it."""
    return (f"if [ \"$(systemctl show -p NeedDaemonReload --value {q(unit)})\" != no ]; then "
            "systemctl daemon-reload; fi")


@dataclass
class User(Step):
    user: str
    shell: str = "/bin/bash"
    groups: tuple[str, ...] = ()
    system: bool = False

    @property
    def runs_as(self) -> str | None:
        return None  # `user` here is the account to create: the step itself is root's

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", self.user):
            raise InputError(f"not a valid user name: {self.user!r}", key="user")
        self.name = f"user {self.user}"

    def facts(self, diff: bool = False) -> list[Fact]:
        def parse(text: str) -> dict | None:
            lines = text.strip().splitlines()
            if not lines or lines[0] == "ABSENT":
                return None
            fields = lines[0].split(":")
            return {"shell": fields[6], "home": fields[5], "groups": (lines[1] if len(lines) > 1 else "").split()}
        u = q(self.user)
        return [Fact(f"user:{self.user}", f"getent passwd {u} && id -nG {u} || echo ABSENT", parse)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have = facts[f"user:{self.user}"]
        groups = ",".join(self.groups)
        if have is None:
            cmd = f"useradd -m -s {q(self.shell)}" + (" -r" if self.system else "") + (f" -G {q(groups)}" if groups else "")
            return Outcome(True, f"create user {self.user}", [f"{cmd} {q(self.user)}"])
        commands = []
        if have["shell"] != self.shell:
            commands.append(f"usermod -s {q(self.shell)} {q(self.user)}")
        missing = [g for g in self.groups if g not in have["groups"]]
        if missing:
            commands.append(f"usermod -aG {q(','.join(missing))} {q(self.user)}")
        if commands:
            return Outcome(True, f"update user {self.user}", commands)
        return Outcome(False, f"user {self.user} already present")


@dataclass
class Command(Step):
    """A plain command: needs `creates`, `unless`, or an explicit idempotent=False."""

    command: str
    creates: str | None = None
    unless: str | None = None
    idempotent: bool | None = None
    user: str | None = None
    label: str | None = None
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.creates is None and self.unless is None and self.idempotent is not False:
            raise InputError("a command step needs creates=, unless= or idempotent=False", key=self.command)
        self.name = self.label or f"command {self.command}"

    def paths(self) -> tuple[str, ...]:
        return (self.creates,) if self.creates else ()   # what it makes is where it writes

    def facts(self, diff: bool = False) -> list[Fact]:
        facts = []
        if self.creates:
            facts.append(path_fact(self.creates))
        if self.unless:
            facts.append(Fact(f"unless:{self.user}:{self.unless}",
                              f"{as_user(self.user, self.unless)} >/dev/null 2>&1; echo $?", lambda t: int(t.strip())))
        return facts

    def plan(self, facts: dict[str, Any]) -> Outcome:
        if self.creates and facts[path_fact(self.creates).key] is not None:
            return Outcome(False, f"{self.creates} already exists")
        if self.unless and facts[f"unless:{self.user}:{self.unless}"] == 0:
            return Outcome(False, f"already done ({self.unless} succeeds)")
        return Outcome(True, f"run {self.label or self.command}", [self.command])


@dataclass
class Handler:
    """Runs once per host after its steps when a changed step notified it."""

    name: str
    command: str
    unit: str | None = None  # the unit it restarts: a run that starts that unit fresh skips it

    @property
    def marker(self) -> str:
        return f"{STATE_DIR}/pending/" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)


@dataclass
class Verify:
    """A check after changes: a script that exits 0 when the role works.

    `every_run` checks are cheap and also run inside the probe of a no-op run."""

    name: str
    script: str
    user: str | None = None
    every_run: bool = False
    wait_s: int = 0  # after changes, retried every 0.1 s for this long, e.g. while a service starts
