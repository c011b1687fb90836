"""What every transport shares, without importing SSH code: the options, the errors and the
Connection interface. Both transports (fleet.transport.ssh, fleet.transport.keeper) offer
open(), run_script(script, timeout, files) -> (status, output), close(), and count what they did:
`connections` (new SSH logins) and `commands` (remote commands).

`files` rides the same channel: after the script, its stdin carries a tar stream of those
controller files, which the script's last line reads (bash reads a script from a pipe one
byte at a time, so the stream is left to the command that reads it). That is how the course's
wheels reach hosts that have no route to the internet, with no second protocol.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Protocol, Sequence, cast

from fleet.errors import FleetError
from fleet.inventory.model import Host

PERSIST_DEFAULT_S = 300
# The run's defaults, written once: the CLI, the library face and the runners all read these.
PARALLEL = 20               # hosts at once
CONNECT_TIMEOUT_S = 10      # for a host's SSH to answer
COMMAND_TIMEOUT_S = 1800    # for one script on a host


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
    connect_timeout: int = CONNECT_TIMEOUT_S
    command_timeout: int = COMMAND_TIMEOUT_S
    sudo_password: str | None = None


class Connection(Protocol):
    host: Host
    connections: int
    commands: int

    def open(self) -> None: ...
    def run_script(self, script: str, timeout: int | None = None, *,
                   files: Sequence[tuple[Path, str]] = ()) -> tuple[int, str]: ...
    def close(self) -> None: ...


def persist_seconds() -> int:
    """How long the keeper holds idle connections (FLEET_SSH_PERSIST; 0 turns keeping off)."""
    raw = os.environ.get("FLEET_SSH_PERSIST", str(PERSIST_DEFAULT_S)).strip()
    try:
        return max(0, int(raw))
    except ValueError:
        raise FleetError(f"FLEET_SSH_PERSIST: expected whole seconds (0 turns keeping off), got {raw!r}") from None


class _Sink:
    """A write-only file over a send function, for tarfile's streaming mode."""

    def __init__(self, send: Callable[[bytes], object]) -> None:
        self.send = send

    def write(self, data: bytes) -> int:
        self.send(data)
        return len(data)


def send_tar(send: Callable[[bytes], object], files: Sequence[tuple[Path, str]]) -> None:
    """Stream (controller path, name on the host) pairs as one tar archive through `send`, file by
    file: nothing is buffered whole, so a class's ~100 MB of wheels costs no memory."""
    with tarfile.open(fileobj=cast(IO[bytes], _Sink(send)), mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path, name in files:
            info = archive.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with open(path, "rb") as handle:
                archive.addfile(info, handle)
