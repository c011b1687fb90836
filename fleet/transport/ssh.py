"""One SSH connection to a host (Fabric over paramiko), with host keys checked against the
project's own known_hosts: trust on first use is recorded, a changed key is refused.

Scripts run as root through `sudo bash -s`, sent on stdin; a sudo password, when one is
needed, is the first line of that stdin (`sudo -S`), never an argument.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Sequence

import paramiko
from fabric import Config, Connection

from fleet.inventory.model import Host
from fleet.transport.base import ChannelRefused, ConnectionCut, ConnectOptions, HostKeyChanged, Unreachable, send_tar

_known_hosts_lock = threading.Lock()
# The password is stdin's first line. sudo reads it only when it asks (not under NOPASSWD, nor
# with credentials cached): then the shell drops that line itself, or bash would run it.
SUDO_WITH_PASSWORD = ("if sudo -n true 2>/dev/null; then read -r _; exec sudo -n bash -s; "
                      "else exec sudo -S -p '' bash -s; fi")
# Paramiko logs whole tracebacks for refused or dropped connections; we report them ourselves.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko ships no types
    """Record an unknown host's key in the project's known_hosts, then accept it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with _known_hosts_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            entry = paramiko.hostkeys.HostKeyEntry([hostname], key)
            with open(self.path, "a") as handle:
                handle.write(entry.to_line())
            os.chmod(self.path, 0o600)


class SSHConnection:
    def __init__(self, host: Host, options: ConnectOptions) -> None:
        self.host, self.options = host, options
        kwargs: dict[str, object] = {"banner_timeout": options.connect_timeout, "auth_timeout": options.connect_timeout}
        if host.key:
            key = Path(host.key).expanduser()
            if not os.access(key, os.R_OK):
                raise Unreachable(f"{host.name}: cannot read key file {key}")
            kwargs["key_filename"] = [str(key)]
        self.conn = Connection(host.address, user=host.user, port=host.port, config=Config(),
                               connect_timeout=options.connect_timeout, connect_kwargs=kwargs)
        client = self.conn.client
        if options.strict_host_keys:
            with _known_hosts_lock:
                if options.known_hosts.exists():
                    client.load_host_keys(str(options.known_hosts))
            client.set_missing_host_key_policy(TrustOnFirstUse(options.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        self.connections = 0
        self.commands = 0

    @property
    def alive(self) -> bool:
        transport = self.conn.client.get_transport() if self.conn.is_connected else None
        return bool(transport and transport.is_active())

    def open(self) -> None:
        try:
            self.conn.open()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(
                f"{self.host.name}: the host key of {self.host.address} changed ({exc.key.get_name()} "
                f"{exc.key.get_fingerprint().hex()[:16]}...; known_hosts has a different key). Refusing to connect. "
                f"If the machine was rebuilt, remove its line from {self.options.known_hosts}.") from None
        except paramiko.AuthenticationException as exc:
            raise Unreachable(f"{self.host.name}: authentication failed for user {self.conn.user} ({exc})") from None
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            raise Unreachable(f"{self.host.name}: cannot connect to {self.host.address}:{self.conn.port} "
                              f"({exc.__class__.__name__}: {exc})") from None
        transport = self.conn.client.get_transport()
        transport.set_keepalive(30)  # a kept connection notices a dead peer
        # paramiko's reader wakes every 0.1 s by default; an idle kept connection need not.
        transport.sock.settimeout(1.0)
        self.connections += 1

    def close(self) -> None:
        self.conn.close()

    def run_script(self, script: str, timeout: int | None = None, sudo_password: str | None = None, *,
                   files: Sequence[tuple[Path, str]] = ()) -> tuple[int, str]:
        """Run a bash script as root; return (exit status, stdout and stderr together). `files`
        follow the script on stdin as a tar stream, for the script's last line to read."""
        timeout = timeout or self.options.command_timeout
        as_root = self.conn.user == "root"
        password = sudo_password or self.options.sudo_password
        command = "bash -s" if as_root else (SUDO_WITH_PASSWORD if password else "sudo -n bash -s")
        command = f"cd / && {command}"  # never from the login's home: nothing there is read by root
        stdin = script if as_root or not password else password + "\n" + script
        try:
            channel = self.conn.client.get_transport().open_session(timeout=self.options.connect_timeout)
        except (paramiko.SSHException, OSError, AttributeError, EOFError) as exc:
            # Nothing ran yet: a kept connection that died since may be opened again and retried.
            raise ChannelRefused(f"{self.host.name}: connection lost ({exc or exc.__class__.__name__})") from None
        self.commands += 1
        channel.set_combine_stderr(True)
        channel.settimeout(timeout)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            channel.exec_command(command)
            channel.sendall(stdin.encode())
            if files:
                send_tar(channel.sendall, files)
            channel.shutdown_write()
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if time.monotonic() > deadline:
                    raise socket.timeout()
            # A dead host closes the channel without a status; never wait forever for one.
            status = channel.recv_exit_status() if channel.status_event.wait(30) else -1
        except socket.timeout:
            channel.close()
            raise Unreachable(f"{self.host.name}: no answer within {timeout} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"{self.host.name}: connection lost while running ({exc})") from None
        finally:
            channel.close()
        output = b"".join(chunks).decode(errors="replace")
        if status == -1:  # the channel closed without an exit status: the session was cut
            raise ConnectionCut(self.host.name, output)
        return status, output

