"""What every transport shares, without importing SSH code: the options, the errors and the
Connection interface. Both transports (fleet.transport.ssh, fleet.transport.keeper) offer
open(), run_script(script, timeout) -> (status, output), close(), and count what they did:
`connections` (new SSH logins) and `commands` (remote commands).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleet.errors import FleetError
from fleet.inventory.model import Host

PERSIST_DEFAULT_S = 300


class Unreachable(FleetError):
    """The host could not be reached or logged into."""


class HostKeyChanged(Unreachable):
    pass


class ChannelRefused(Unreachable):
    """No command could be started on an open connection (it died): nothing ran."""


class ConnectionCut(Unreachable):
    def __init__(self, host: str, output: str) -> None:
        self.output = output
        super().__init__(f"{host}: the connection was cut while a script ran")


@dataclass
class ConnectOptions:
    known_hosts: Path
    strict_host_keys: bool = True   # False: accept any key, record nothing (throwaway hosts)
    connect_timeout: int = 10
    command_timeout: int = 1800
    sudo_password: str | None = None


class Connection(Protocol):
    host: Host
    connections: int
    commands: int

    def open(self) -> None: ...
    def run_script(self, script: str, timeout: int | None = None) -> tuple[int, str]: ...
    def close(self) -> None: ...


def persist_seconds() -> int:
    """How long the keeper holds idle connections (FLEET_SSH_PERSIST; 0 turns keeping off)."""
    raw = os.environ.get("FLEET_SSH_PERSIST", str(PERSIST_DEFAULT_S)).strip()
    try:
        return max(0, int(raw))
    except ValueError:
        raise FleetError(f"FLEET_SSH_PERSIST: expected whole seconds (0 turns keeping off), got {raw!r}") from None
