"""Shell text helpers: every interpolated value goes through `q` (shlex quoting)."""
from __future__ import annotations

import re
import shlex
from typing import Iterable

# scheme://user:password@host: the userinfo part is a credential wherever a URL is shown.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def q(value: object) -> str:
    return shlex.quote(str(value))


def join(args: Iterable[object]) -> str:
    return " ".join(q(a) for a in args)


def as_user(user: str | None, command: str) -> str:
    """Run a shell snippet as another user (the remote scripts already run as root)."""
    if not user or user == "root":
        return command
    return f"runuser -u {q(user)} -- bash -c {q(command)}"


def redact_url(text: str) -> str:
    """Text with the userinfo of every URL in it replaced (https://***@host/...)."""
    return _USERINFO.sub(r"\1***@", text)


def url_secrets(url: str) -> list[str]:
    """The credential parts of a URL's userinfo, for the run's masker."""
    match = re.match(r"(?i)[a-z][a-z0-9+.-]*://([^/\s@]+)@", url)
    if not match:
        return []
    userinfo = match.group(1)
    return [userinfo] + [part for part in userinfo.split(":", 1)[1:] if part]
