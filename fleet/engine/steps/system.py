"""Steps on the system: services (systemd units), users, and plain commands that say how they
are idempotent (creates=, unless= or idempotent=False)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleet.engine.facts import Fact
from fleet.engine.steps.base import Outcome, Step, check_path
from fleet.engine.steps.files import path_fact
from fleet.errors import InputError
from fleet.shell import as_user, q


def unit_fact(unit: str) -> Fact:
    def parse(text: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return Fact(f"unit:{unit}", f"systemctl show {q(unit)} -p LoadState -p ActiveState -p UnitFileState; true", parse)


@dataclass
class Service(Step):
    PATHLESS = "systemctl changes a unit's state; the unit file is a File step's"
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
    PATHLESS = "useradd writes /etc/passwd and friends under their locks and makes a new home"
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
        def parse(text: str) -> dict[str, Any] | None:
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
    """A plain command: needs `creates`, `unless`, or an explicit idempotent=False. It declares
    every path it changes (`writes`, plus `creates`), or says it changes none with
    `writes_nothing=True`; a root command's paths go through the root guard."""

    command: str
    creates: str | None = None
    unless: str | None = None
    idempotent: bool | None = None
    user: str | None = None
    label: str | None = None
    notify: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    writes_nothing: bool = False

    def __post_init__(self) -> None:
        if self.creates is None and self.unless is None and self.idempotent is not False:
            raise InputError("a command step needs creates=, unless= or idempotent=False", key=self.command)
        self.name = self.label or f"command {self.command}"
        self.writes = tuple(check_path(p, "writes") for p in self.writes)

    def paths(self) -> tuple[str, ...]:
        return self.writes + ((self.creates,) if self.creates else ())   # what it makes is where it writes

    def pathless(self) -> str:
        return "marked writes_nothing=True" if self.writes_nothing else ""

    def facts(self, diff: bool = False) -> list[Fact]:
        facts = []
        if self.creates:
            # probed as the step's user: root never looks through what a user may have planted there
            facts.append(path_fact(self.creates, user=self.user))
        if self.unless:
            facts.append(Fact(f"unless:{self.user}:{self.unless}",
                              f"{as_user(self.user, self.unless)} >/dev/null 2>&1; echo $?", lambda t: int(t.strip())))
        return facts

    def plan(self, facts: dict[str, Any]) -> Outcome:
        if self.creates and facts[path_fact(self.creates, user=self.user).key] is not None:
            return Outcome(False, f"{self.creates} already exists")
        if self.unless and facts[f"unless:{self.user}:{self.unless}"] == 0:
            return Outcome(False, f"already done ({self.unless} succeeds)")
        return Outcome(True, f"run {self.label or self.command}", [self.command])
