"""Shell text helpers: every interpolated value goes through `q` (shlex quoting)."""
from __future__ import annotations

import shlex
from typing import Iterable


def q(value: object) -> str:
    return shlex.quote(str(value))


def join(args: Iterable[object]) -> str:
    return " ".join(q(a) for a in args)


def as_user(user: str | None, command: str) -> str:
    """Run a shell snippet as another user (the remote scripts already run as root)."""
    if not user or user == "root":
        return command
    return f"runuser -u {q(user)} -- bash -c {q(command)}"
