"""What every step is made of: the Outcome a plan returns, the Step base class and its
territory rule, handlers and checks. The steps themselves are in files.py, packages.py and
system.py; `fleet.engine.steps` hands them all on."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from fleet.engine.facts import Fact
from fleet.engine.pylock import LockedVenv
from fleet.errors import InputError
from fleet.shell import q

STATE_DIR = "/var/lib/jupyter-fleet"
# A command says "left alone on purpose" (e.g. student work) by printing a line starting with
# "kept:" and exiting with this status; apt's 100 and git's 128 cannot be mistaken for it.
KEPT = 199
MAX_DIFF_BYTES = 256 * 1024


@dataclass(frozen=True, order=True)
class Deb:
    """A Debian package file as the host's apt names it (`apt-get --print-uris`)."""
    url: str
    file: str
    size: int
    hash_kind: str        # sha256, sha512 or md5sum, as apt's lists give it
    digest: str


@dataclass
class Outcome:
    changed: bool
    message: str
    commands: list[str] = field(default_factory=list)
    diff: str | None = None
    failed: bool = False
    starts: str | None = None  # a unit this change starts fresh: a pending restart of it is moot
    # The lock and its packages (canonical names) whose wheels the controller sends before the apply.
    wheels: tuple[LockedVenv, tuple[str, ...]] | None = None
    debs: tuple[Deb, ...] = ()      # the .debs the controller sends into apt's cache before the apply


class Step:
    """Base class. Subclasses set `name` and implement `facts` and `plan`.

    Territory: a step that touches a path inside a non-root user's territory (a home, a
    checkout, ~/.ipython) sets `user`; its facts and commands then run as that user, so
    links, hard links, FIFOs or git config the user planted cannot redirect them. A step
    without `user` runs as root and the apply script refuses it where any folder on the
    way to one of its `paths()` is another user's (see fleet.engine.remote.ROOT_TERRITORY)."""

    name: str = ""
    # Why a step of this kind changes no path of its own (so it declares none), e.g. apt; empty:
    # it must declare every path it changes in paths(). tests/engine/test_declared_paths.py holds
    # every shipped role to this.
    PATHLESS: str = ""
    notify: tuple[str, ...] = ()
    critical: bool = True  # a failure stops the host's remaining steps
    secret: bool = False   # never show a diff of this step's content
    user: str | None = None

    def facts(self, diff: bool = False) -> list[Fact]:
        return []

    def paths(self) -> tuple[str, ...]:
        """Paths this step changes: a root step's are checked (and their missing folders made) by
        the root guard (fleet.engine.rootguard) before its commands run."""
        return ()

    def pathless(self) -> str:
        """Why this step declares no path (empty: it must declare them)."""
        return self.PATHLESS

    def secrets(self) -> list[str]:
        """Values this step knows that must be masked wherever output is shown (e.g. URL passwords)."""
        return []

    @property
    def runs_as(self) -> str | None:
        """The user the step's facts and commands run as; None for root."""
        return territory(self.user)

    def plan(self, facts: dict[str, Any]) -> Outcome:
        raise NotImplementedError


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


def check_path(path: str, what: str) -> str:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"expected an absolute path without '..', got {path!r}", key=what)
    return str(pure)


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
