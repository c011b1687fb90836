"""The SSH keeper's own life, without hosts: started on demand, private, answers only its
protocol, retired when its code changed, gone when idle, stopped, or its state folder goes.
(Reusing real SSH connections is tested on hosts in test_keeper_hosts.py.)"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest

from fleet import keeper
from fleet.connection import ConnectOptions, Unreachable, connect
from fleet.errors import FleetError
from fleet.inventory import Host


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    return folder


def _pid(state: Path) -> int:
    reply = keeper.hello(state)
    assert reply is not None, "no keeper answers"
    return reply["pid"]


def _gone(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.1)
    return False


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens once the socket closes


def test_started_on_first_use_private_and_stopped_by_disconnect(state):
    sock = keeper._keeper_socket(state, persist=60)
    sock.close()
    path = keeper.socket_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pid = _pid(state)
    os.kill(pid, 0)                                   # a live process of its own
    assert "keeps connections 60 s after last use" in (state / "ssh-keeper.log").read_text()
    assert keeper.stop(state) == 0                    # it held no connections
    assert _gone(path)
    assert keeper.stop(state) is None                 # nothing left to stop


def test_a_host_that_cannot_be_reached_is_reported_through_the_keeper(state, monkeypatch):
    monkeypatch.setenv("FLEET_STATE_DIR", str(state))
    host = Host("h1", "127.0.0.1", user="ubuntu", port=_closed_port())
    conn = connect(host, ConnectOptions(known_hosts=state / "known_hosts", connect_timeout=2))
    assert isinstance(conn, keeper.KeptConnection)
    with pytest.raises(Unreachable, match=r"h1: cannot connect to 127.0.0.1"):
        conn.open()
    conn.close()
    keeper.stop(state)


def test_keeping_off_connects_directly(state, monkeypatch):
    from fleet.ssh import SSHConnection

    monkeypatch.setenv("FLEET_STATE_DIR", str(state))
    monkeypatch.setenv("FLEET_SSH_PERSIST", "0")
    conn = connect(Host("h1", "127.0.0.1"), ConnectOptions(known_hosts=state / "known_hosts"))
    assert isinstance(conn, SSHConnection)
    assert not keeper.socket_path(state).exists()
    monkeypatch.setenv("FLEET_SSH_PERSIST", "soon")
    with pytest.raises(FleetError, match="FLEET_SSH_PERSIST: expected whole seconds"):
        connect(Host("h1", "127.0.0.1"), ConnectOptions(known_hosts=state / "known_hosts"))


@pytest.mark.parametrize("ending", ["idle", "state folder removed"])
def test_it_exits_by_itself(state, ending):
    keeper._keeper_socket(state, persist=1 if ending == "idle" else 600).close()
    path = keeper.socket_path(state)
    pid = _pid(state)
    if ending == "state folder removed":
        shutil.rmtree(state)
    assert _gone(path), f"keeper still listening after its {ending}"
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_a_keeper_running_older_code_is_retired(state, monkeypatch):
    import threading

    monkeypatch.setattr(keeper, "VERSION", "older-code")      # an old keeper, in this process
    old = keeper.Keeper(keeper.socket_path(state), state, persist=60)
    thread = threading.Thread(target=old.serve, daemon=True)
    thread.start()
    assert _gone_or_up(keeper.socket_path(state))
    monkeypatch.undo()
    keeper._keeper_socket(state, persist=60).close()           # told to exit, then replaced
    thread.join(10)
    assert not thread.is_alive()
    assert _pid(state) != os.getpid()
    keeper.stop(state)


def _gone_or_up(path: Path) -> bool:
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def test_unknown_requests_get_an_error_not_a_crash(state):
    sock = keeper._keeper_socket(state, persist=60)
    with sock:
        keeper._send(sock, {"op": "run", "script": "true", "timeout": 5})   # run before open
        assert keeper._recv(sock)["error"] == "protocol"
        keeper._send(sock, {"op": "bogus"})
        assert keeper._recv(sock)["error"] == "protocol"
    assert _pid(state)                                 # still serving
    keeper.stop(state)


def test_a_socket_folder_others_can_enter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(keeper.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"jupyter-fleet-{os.getuid()}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(FleetError, match="mode 0700"):
        keeper.socket_path(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_cannot_reach_the_socket(state):
    keeper._keeper_socket(state, persist=60).close()
    path = keeper.socket_path(state)
    child = os.fork()
    if child == 0:                                     # as nobody: the 0700 folder keeps it out
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            socket.socket(socket.AF_UNIX).connect(str(path))
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    keeper.stop(state)
