"""fleet-idle-check: the idle decision as a table of cases, plus the I/O around it.

The script has no .py suffix (it is installed as a command), so it is loaded with
SourceFileLoader. The HTTP side runs against a real local HTTP server that speaks the
few Jupyter Server endpoints the script reads.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "autostop" / "files" / "fleet-idle-check"


def _load():
    loader = importlib.machinery.SourceFileLoader("fleet_idle_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("fleet_idle_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


idle = _load()

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def kernel(state="idle", minutes=120.0, kid="k1"):
    return {"id": kid, "name": "python3", "execution_state": state, "last_activity": ago(minutes)}


OLD_STATUS = {"started": ago(600), "last_activity": ago(90), "kernels": 1, "connections": 0}
HOUR = 3600.0

# (case id, kernels, terminals, status, ssh sessions, uptime seconds, expected idle, reason contains)
CASES = [
    ("old activity everywhere", [kernel()], [{"name": "1", "last_activity": ago(45)}], OLD_STATUS, [], 5 * HOUR, True, "idle"),
    ("no kernels no terminals", [], [], OLD_STATUS, [], 5 * HOUR, True, "idle"),
    ("status without last_activity", [], [], {"started": ago(600)}, [], 5 * HOUR, True, "no activity"),
    ("busy kernel, old activity", [kernel("busy", 300)], [], OLD_STATUS, [], 5 * HOUR, False, "busy"),
    ("starting kernel", [kernel("starting", 2)], [], OLD_STATUS, [], 5 * HOUR, False, "kernel k1 is starting"),
    # Jupyter Server keeps a kernel nobody ever connected to in "starting" for ever.
    ("kernel stuck starting", [kernel("starting", 300)], [], OLD_STATUS, [], 5 * HOUR, True, "(1 never connected)"),
    ("stuck starting, timestamp unreadable", [dict(kernel("starting"), last_activity="?")], [], OLD_STATUS, [],
     5 * HOUR, False, "starting"),
    ("one of two kernels busy", [kernel(), kernel("busy", 200, "k2")], [], OLD_STATUS, [], 5 * HOUR, False, "k2"),
    ("recent kernel activity", [kernel("idle", 5)], [], OLD_STATUS, [], 5 * HOUR, False, "kernel k1 active 5m ago"),
    ("recent terminal activity", [kernel()], [{"name": "7", "last_activity": ago(2)}], OLD_STATUS, [], 5 * HOUR, False, "terminal 7"),
    ("recent server activity", [kernel()], [], dict(OLD_STATUS, last_activity=ago(1)), [], 5 * HOUR, False, "server"),
    ("activity just under the limit", [kernel("idle", 29.5)], [], OLD_STATUS, [], 5 * HOUR, False, "active"),
    ("activity exactly at the limit", [kernel("idle", 30)], [], OLD_STATUS, [], 5 * HOUR, True, "idle"),
    ("ssh session present", [kernel()], [], OLD_STATUS, ["ubuntu pts/0 2025-03-01 09:00 (203.0.113.7)"], 5 * HOUR, False, "ssh session"),
    ("ssh unknown", [kernel()], [], OLD_STATUS, None, 5 * HOUR, False, "ssh sessions unknown"),
    ("fresh boot", [], [], OLD_STATUS, [], 10 * 60, False, "up only 10m"),
    ("uptime unknown", [], [], OLD_STATUS, [], None, False, "uptime unknown"),
    ("jupyter down", None, None, None, [], 5 * HOUR, False, "unknown"),
    ("jupyter half down", [kernel()], None, OLD_STATUS, [], 5 * HOUR, False, "unknown"),
    ("unreadable timestamp", [dict(kernel(), last_activity="yesterday")], [], OLD_STATUS, [], 5 * HOUR, False, "unreadable"),
    ("missing kernel timestamp", [{"id": "k9", "execution_state": "idle"}], [], OLD_STATUS, [], 5 * HOUR, False, "unreadable"),
]


@pytest.mark.parametrize("kernels,terminals,status,ssh,uptime,expected,why",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(kernels, terminals, status, ssh, uptime, expected, why):
    result, reason = idle.decide(NOW, kernels, terminals, status, ssh, uptime, 30)
    assert result is expected, reason
    assert why in reason


@pytest.mark.parametrize("text,expected", [
    ("2025-03-01T11:00:00Z", datetime(2025, 3, 1, 11, 0, tzinfo=timezone.utc)),
    ("2025-03-01T11:00:00.123456Z", datetime(2025, 3, 1, 11, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2025-03-01T11:00:00.123456789Z", datetime(2025, 3, 1, 11, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2025-03-01T11:00:00.5+00:00", datetime(2025, 3, 1, 11, 0, 0, 500000, tzinfo=timezone.utc)),
    ("2025-03-01T13:00:00+02:00", datetime(2025, 3, 1, 11, 0, tzinfo=timezone.utc)),
    ("2025-03-01T11:00:00", datetime(2025, 3, 1, 11, 0, tzinfo=timezone.utc)),  # naive: Jupyter means UTC
    ("2025-02-30T11:00:00Z", None),
    ("not a time", None),
    (None, None),
])
def test_parse_time(text, expected):
    assert idle.parse_time(text) == expected


# ----------------------------------------------------------- against HTTP


TOKEN = "s3cret-token-value-0123456789"


class FakeJupyter(BaseHTTPRequestHandler):
    """Just enough Jupyter Server: token auth on /api/status, /api/kernels, /api/terminals."""

    payloads: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server naming)
        path, _, query = self.path.partition("?")
        self.seen.append((path, query, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"token {TOKEN}":
            self.send_response(403)
            self.end_headers()
            return
        if path not in self.payloads:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps(self.payloads[path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def jupyter():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJupyter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeJupyter.seen = []
    yield server
    server.shutdown()
    server.server_close()


def make_config(tmp_path: Path, url: str, **overrides) -> dict:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    data = {
        "idle_minutes": 30,
        "jupyter_url": url,
        "token_file": str(token_file),
        "state_file": str(tmp_path / "state" / "idle.json"),
        "poweroff_command": f"touch {tmp_path / 'stopped'}",
        "timeout_s": 2,
        **overrides,
    }
    path = tmp_path / "autostop.json"
    path.write_text(json.dumps(data))
    return idle.load_config(path)


def serve(idle_payloads: bool):
    now = datetime.now(timezone.utc)
    stamp = (now - timedelta(minutes=120 if idle_payloads else 1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    FakeJupyter.payloads = {
        "/api/status": {"started": stamp, "last_activity": stamp, "kernels": 1, "connections": 0},
        "/api/kernels": [{"id": "k1", "execution_state": "idle", "last_activity": stamp}],
        # /api/terminals deliberately absent: 404 means terminals are disabled
    }


def test_idle_machine_powers_off_and_never_leaks_token(jupyter, tmp_path, capsys):
    serve(idle_payloads=True)
    config = make_config(tmp_path, f"http://127.0.0.1:{jupyter.server_port}")
    result, reason, acted = idle.check(config, sessions=[], uptime=5 * HOUR)
    assert (result, acted) == (True, True), reason
    assert (tmp_path / "stopped").exists()
    state = json.loads((tmp_path / "state" / "idle.json").read_text())
    assert state["idle"] is True and state["poweroff"] is True
    # token only in the header, and our polls ask Jupyter not to count them as activity
    assert {p for p, _, _ in FakeJupyter.seen} == {"/api/status", "/api/kernels", "/api/terminals"}
    assert all(q == "no_track_activity=1" and a == f"token {TOKEN}" for _, q, a in FakeJupyter.seen)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert TOKEN not in (tmp_path / "state" / "idle.json").read_text()


def test_active_machine_stays_up(jupyter, tmp_path):
    serve(idle_payloads=False)
    config = make_config(tmp_path, f"http://127.0.0.1:{jupyter.server_port}")
    result, reason, acted = idle.check(config, sessions=[], uptime=5 * HOUR)
    assert (result, acted) == (False, False)
    assert "active" in reason
    assert not (tmp_path / "stopped").exists()


def test_dry_run_decides_but_does_not_act(jupyter, tmp_path):
    serve(idle_payloads=True)
    config = make_config(tmp_path, f"http://127.0.0.1:{jupyter.server_port}")
    result, reason, acted = idle.check(config, sessions=[], uptime=5 * HOUR, dry_run=True)
    assert (result, acted) == (True, False), reason
    assert not (tmp_path / "stopped").exists()
    state = json.loads((tmp_path / "state" / "idle.json").read_text())
    assert state["dry_run"] is True and state["poweroff"] is False


def test_wrong_token_is_unknown_not_idle(jupyter, tmp_path, capsys):
    serve(idle_payloads=True)
    config = make_config(tmp_path, f"http://127.0.0.1:{jupyter.server_port}")
    Path(config["token_file"]).write_text("wrong-token")
    result, reason, acted = idle.check(config, sessions=[], uptime=5 * HOUR)
    assert (result, acted) == (False, False)
    assert "HTTP 403" in reason
    assert "wrong-token" not in capsys.readouterr().out


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_down_as_a_command(tmp_path):
    """The real command line: Jupyter not listening -> logs why, exits 0, does not stop."""
    make_config(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "autostop.json")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "unknown" in proc.stdout and "unreachable" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    assert not (tmp_path / "stopped").exists()
    assert json.loads((tmp_path / "state" / "idle.json").read_text())["idle"] is False


def test_bad_config_exits_2(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"idle_minute": 5}))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "idle_minute" in proc.stdout


def test_script_is_stdlib_only_and_executable():
    assert SCRIPT.stat().st_mode & 0o111
    source = SCRIPT.read_text()
    assert source.startswith("#!/usr/bin/python3")
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


# ------------------------------------------------- the role that installs it


def _autostop_plan(tmp_path, monkeypatch, **knobs):
    """The autostop role's compiled steps for one host (controller side, no host needed)."""
    from fleet.app import Session
    from fleet.engine.compile import compile_plans

    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"name": "demo", "vars": {"roles": ["jupyter", "autostop"], **knobs},
                                     "hosts": {"h1": {"address": "10.0.0.1"}}}))
    session = Session.open(str(inventory))
    plans = compile_plans(session.inventory, ["h1"], roleset=session.roleset, overrides={}, only_roles=None,
                          secrets=session.secrets, masker=session.masker)
    plan = plans["h1"]
    steps = {step.name: step for role, step in plan.steps if role == "autostop"}
    verifies = [v for role, v in plan.verifies if role == "autostop"]
    return plan, steps, verifies


