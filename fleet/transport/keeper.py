"""The SSH keeper: one background process per state folder that keeps each host's SSH
connection open between runs, as OpenSSH's ControlPersist does for Ansible. A re-run then
costs a channel on an open connection instead of a login (key exchange, authentication and
a PAM session on the host), and the command-line process never loads the SSH stack.

It listens on a Unix socket in a folder only its user can enter (mode 0700) and answers
only that user (SO_PEERCRED). It exits FLEET_SSH_PERSIST seconds after the last command
using it went. Told to exit (`invoke disconnect`, or a command running newer code), or when
its state folder or its socket is gone, it retires: no new hosts, and the scripts in flight
finish before their connections close (see Keeper). A sudo password travels with each request and is
never stored. A connection opened once is trusted as long as it stays open: its host key was
checked against known_hosts when it was opened, and a rebuilt host drops it.

This module is the client side a command uses (KeptConnection, disconnect, stop); the daemon
is fleet/transport/keeperd.py, and what both must agree on (messages, where the socket lives,
the code version) is fleet/transport/wire.py.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

from fleet.errors import FleetError
from fleet.inventory.model import Host
from fleet.transport.base import ConnectionCut, ConnectOptions, HostKeyChanged, Unreachable
from fleet.transport.wire import PACKAGE, VERSION, recv, run_dir, send, socket_path

START_TIMEOUT_S = 15                # how long a new keeper may take to answer before the command fails

# --------------------------------------------------------------------------- the client side

_known_good: set[Path] = set()      # keepers this process has already greeted
_greet_lock = threading.Lock()


class KeptConnection:
    """One host's connection through the keeper: the same interface as ssh.SSHConnection."""

    def __init__(self, host: Host, options: ConnectOptions, state_dir: Path, persist: int) -> None:
        self.host, self.options = host, options
        self.connections = 0
        self.commands = 0
        self._where = (state_dir, persist)
        self._sock = _keeper_socket(state_dir, persist)

    def open(self) -> None:
        request = {"op": "open", "host": host_fields(self.host), "options": option_fields(self.options)}
        try:
            reply = self._call(request)
        except KeeperGone:
            # It exited just then (idle, or `invoke disconnect`); nothing ran: start another.
            self._sock.close()
            _known_good.discard(socket_path(self._where[0]))
            self._sock = _keeper_socket(*self._where)
            reply = self._call(request)
        self.connections += int(reply["new"])

    def run_script(self, script: str, timeout: int | None = None, *,
                   files: Sequence[tuple[Path, str]] = ()) -> tuple[int, str]:
        self.commands += 1
        # The keeper runs as this user on this machine: it reads the files itself, by path.
        reply = self._call({"op": "run", "script": script, "timeout": timeout or self.options.command_timeout,
                            "sudo_password": self.options.sudo_password,
                            "files": [[str(Path(path).resolve()), name] for path, name in files]})
        self.connections += int(reply.get("new", False))
        return reply["status"], reply["output"]

    def close(self) -> None:
        self._sock.close()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            send(self._sock, request)
            reply = recv(self._sock)
        except OSError:
            reply = None
        if reply is None:
            if request["op"] == "run":  # the keeper died: its SSH channels, and the script, went with it
                raise ConnectionCut(self.host.name, "(the SSH keeper stopped)")
            raise KeeperGone(f"{self.host.name}: the SSH keeper stopped")
        error = reply.get("error")
        if error == "retiring":   # it finishes what it runs but takes no new host: use another
            raise KeeperGone(f"{self.host.name}: {reply['message']}")
        if error == "hostkey":
            raise HostKeyChanged(reply["message"])
        if error == "cut":
            raise ConnectionCut(self.host.name, reply.get("output", ""))
        if error:
            raise Unreachable(reply["message"])
        return reply


class KeeperGone(Unreachable):
    """The keeper closed before answering a request that runs nothing."""


def host_fields(host: Host) -> dict[str, Any]:
    """What a host is reached by, as the keeper and the speculative probes store it."""
    return {"name": host.name, "address": host.address, "user": host.user, "port": host.port, "key": host.key}


