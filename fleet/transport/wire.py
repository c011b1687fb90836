"""What the SSH keeper's client (keeper.py) and daemon (keeperd.py) agree on: the messages
(a 4-byte length and a JSON object), where the socket lives, and the version of the code the
daemon runs (a keeper started by older code is retired)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

PACKAGE = Path(__file__).resolve().parent.parent   # fleet/
# A keeper started by older code is retired: client and keeper must run the same code. These are
# the package's modules the keeper process imports (tests/transport/test_keeper.py checks the list against
# what importing the daemon loads); a plain list, since every command computes the hash.
SERVED_BY = ("__init__.py", "errors.py", "inventory/__init__.py", "inventory/model.py", "inventory/settings.py",
             "transport/__init__.py", "transport/base.py", "transport/keeperd.py", "transport/ssh.py",
             "transport/wire.py")
VERSION = hashlib.sha256(b"".join(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0"
                                  for name in SERVED_BY)).hexdigest()[:16]


# --------------------------------------------------------------------------- wire format
# Each message is a 4-byte length and a JSON object.

def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def recv(sock: socket.socket) -> dict[str, Any] | None:
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

def run_dir() -> Path:
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
    return run_dir() / f"keeper-{key}.sock"