def test_role_installs_script_config_token_and_timer(tmp_path, monkeypatch):
    plan, steps, verifies = _autostop_plan(tmp_path, monkeypatch, autostop_idle_minutes=5,
                                           autostop_poweroff_command="touch '/run/would stop'")
    script = steps["file /usr/local/sbin/fleet-idle-check"]
    assert (script.mode, script.content) == ("0755", SCRIPT.read_bytes())
    token = steps["token file /etc/jupyter-fleet/jupyter-token"]
    assert (token.owner, token.group, token.mode, token.secret) == ("root", "root", "0600", True)
    assert token.content.decode().strip() == plan.vars.jupyter_token
    config = json.loads(steps["template autostop.json.j2 -> /etc/jupyter-fleet/autostop.json"].content)
    assert config == {"idle_minutes": 5, "jupyter_url": "http://127.0.0.1:8888",
                      "token_file": "/etc/jupyter-fleet/jupyter-token",
                      "state_file": "/var/lib/jupyter-fleet/idle-state.json",
                      "poweroff_command": ["touch", "/run/would stop"], "ssh_check": "logins", "timeout_s": 5}
    # the rendered config is one the script accepts
    (tmp_path / "autostop.json").write_text(json.dumps(config))
    assert idle.load_config(tmp_path / "autostop.json")["idle_minutes"] == 5.0
    service = steps["template fleet-idle-check.service.j2 -> /etc/systemd/system/fleet-idle-check.service"]
    assert b"Type=oneshot" in service.content and service.notify == ("reload autostop units",)
    timer = steps["template fleet-idle-check.timer.j2 -> /etc/systemd/system/fleet-idle-check.timer"]
    assert b"OnUnitActiveSec=1min" in timer.content and b"WantedBy=timers.target" in timer.content
    unit = steps["service fleet-idle-check.timer"]
    assert (unit.enabled, unit.running) == (True, True)
    assert steps["apt python3"].packages == ("python3",)
    assert len(verifies) == 1 and "--dry-run" in verifies[0].script
    assert plan.vars.jupyter_token not in verifies[0].script


