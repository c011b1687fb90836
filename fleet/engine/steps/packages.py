"""Steps that install software: apt packages and pip requirements in a venv, with the cheap
facts they read (dpkg's database, the venv's dist-info folders, the apt cache's age)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from fleet.engine.facts import Fact
from fleet.engine.steps.base import STATE_DIR, Outcome, Step, check_path
from fleet.errors import InputError
from fleet.shell import q


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
    PATHLESS = "apt and dpkg write only the system folders packages own, under their own locks"
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
        self.venv = check_path(self.venv, "venv")
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