def option_fields(options: ConnectOptions) -> dict[str, Any]:
    fields = asdict(options) | {"known_hosts": str(options.known_hosts)}
    fields.pop("sudo_password")        # sent with each script, never kept
    return fields


def _connect_socket(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _greet(sock: socket.socket) -> bool:
    """True when the keeper runs this code; one running other code is told to retire."""
    return _greeting(sock) == VERSION


def _greeting(sock: socket.socket) -> str | None:
    """The keeper's version (one that is not ours is told to retire), or None if none answered."""
    try:
        send(sock, {"op": "hello"})
        reply = recv(sock)
        if reply and reply.get("version") == VERSION:
            return VERSION
        send(sock, {"op": "exit"})
        recv(sock)
        return reply.get("version") if reply else None
    except OSError:
        return None


def _keeper_socket(state_dir: Path, persist: int) -> socket.socket:
    path = socket_path(state_dir)
    with _greet_lock:
        sock = _connect_socket(path)
        if sock and path in _known_good:
            return sock
        if sock and _greet(sock):
            _known_good.add(path)
            return sock
        if sock:
            sock.close()
        with _flock(path.parent / "start.lock"):  # one of several racing commands starts it
            sock = _connect_socket(path)
            if sock and _greet(sock):
                _known_good.add(path)
                return sock
            if sock:
                sock.close()
            sock = _start(path, state_dir, persist)
        _known_good.add(path)
        return sock


def _start(path: Path, state_dir: Path, persist: int) -> socket.socket:
    log = state_dir / "ssh-keeper.log"
    with open(log, "ab") as out:
        os.chmod(log, 0o600)
        # The keeper forks itself away at once; waiting here reaps the first process.
        subprocess.run([sys.executable, "-m", "fleet.transport.keeperd", str(path), str(state_dir), str(persist)],
                       cwd=PACKAGE.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                       start_new_session=True, check=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _connect_socket(path)
        version = _greeting(sock) if sock else None
        if sock and version == VERSION:
            return sock
        if sock:
            sock.close()
        if version is not None:  # under the start lock, the keeper answering is the one just started
            raise FleetError(f"the SSH keeper just started runs other code than this command: the files of "
                             f"{PACKAGE} changed while it ran; run the command again")
        time.sleep(0.02)
    raise FleetError(f"the SSH keeper did not start within {START_TIMEOUT_S} s (see {log}); "
                     f"FLEET_SSH_PERSIST=0 connects without it")


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ask(state_dir: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """One request to the state folder's keeper and its reply; None when none answers."""
    sock = _connect_socket(socket_path(state_dir))
    if sock is None:
        return None
    with sock:
        try:
            send(sock, request)
            return recv(sock)
        except OSError:
            return None


def disconnect(state_dir: Path) -> dict[str, int] | None:
    """Retire the state folder's keeper: it stops listening at once (the next command starts
    another), closes the connections no command uses now (`closed`), lets the scripts of
    commands still using one finish (`in_use`), and exits when the last of them is done.
    None when none was running."""
    reply = _ask(state_dir, {"op": "exit"})
    _known_good.discard(socket_path(state_dir))
    return None if reply is None else {"closed": int(reply.get("closed", 0)), "in_use": int(reply.get("in_use", 0))}


def stop(state_dir: Path) -> int | None:
    """disconnect(), counted: how many connections the keeper held, or None when none ran."""
    reply = disconnect(state_dir)
    return None if reply is None else reply["closed"] + reply["in_use"]


def hello(state_dir: Path) -> dict[str, Any] | None:
    """The running keeper's version, state folder and pid, or None when none answers."""
    return _ask(state_dir, {"op": "hello"})


def stop_all_under(folder: Path) -> list[str]:
    """Stop every keeper of this user whose state folder lies under `folder` (test clean-up)."""
    stopped = []
    for path in sorted(run_dir().glob("keeper-*.sock")):
        sock = _connect_socket(path)
        if sock is None:
            continue
        with sock:
            try:
                send(sock, {"op": "hello"})
                state = Path((recv(sock) or {}).get("state_dir", "/nonexistent"))
                if state.is_relative_to(folder):
                    send(sock, {"op": "exit"})
                    recv(sock)
                    stopped.append(str(state))
            except OSError:
                continue
    return stopped
