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

Longer than 400 lines: both ends of one versioned wire protocol, the client a command uses
(KeptConnection) and the daemon (Keeper), are kept side by side so that they cannot drift
apart; the next split would be client / daemon / wire format.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from fleet.transport.base import ChannelRefused, ConnectionCut, ConnectOptions, HostKeyChanged, Unreachable
from fleet.errors import FleetError
from fleet.inventory.model import Host

PACKAGE = Path(__file__).resolve().parent.parent   # fleet/
# A keeper started by older code is retired: client and keeper must run the same code. These are
# the package's modules the keeper process imports (tests/test_keeper.py checks the list against
# what importing keeper and ssh loads); a plain list, since every command computes the hash.
SERVED_BY = ("__init__.py", "errors.py", "inventory/__init__.py", "inventory/model.py", "inventory/settings.py",
             "transport/__init__.py", "transport/base.py", "transport/keeper.py", "transport/ssh.py")
VERSION = hashlib.sha256(b"".join(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0"
                                  for name in SERVED_BY)).hexdigest()[:16]
START_TIMEOUT_S = 15


# --------------------------------------------------------------------------- wire format
# Each message is a 4-byte length and a JSON object.

def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv(sock: socket.socket) -> dict[str, Any] | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    body = _read_exactly(sock, struct.unpack("!I", header)[0])
    return None if body is None else json.loads(body)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- where it listens

def _run_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"jupyter-fleet-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise FleetError(f"{folder}: expected a folder of yours with mode 0700 (it holds the SSH keeper's "
                         f"socket); remove it, or set FLEET_SSH_PERSIST=0")
    return folder


def socket_path(state_dir: Path) -> Path:
    # Named after the state folder (its path may be too long for a socket address).
    key = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:20]
    return _run_dir() / f"keeper-{key}.sock"


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
        request = {"op": "open", "host": _host_fields(self.host), "options": _option_fields(self.options)}
        try:
            reply = self._call(request)
        except KeeperGone:
            # It exited just then (idle, or `invoke disconnect`); nothing ran: start another.
            self._sock.close()
            _known_good.discard(socket_path(self._where[0]))
            self._sock = _keeper_socket(*self._where)
            reply = self._call(request)
        self.connections += int(reply["new"])

    def run_script(self, script: str, timeout: int | None = None) -> tuple[int, str]:
        self.commands += 1
        reply = self._call({"op": "run", "script": script, "timeout": timeout or self.options.command_timeout,
                            "sudo_password": self.options.sudo_password})
        self.connections += int(reply.get("new", False))
        return reply["status"], reply["output"]

    def close(self) -> None:
        self._sock.close()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            _send(self._sock, request)
            reply = _recv(self._sock)
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


def _host_fields(host: Host) -> dict[str, Any]:
    return {"name": host.name, "address": host.address, "user": host.user, "port": host.port, "key": host.key}


