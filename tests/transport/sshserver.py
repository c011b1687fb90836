"""A real SSH server on loopback for the keeper's unit tests (paramiko's server side): key
login only, each exec runs the command with bash in a real process, stdin and output streamed,
the exit status returned. It stands in for a host's sshd where no host can be booted."""
from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import paramiko


def keypair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return path


class _Handler(paramiko.ServerInterface):
    def __init__(self, server: "SSHServer") -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.get_base64() == self.server.client_key.get_base64():
            with self.server.lock:
                self.server.logins += 1
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_execute, args=(channel, command.decode()), daemon=True).start()
        return True


def _execute(channel: paramiko.Channel, command: str) -> None:
    proc = subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        while data := channel.recv(65536):
            proc.stdin.write(data)
        proc.stdin.close()
        while data := proc.stdout.read1(65536):
            channel.sendall(data)
        channel.send_exit_status(proc.wait())
    except (OSError, EOFError, paramiko.SSHException):
        proc.kill()   # the client went: as sshd does, the command goes with it
    finally:
        channel.close()


class SSHServer:
    def __init__(self, folder: Path) -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(keypair(folder / "host_key")))
        self.client_key_file = keypair(folder / "client_key")
        self.client_key = paramiko.Ed25519Key.from_private_key_file(str(self.client_key_file))
        self.lock = threading.Lock()
        self.logins = 0
        self.transports: list[paramiko.Transport] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            with self.lock:
                self.transports.append(transport)
            try:
                transport.start_server(server=_Handler(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for transport in self.transports:
                transport.close()
