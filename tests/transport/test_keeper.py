"""The SSH keeper's own life, without hosts: started on demand, private, answers only its
protocol, retired when its code changed, gone when idle, stopped, or its state folder goes.
(Reusing real SSH connections is tested below against a real SSH server on loopback, and on
hosts in tests/engine/test_engine_hosts.py and tests/test_bench_hosts.py.)"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.inventory.model import Host
from fleet.transport import keeper, keeperd, wire
from fleet.transport.base import ConnectOptions, Unreachable
from fleet.transport.connection import connect
from tests.fixtures import fleet
from tests.skips import requires


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
    monkeypatch.delenv("FLEET_STATE_DIR", raising=False)   # the keeper's folder is the one given
    host = Host("h1", "127.0.0.1", user="ubuntu", port=_closed_port())
    conn = connect(host, ConnectOptions(known_hosts=state / "known_hosts", connect_timeout=2), state)
    assert isinstance(conn, keeper.KeptConnection) and keeper.socket_path(state).exists()
    with pytest.raises(Unreachable, match=r"h1: cannot connect to 127.0.0.1"):
        conn.open()
    conn.close()
    keeper.stop(state)


def test_keeping_off_connects_directly(state, monkeypatch):
    from fleet.transport.ssh import SSHConnection

    monkeypatch.setenv("FLEET_STATE_DIR", str(state))
    monkeypatch.setenv("FLEET_SSH_PERSIST", "0")
    conn = connect(Host("h1", "127.0.0.1"), ConnectOptions(known_hosts=state / "known_hosts"), state)
    assert isinstance(conn, SSHConnection)
    assert not keeper.socket_path(state).exists()
    monkeypatch.setenv("FLEET_SSH_PERSIST", "soon")
    with pytest.raises(FleetError, match="FLEET_SSH_PERSIST: expected whole seconds"):
        connect(Host("h1", "127.0.0.1"), ConnectOptions(known_hosts=state / "known_hosts"), state)


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

    monkeypatch.setattr(keeperd, "VERSION", "older-code")     # an old keeper, in this process
    old = keeperd.Keeper(keeper.socket_path(state), state, persist=60)
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
        keeper.send(sock, {"op": "run", "script": "true", "timeout": 5})   # run before open
        assert keeper.recv(sock)["error"] == "protocol"
        keeper.send(sock, {"op": "bogus"})
        assert keeper.recv(sock)["error"] == "protocol"
    assert _pid(state)                                 # still serving
    keeper.stop(state)


def test_a_socket_folder_others_can_enter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(wire.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"jupyter-fleet-{os.getuid()}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(FleetError, match="mode 0700"):
        keeper.socket_path(tmp_path)


@requires(os.geteuid() == 0, "switching to another user needs root")
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


# --------------------------------------------------------------------------- with real SSH
# The keeper is its own process; it logs in to a real SSH server on loopback (tests/transport/sshserver.py)
# and runs real scripts. Scripts wait on files, so no test depends on how fast the machine is.

@pytest.fixture
def sshd(tmp_path: Path):
    from tests.transport.sshserver import SSHServer

    folder = tmp_path / "sshd"
    folder.mkdir()
    server = SSHServer(folder)
    yield server
    server.close()


def _host(sshd) -> Host:
    return Host("h1", "127.0.0.1", user="root", port=sshd.port, key=str(sshd.client_key_file))


def _options(state: Path) -> ConnectOptions:
    return ConnectOptions(known_hosts=state / "known_hosts", strict_host_keys=False, connect_timeout=5)


def _in_background(conn: keeper.KeptConnection, script: str) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(conn.run_script(script, timeout=60))
        except Exception as exc:
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _waiting_script(tmp_path: Path) -> tuple[str, Path, Path]:
    started, go = tmp_path / "started", tmp_path / "go"
    script = f"touch {started}\nwhile [ ! -e {go} ]; do sleep 0.02; done\necho finished\n"
    return script, started, go


def _wait(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:   # a zombie still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_a_command_between_open_and_run_keeps_an_idle_keeper_alive(state, sshd, tmp_path):
    conn = keeper.KeptConnection(_host(sshd), _options(state), state, persist=1)
    conn.open()
    pid = _pid(state)
    # The controller plans between its probe and its apply, here for longer than FLEET_SSH_PERSIST:
    # two keepers with the same persist, opened after ours and left idle, end one after the other;
    # ours, whose connection is still open, must outlive both (ordering, not a clock).
    for n in (1, 2):
        witness_state = tmp_path / f"witness{n}"
        witness_state.mkdir(mode=0o700)
        witness = keeper.KeptConnection(_host(sshd), _options(witness_state), witness_state, persist=1)
        witness.open()
        witness_pid = _pid(witness_state)
        witness.close()
        assert _wait(lambda pid=witness_pid: _process_gone(pid)), "an idle keeper with persist=1 did not end"
        assert not _process_gone(pid), "the keeper ended while a command held an open connection"
    assert conn.run_script("echo still here") == (0, "still here\n")
    conn.close()
    assert _wait(lambda: _process_gone(pid)), "idle keeper did not exit after its last user left"


def test_disconnect_lets_a_running_script_finish_then_closes_its_connection(state, sshd, tmp_path):
    conn = keeper.KeptConnection(_host(sshd), _options(state), state, persist=60)
    conn.open()
    pid = _pid(state)
    script, started, go = _waiting_script(tmp_path)
    thread, outcome = _in_background(conn, script)
    assert _wait(started.exists)
    run = fleet("disconnect", state=state)              # `invoke disconnect`, as a user runs it
    assert run.rc == 0, run.output
    assert "closed 0 kept SSH connections; 1 in use by a running command close when its script is done" in run.output
    assert not keeper.socket_path(state).exists()       # the next command starts a keeper of its own
    other = keeper.KeptConnection(_host(sshd), _options(state), state, persist=60)
    other.open()
    assert _pid(state) != pid
    assert other.run_script("echo new keeper") == (0, "new keeper\n")
    other.close()
    go.touch()
    thread.join(30)
    assert outcome == [(0, "finished\n")], outcome      # not cut mid-apply
    assert not _process_gone(pid)                       # it waits for that command to close
    conn.close()
    assert _wait(lambda: _process_gone(pid)), "the disconnected keeper outlived its last user"
    keeper.stop(state)


def test_a_command_that_reaches_a_retiring_keeper_moves_to_a_new_one(state, sshd):
    conn = keeper.KeptConnection(_host(sshd), _options(state), state, persist=60)   # connected, not open yet
    pid = _pid(state)
    assert keeper.disconnect(state) == {"closed": 0, "in_use": 0}
    assert not _process_gone(pid)            # still held by that command's socket
    conn.open()                              # refused there ("retiring"): opened on a new keeper
    assert _pid(state) != pid
    assert conn.run_script("echo moved") == (0, "moved\n")
    conn.close()
    assert _wait(lambda: _process_gone(pid))
    keeper.stop(state)


def test_a_retired_keeper_finishes_the_scripts_it_runs(state, sshd, tmp_path, monkeypatch):
    monkeypatch.setattr(keeperd, "VERSION", "older-code")     # an old keeper, in this process
    old = keeperd.Keeper(keeper.socket_path(state), state, persist=60)
    serving = threading.Thread(target=old.serve, daemon=True)
    serving.start()
    assert _gone_or_up(keeper.socket_path(state))
    conn = keeper.KeptConnection(_host(sshd), _options(state), state, persist=60)
    conn.open()
    script, started, go = _waiting_script(tmp_path)
    thread, outcome = _in_background(conn, script)
    assert _wait(started.exists)
    # A command running newer code greets it, retires it, starts a new keeper.
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from fleet.transport import keeper; "
                    "keeper._keeper_socket(Path(sys.argv[1]), 60).close()", str(state)],
                   cwd=Path(__file__).resolve().parents[2], check=True, timeout=60)
    assert _pid(state) != os.getpid()
    go.touch()
    thread.join(30)
    assert outcome == [(0, "finished\n")], outcome
    conn.close()
    serving.join(10)
    assert not serving.is_alive()
    keeper.stop(state)


def test_the_keeper_answers_exit_before_it_ends(state, monkeypatch):
    """The keeper must not end while a reply is on its way (issue 12's flaky `stop() == 0`):
    here the reply to `exit` is held back until the test lets it go."""
    release = threading.Event()
    real_send = keeperd.send

    def slow_send(sock, message):
        if "closed" in message:          # the keeper's answer to exit
            release.wait(30)
        real_send(sock, message)
    monkeypatch.setattr(keeperd, "send", slow_send)
    serving_keeper = keeperd.Keeper(keeper.socket_path(state), state, persist=60)
    serving = threading.Thread(target=serving_keeper.serve, daemon=True)
    serving.start()
    assert _gone_or_up(keeper.socket_path(state))
    answer: list = []
    asking = threading.Thread(target=lambda: answer.append(keeper.stop(state)), daemon=True)
    asking.start()
    serving.join(3)                       # three turns of its accept loop
    assert serving.is_alive(), "the keeper ended before sending its answer"
    release.set()
    asking.join(10)
    assert answer == [0]
    serving.join(10)
    assert not serving.is_alive()


def test_the_version_covers_every_module_the_keeper_runs(tmp_path):
    """Changing any module of the package that the keeper imports retires running keepers."""
    root = Path(__file__).resolve().parents[2]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, fleet.transport.keeperd; "
         "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'fleet')))"],
        cwd=root, capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "copy"
    shutil.copytree(root / "fleet", copy / "fleet", ignore=shutil.ignore_patterns("__pycache__"))
    relative = [str(Path(m).relative_to(root)) for m in loaded]
    # In a copy of the package: change each module in turn; does the keeper's VERSION change?
    probe = ("import importlib, sys; from pathlib import Path; from fleet.transport import wire\n"
             "before = wire.VERSION\n"
             "for name in sys.argv[1:]:\n"
             "    Path(name).write_text(Path(name).read_text() + '\\n# changed\\n')\n"
             "    after = importlib.reload(wire).VERSION\n"
             "    print(name, after != before)\n"
             "    before = after\n")
    out = subprocess.run([sys.executable, "-B", "-c", probe, *relative], cwd=copy, capture_output=True, text=True,
                         check=True).stdout
    unchanged = [line.split()[0] for line in out.splitlines() if line.endswith("False")]
    assert len(out.splitlines()) == len(relative) >= 4    # keeper, ssh, connection, inventory at least
    assert unchanged == [], f"changing these does not retire a running keeper: {unchanged}"


def test_code_changed_under_a_running_command_is_said_plainly(state, monkeypatch):
    monkeypatch.setattr(keeper, "VERSION", "code-before-an-update")   # this command loaded older files
    with pytest.raises(FleetError, match="the SSH keeper just started runs other code than this command"):
        keeper._keeper_socket(state, persist=60)
    monkeypatch.undo()
    assert _wait(lambda: keeper.hello(state) is None)                 # the one it started was retired