def _option_fields(options: ConnectOptions) -> dict[str, Any]:
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
        _send(sock, {"op": "hello"})
        reply = _recv(sock)
        if reply and reply.get("version") == VERSION:
            return VERSION
        _send(sock, {"op": "exit"})
        _recv(sock)
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
        subprocess.run([sys.executable, "-m", "fleet.transport.keeper", str(path), str(state_dir), str(persist)],
                       cwd=PACKAGE.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                       start_new_session=True, check=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _connect_socket(path)
        version = _greeting(sock) if sock else None
        if version == VERSION:
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
            _send(sock, request)
            return _recv(sock)
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
    for path in sorted(_run_dir().glob("keeper-*.sock")):
        sock = _connect_socket(path)
        if sock is None:
            continue
        with sock:
            try:
                _send(sock, {"op": "hello"})
                state = Path((_recv(sock) or {}).get("state_dir", "/nonexistent"))
                if state.is_relative_to(folder):
                    _send(sock, {"op": "exit"})
                    _recv(sock)
                    stopped.append(str(state))
            except OSError:
                continue
    return stopped


# --------------------------------------------------------------------------- the keeper itself

class _Slot:
    """One host's kept connection; its lock makes concurrent askers share one login. `users`:
    the commands that opened it and have not closed yet (a retiring keeper keeps it for them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None
        self.users = 0


class _Session:
    """One command's socket to the keeper, for one host."""

    def __init__(self) -> None:
        self.host: Host | None = None
        self.options: ConnectOptions | None = None
        self.slot: _Slot | None = None


class Keeper:
    """Its life: serving; then retiring (told to exit, replaced by newer code, its socket taken
    over or its state folder gone), when it stops listening, closes the connections no command
    uses and refuses new hosts, while the scripts of commands that opened a connection before
    finish; then it exits, once the last command has closed its socket. An idle keeper (no
    command connected for FLEET_SSH_PERSIST s) exits too. Only SIGTERM ends it at once."""

    def __init__(self, path: Path, state_dir: Path, persist: int) -> None:
        self.path, self.state_dir, self.persist = path, state_dir, persist
        self.version = VERSION          # of the code it started with
        self.slots: dict[tuple, _Slot] = {}
        self.lock = threading.Lock()    # guards slots, users, clients, retiring
        self.clients = 0                # commands connected now: a keeper with one is never idle
        self.last_used = time.monotonic()
        self.retiring = False
        self.stopping = threading.Event()
        self.inode = 0

    def serve(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Listen under a temporary name, then rename: a client never meets a dead socket file.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        server.bind(str(tmp))
        os.chmod(tmp, 0o600)
        server.listen(128)
        os.replace(tmp, self.path)
        inode = self.inode = self.path.stat().st_ino
        server.settimeout(1.0)
        log(f"keeper {os.getpid()} for {self.state_dir}: keeps connections {self.persist} s after last use")
        try:
            while not self.stopping.is_set():
                try:
                    client, _ = server.accept()
                except socket.timeout:
                    self._check(inode)
                    continue
                with self.lock:
                    self.clients += 1   # counted before its thread runs: no idle exit in between
                threading.Thread(target=self._serve_client, args=(client,), daemon=True).start()
        finally:
            self._unlisten()   # first: a command arriving now starts another keeper, not a dead queue
            server.close()
            self._close_all()

    def _check(self, inode: int) -> None:
        """Once a second: exit when idle, retire when the keeper's place is gone."""
        with self.lock:
            idle = self.clients == 0 and time.monotonic() - self.last_used > self.persist
        if idle:
            log(f"keeper {os.getpid()} exits: idle for {self.persist} s")
            self.stopping.set()
            return
        if self.retiring:
            return
        reason = None
        if not self.state_dir.is_dir():
            reason = "its state folder is gone"
        else:
            try:
                if self.path.stat().st_ino != inode:
                    reason = "another keeper took over its socket"
            except OSError:
                reason = "its socket is gone"
        if reason:
            self._retire(reason)

    def _retire(self, reason: str) -> dict[str, int]:
        """Stop listening, close what no command uses, let the rest finish (see the class)."""
        self._unlisten()
        with self.lock:
            first = not self.retiring
            self.retiring = True
            idle = [slot for slot in self.slots.values() if slot.users == 0 and slot.conn is not None]
            in_use = sum(1 for slot in self.slots.values() if slot.users and slot.conn is not None and slot.conn.alive)
            if self.clients == 0:
                self.stopping.set()
        if first:
            log(f"keeper {os.getpid()} retires: {reason}; {in_use} connection(s) in use finish first")
        return {"closed": sum(self._close(slot) for slot in idle), "in_use": in_use}

    def _unlisten(self) -> None:
        try:
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass

    @staticmethod
    def _close(slot: _Slot) -> int:
        with slot.lock:
            conn, slot.conn = slot.conn, None
        if conn is None:
            return 0
        alive = int(conn.alive)
        conn.close()
        return alive

    def _close_all(self) -> int:
        with self.lock:
            slots = list(self.slots.values())
        return sum(self._close(slot) for slot in slots)

    def _serve_client(self, client: socket.socket) -> None:
        session = _Session()
        try:
            with client:
                creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                if struct.unpack("3i", creds)[1] != os.getuid():
                    return  # only the user who owns the connections may use them
                while (request := _recv(client)) is not None:
                    reply = self._handle(request, session)
                    _send(client, reply)   # the keeper does not end before this is sent
                    if request.get("op") == "exit":
                        return
        except OSError:
            pass  # the command went away; its script (if any) has finished or goes on alone
        finally:
            self._session_ended(session)

    def _session_ended(self, session: _Session) -> None:
        with self.lock:
            slot, session.slot = session.slot, None
            last_user = slot is not None and slot.users == 1
            if slot is not None:
                slot.users -= 1
            self.clients -= 1
            self.last_used = time.monotonic()
            retiring, none_left = self.retiring, self.clients == 0
        if retiring and last_user:
            self._close(slot)
        if retiring and none_left:
            self.stopping.set()

    def _handle(self, request: dict[str, Any], session: _Session) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return {"version": self.version, "state_dir": str(self.state_dir), "pid": os.getpid()}
        if op == "exit":
            # Before answering: the next command must not find this keeper.
            return self._retire("told to exit")
        try:
            if op == "open":
                host = Host(**request["host"])
                fields = request["options"]
                options = ConnectOptions(**(fields | {"known_hosts": Path(fields["known_hosts"])}))
                slot = self._reserve(session, host, options)
                if slot is None:
                    return {"error": "retiring", "message": "the SSH keeper is retiring; another one takes over"}
                _, new = self._connection(host, options)
                return {"new": new}
            if op == "run" and session.host is not None:
                return self._run((session.host, session.options), request)
            return {"error": "protocol", "message": f"unexpected request {op!r}"}
        except HostKeyChanged as exc:
            return {"error": "hostkey", "message": str(exc)}
        except ConnectionCut as exc:
            return {"error": "cut", "message": str(exc), "output": exc.output}
        except Unreachable as exc:
            return {"error": "unreachable", "message": str(exc)}
        except Exception as exc:  # a bug must reach the user as this host's error, not kill the keeper
            return {"error": "keeper", "message": f"{exc.__class__.__name__}: {exc}"}

    @staticmethod
    def _key(host: Host, options: ConnectOptions) -> tuple:
        return (host.address, host.port, host.user, host.key, str(options.known_hosts), options.strict_host_keys)

    def _reserve(self, session: _Session, host: Host, options: ConnectOptions) -> _Slot | None:
        """Make this session a user of the host's slot, unless the keeper retires (None)."""
        with self.lock:
            if self.retiring:
                return None
            slot = self.slots.setdefault(self._key(host, options), _Slot())
            if session.slot is not slot:
                if session.slot is not None:
                    session.slot.users -= 1
                slot.users += 1
            session.host, session.options, session.slot = host, options, slot
            return slot

    def _connection(self, host: Host, options: ConnectOptions, dead: Any = None) -> tuple[Any, bool]:
        """The host's open connection, or a new login (True) when there is none or it died."""
        from fleet.transport.ssh import SSHConnection

        with self.lock:
            slot = self.slots.setdefault(self._key(host, options), _Slot())
        with slot.lock:
            if slot.conn is not None and slot.conn is not dead and slot.conn.alive:
                return slot.conn, False
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
            conn = SSHConnection(host, options)
            conn.open()
            slot.conn = conn
            return conn, True

    def _run(self, current: tuple[Host, ConnectOptions], request: dict[str, Any]) -> dict[str, Any]:
        host, options = current
        conn, new = self._connection(host, options)
        try:
            status, output = conn.run_script(request["script"], request["timeout"], request.get("sudo_password"))
        except ChannelRefused:
            # The kept connection died since (host rebooted, network changed): nothing ran, so
            # log in again and run it once more.
            conn, new = self._connection(host, options, dead=conn)
            status, output = conn.run_script(request["script"], request["timeout"], request.get("sudo_password"))
        return {"status": status, "output": output, "new": new}


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    path, state_dir, persist = Path(argv[0]), Path(argv[1]), int(argv[2])
    if os.fork():
        os._exit(0)  # the starting command waits only for this first process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    keeper = Keeper(path, state_dir, persist)
    signal.signal(signal.SIGTERM, lambda *_: keeper.stopping.set())
    os.chdir("/")
    keeper.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
