"""The SSH keeper's daemon: `python -m fleet.transport.keeperd SOCKET STATE_DIR PERSIST`, started by
fleet.transport.keeper on first use. It holds each host's SSH connection open between runs and
runs scripts on them for the commands that connect to its socket (see keeper.py for the whole story)."""
from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fleet.inventory.model import Host
from fleet.transport.base import ChannelRefused, ConnectionCut, ConnectOptions, HostKeyChanged, Unreachable
from fleet.transport.wire import VERSION, recv, send

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
        self.slots: dict[tuple[Any, ...], _Slot] = {}
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
                while (request := recv(client)) is not None:
                    reply = self._handle(request, session)
                    send(client, reply)   # the keeper does not end before this is sent
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
        if retiring and last_user and slot is not None:
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
            if op == "run" and session.host is not None and session.options is not None:
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
    def _key(host: Host, options: ConnectOptions) -> tuple[Any, ...]:
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
        files = [(Path(path), name) for path, name in request.get("files") or ()]
        try:
            status, output = conn.run_script(request["script"], request["timeout"], request.get("sudo_password"), files=files)
        except ChannelRefused:
            # The kept connection died since (host rebooted, network changed): nothing ran, so
            # log in again and run it once more.
            conn, new = self._connection(host, options, dead=conn)
            status, output = conn.run_script(request["script"], request["timeout"], request.get("sudo_password"), files=files)
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