def test_role_disabled_stops_the_timer_and_skips_the_dry_run(tmp_path, monkeypatch):
    _, steps, verifies = _autostop_plan(tmp_path, monkeypatch, autostop_enabled=False)
    unit = steps["service fleet-idle-check.timer"]
    assert (unit.enabled, unit.running) == (False, False)
    assert verifies == []


def test_role_connections_check_installs_ss_and_url_follows_jupyter_ip(tmp_path, monkeypatch):
    _, steps, _ = _autostop_plan(tmp_path, monkeypatch, autostop_ssh_check="connections", jupyter_ip="::1",
                                 jupyter_port=8890)
    assert steps["apt python3 iproute2"].packages == ("python3", "iproute2")
    config = json.loads(steps["template autostop.json.j2 -> /etc/jupyter-fleet/autostop.json"].content)
    assert config["jupyter_url"] == "http://[::1]:8890" and config["ssh_check"] == "connections"


@pytest.mark.parametrize("knobs,key,message", [
    ({"autostop_idle_minutes": 0}, "autostop_idle_minutes", "at least 1"),
    ({"autostop_interval": "every minute"}, "autostop_interval", "time span"),
    ({"autostop_interval": "0s"}, "autostop_interval", "time span"),
    ({"autostop_poweroff_command": "systemctl 'poweroff"}, "autostop_poweroff_command", "cannot split"),
    ({"autostop_poweroff_command": "  "}, "autostop_poweroff_command", "empty"),
    ({"autostop_ssh_check": "who"}, "autostop_ssh_check", "one of"),
    ({"autostop_idle_minute": 5}, "autostop_idle_minute", "did you mean autostop_idle_minutes"),
])
def test_role_rejects_bad_knobs_before_any_host(tmp_path, monkeypatch, knobs, key, message):
    from fleet.errors import InputError, InputErrors

    with pytest.raises((InputError, InputErrors)) as caught:
        _autostop_plan(tmp_path, monkeypatch, **knobs)
    assert key in str(caught.value) and message in str(caught.value)


def test_role_works_with_password_auth_through_the_hosts_token(tmp_path, monkeypatch):
    # The jupyter role keeps a per-host token beside the password, so the API stays readable.
    _, steps, _ = _autostop_plan(tmp_path, monkeypatch, jupyter_auth="password", jupyter_password="pw")
    assert steps["service fleet-idle-check.timer"].running
