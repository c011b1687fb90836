"""Steps that install software: apt packages and pip requirements in a venv, with the cheap
facts they read (dpkg's database, the venv's dist-info folders, the apt cache's age)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from fleet.engine import hostscripts
from fleet.engine.facts import Fact
from fleet.engine.pylock import LockedVenv
from fleet.engine.steps.base import STATE_DIR, Deb, Outcome, Step, check_path
from fleet.engine.wheels import HOST_DIR
from fleet.errors import InputError
from fleet.shell import q

# Installed by `python3 -m venv` itself, never pinned by a course lock.
SEEDED = frozenset({"pip", "setuptools", "wheel"})
# uv, the installer: a folder of its own on each host (fleet.engine.compile adds that step, UvInstall,
# before a host's first Pip step when the course's `python_installer` is uv).
UV_VENV = f"{STATE_DIR}/uv"
UV = f"{UV_VENV}/bin/uv"
# uv reads no config a user could plant, uses the system's CA bundle as pip does, and writes
# bytecode at install time: the first Jupyter start after a cold install is not slowed.
UV_ENV = "env UV_NO_CONFIG=1 UV_NATIVE_TLS=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never"


def _installed(text: str) -> dict[str, str]:
    installed = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].startswith("ii"):
            installed[parts[0].split(":")[0]] = parts[2]
    return installed


def _dpkg_query(packages: tuple[str, ...]) -> str:
    return f"dpkg-query -W -f='${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' {' '.join(map(q, packages))} 2>/dev/null"


def dpkg_fact(packages: tuple[str, ...]) -> Fact:
    return Fact("dpkg:" + ",".join(packages), _dpkg_query(packages) + "; true", _installed)


APT_AGE = Fact(
    "apt-cache-age",
    # One process (stat); the clock and the newest of the two times come from bash itself.
    f"t=0; for m in $(stat -c %Y {STATE_DIR}/apt-updated /var/lib/apt/lists/partial 2>/dev/null); do "
    "[ \"$m\" -gt \"$t\" ] && t=$m; done; echo $(( EPOCHSECONDS - t ))",
    lambda text: int(text.strip() or 10**9),
)


def apt_uris_fact(packages: tuple[str, ...]) -> Fact:
    """dpkg's view of these packages and, only when one is missing (so a no-op costs no apt
    process), what apt would download to install them from the host's own lists
    (`apt-get --print-uris`, which changes nothing; each line 'URL' FILE SIZE HASHTYPE:HEX)."""
    def parse(text: str) -> tuple[dict[str, str], list[Deb]]:
        debs = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0].startswith("'") and ":" in parts[3] and parts[2].isdigit():
                kind, _, digest = parts[3].partition(":")
                debs.append(Deb(parts[0].strip("'"), parts[1], int(parts[2]), kind.lower(), digest))
        return _installed(text), debs
    names = " ".join(map(q, packages))
    cmd = (f"__s=$({_dpkg_query(packages)}); echo \"$__s\"; __n=0; "
           "while IFS=$'\\t' read -r _ __st _; do [[ $__st == ii* ]] && __n=$((__n + 1)); done <<< \"$__s\"; "
           f"if [ \"$__n\" -lt {len(packages)} ]; then "
           f"apt-get --print-uris -qq install -y --no-install-recommends {names} 2>/dev/null; fi; true")
    return Fact("apt-uris:" + ",".join(packages), cmd, parse)


@dataclass
class Apt(Step):
    PATHLESS = "apt and dpkg write only the system folders packages own, under their own locks"
    packages: tuple[str, ...]
    cache_max_age: int = 86400
    lock_timeout: int = 300
    notify: tuple[str, ...] = ()
    source: str = "index"   # "controller": the .debs apt would download come from the controller (package_source)

    def __post_init__(self) -> None:
        self.packages = tuple(self.packages)
        self.name = "apt " + " ".join(self.packages)

    def facts(self, diff: bool = False) -> list[Fact]:
        return [self._dpkg(), APT_AGE]

    def _dpkg(self) -> Fact:
        return apt_uris_fact(self.packages) if self.source == "controller" else dpkg_fact(self.packages)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        installed, debs = facts[self._dpkg().key] if self.source == "controller" else (facts[self._dpkg().key], [])
        missing = [p for p in self.packages if p not in installed]
        if not missing:
            return Outcome(False, f"{', '.join(self.packages)} already installed")
        install = f"__apt {self.lock_timeout} install -y --no-install-recommends {' '.join(map(q, missing))}"
        update = f"__apt {self.lock_timeout} update && touch {STATE_DIR}/apt-updated"
        if debs:
            # The controller sends the files these lists name into apt's own cache, so apt
            # downloads nothing; should one not arrive, the host updates its lists and fetches.
            return Outcome(True, f"install {', '.join(missing)} ({len(debs)} packages sent by the controller)",
                           [f"{install} || {{ {update} && {install}; }}"], debs=tuple(debs))
        commands = [update] if facts[APT_AGE.key] > self.cache_max_age else []
        return Outcome(True, f"install {', '.join(missing)}", commands + [install])


def venv_fact(venv: str) -> Fact:
    def parse(text: str) -> dict[str, Any] | None:
        lines = text.split()
        if "VENV" not in lines:
            return None
        packages: dict[str, Any] = {}
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
    installer: str = "pip"           # or "uv" (compile sets it from the course's python_installer)
    lock: LockedVenv | None = None   # the course lock (fleet/engine/pylock.py), set by compile
    covered: bool = False            # an earlier Pip step of this host installs the venv's lock
    source: str = "index"            # "controller": a lock's wheels come from the controller (package_source)

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
        if self.lock is not None:
            return self._plan_locked(installed)
        commands = []
        if installed is None:
            commands.append(f"{q(self.python)} -m venv {q(self.venv)}")
            missing = list(self.packages)
        else:
            missing = unsatisfied(self.packages, installed)
        if not missing:
            return Outcome(False, f"{', '.join(self.packages)} already satisfied in {self.venv}")
        commands.append(f"__retry 3 {self._install()} {' '.join(map(q, missing))}")
        verb = "create venv, install" if installed is None else "install"
        return Outcome(True, f"{verb} {', '.join(missing)}", commands)

    def _plan_locked(self, installed: dict[str, str] | None) -> Outcome:
        """The venv holds exactly the lock: what differs is installed from the lock's own lines
        (hash-checked, no dependency resolution on the host), what the lock lacks is removed."""
        assert self.lock is not None
        if self.covered:
            return Outcome(False, f"{', '.join(self.packages)} come with the course lock of {self.venv}")
        pins = self.lock.pins()
        commands = [] if installed is not None else [f"{q(self.python)} -m venv {q(self.venv)}"]
        have = installed or {}
        changed = sorted(name for name, version in pins.items() if not _same_version(have.get(name), version))
        extra = sorted(set(have) - set(pins) - SEEDED)
        if not changed and not extra:
            return Outcome(False, f"{self.venv} matches the course lock {self.lock.fingerprint} ({len(pins)} packages)")
        said = []
        sent = self.source == "controller"
        if changed:
            end = "__FLEET_LOCK__"
            # Sent wheels are installed from the host's folder alone; the hashes are checked either way.
            where = f" --no-index --find-links {HOST_DIR}" if sent else ""
            commands.append(f"__lock=$(mktemp)\ncat > \"$__lock\" <<'{end}'\n{self.lock.blocks(changed)}{end}\n"
                            f"__retry {1 if sent else 3} {self._install()}{where} --no-deps --require-hashes "
                            "-r \"$__lock\"\n"
                            "rm -f \"$__lock\"")
            said.append(f"install {len(changed)} locked package{'s' if len(changed) != 1 else ''} "
                        f"({_listed(changed, pins)})")
        if extra:
            commands.append(f"{self._uninstall()} {' '.join(map(q, extra))}")
            said.append(f"remove {len(extra)} not in the lock ({', '.join(extra[:8])}{', ...' if len(extra) > 8 else ''})")
        verb = "create venv, " if installed is None else ""
        return Outcome(True, verb + " and ".join(said) + f" (lock {self.lock.fingerprint})", commands,
                       wheels=(self.lock, tuple(changed)) if sent and changed else None)


    def _install(self) -> str:
        if self.installer == "uv":
            return f"{UV_ENV} {UV} pip install -q --python {q(self.venv + '/bin/python')}"
        return f"{q(self.venv + '/bin/pip')} install --disable-pip-version-check -q"

    def _uninstall(self) -> str:
        if self.installer == "uv":
            return f"{UV_ENV} {UV} pip uninstall -q --python {q(self.venv + '/bin/python')}"
        return f"{q(self.venv + '/bin/pip')} uninstall -y -q"


@dataclass
class UvInstall(Pip):
    """uv itself, the one bootstrap. With the course lock and wheels from the controller, its binary
    is taken out of the locked, hash-checked wheel the controller sends (hostscripts/uv_from_wheel.py):
    no venv, no pip, a second or so. Otherwise pip installs it into a venv of its own, as any package."""

    def facts(self, diff: bool = False) -> list[Fact]:
        return [*super().facts(diff), uv_version_fact()]

    def wanted(self) -> str:
        if self.lock is not None:
            return self.lock.pins()["uv"]
        return next(iter(Requirement(self.packages[0]).specifier)).version   # compile writes uv==VERSION

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have, want = facts[uv_version_fact().key], self.wanted()
        if have == want:
            return Outcome(False, f"uv {want} in place ({UV})")
        if self.lock is None or self.source != "controller":
            return super().plan(facts)
        allowed = " ".join(map(q, self.lock.hashes("uv")))
        script = hostscripts.load("uv_from_wheel.py")
        end = "__FLEET_UV__"
        command = (f"{q(self.python)} - {q(HOST_DIR)} {q(want)} {q(UV)} {allowed} <<'{end}'\n{script}{end}\n"
                   f"[ \"$({UV} --version | cut -d' ' -f1,2)\" = {q(f'uv {want}')} ] || "
                   f"{{ echo {q(f'{UV} does not answer uv {want}')} >&2; false; }}")
        verb = f"replace uv {have} with" if have else "put in place"
        return Outcome(True, f"{verb} uv {want} from its locked wheel (lock {self.lock.fingerprint})", [command],
                       wheels=(self.lock, ("uv",)))


def uv_version_fact() -> Fact:
    """The version uv's binary reports, or None (absent, or not a uv that runs)."""
    def parse(text: str) -> str | None:
        words = text.split()
        return words[1] if len(words) >= 2 and words[0] == "uv" else None
    return Fact("uv-version", f"[ -x {UV} ] && {UV} --version 2>/dev/null; true", parse)


def _same_version(have: str | None, want: str) -> bool:
    if have is None:
        return False
    try:
        return Version(have) == Version(want)
    except InvalidVersion:
        return have == want


def _listed(names: list[str], pins: dict[str, str], most: int = 8) -> str:
    shown = ", ".join(f"{n} {pins[n]}" for n in names[:most])
    return shown + (f", and {len(names) - most} more" if len(names) > most else "")
