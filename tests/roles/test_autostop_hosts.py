"""The autostop role on a real Debian host: files, timer and an idempotent second run, then the
idle decision made by the installed timer's service against the host's real Jupyter server.

`autostop_poweroff_command` is replaced by `touch /run/fleet-would-poweroff`, so "the machine
would power off now" is a file we can look for. idle_minutes is 1 (the smallest the role
accepts): a kernel started a moment ago is certainly active, and after a bit more than a
minute with no request that Jupyter counts, nothing is.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fleet.testhosts import hosts as testhosts
from tests.fixtures import changed_steps, fleet, sh, stop

pytestmark = pytest.mark.hosts

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "autostop" / "files" / "fleet-idle-check"
MARKER = "/run/fleet-would-poweroff"
TOKEN_FILE = "/etc/jupyter-fleet/jupyter-token"
STATE = "/var/lib/jupyter-fleet/idle-state.json"
API = "http://127.0.0.1:8888"
# The token goes from the root-only file into curl's stdin (printf is a bash builtin): never an argument.
AUTH = f"printf 'Authorization: token %s\\n' \"$(cat {TOKEN_FILE})\" | curl -fsS --max-time 10 -H @- "


@pytest.fixture(scope="module")
def lab(hosts_factory, tmp_path_factory):
    (host,) = hosts_factory(1)
    state = tmp_path_factory.mktemp("autostop")
    inventory = testhosts.write_inventory([host], state / "inventory.yml", vars={
        "roles": ["jupyter", "autostop"],
        "autostop_idle_minutes": 1,
        "autostop_interval": "1h",   # the tests start the check themselves; the timer stays out of the way
        "autostop_poweroff_command": f"touch {MARKER}",
    })
    first = fleet("provision", state=state, inventory=inventory)
    yield host, state, inventory, first
    testhosts.teardown([host])


def _stat(host, path: str) -> str:
    return sh(host, f"stat -c '%U %G %a' {path}").stdout.strip()


def _idle_state(host) -> dict:
    return json.loads(sh(host, f"cat {STATE}").stdout)


def _check_now(host) -> dict:
    """One check through the installed unit (a oneshot: `start` returns when it is done)."""
    sh(host, f"rm -f {MARKER} {STATE} && systemctl start fleet-idle-check.service")
    return _idle_state(host)


def _marker(host) -> bool:
    return sh(host, f"test -e {MARKER}", check=False).returncode == 0


def test_first_run_installs_files_and_timer(lab):
    host, _, _, first = lab
    assert first.rc == 0, first.output
    result = first.report["hosts"][host.name]
    assert result["status"] == "changed"
    assert "reload autostop units" in result["handlers"]
    assert all(v["ok"] for v in result["verifies"]), result["verifies"]
    assert _stat(host, "/usr/local/sbin/fleet-idle-check") == "root root 755"
    assert _stat(host, "/etc/jupyter-fleet/autostop.json") == "root root 644"
    assert _stat(host, TOKEN_FILE) == "root root 600"
    # The token file holds the token the server was configured with.
    server_config = sh(host, "cat /etc/jupyter/jupyter_server_config.py").stdout
    token = sh(host, f"cat {TOKEN_FILE}").stdout.strip()
    assert len(token) >= 16 and f'c.IdentityProvider.token = "{token}"' in server_config
    assert token not in first.output and token not in json.dumps(first.report)
    config = json.loads(sh(host, "cat /etc/jupyter-fleet/autostop.json").stdout)
    assert config["idle_minutes"] == 1 and config["jupyter_url"] == API
    assert config["poweroff_command"] == ["touch", MARKER] and config["ssh_check"] == "logins"
    assert sh(host, "systemctl is-enabled fleet-idle-check.timer; systemctl is-active fleet-idle-check.timer"
              ).stdout.split() == ["enabled", "active"]
    shown = sh(host, "systemctl show fleet-idle-check.service -p Type -p ExecStart; "
                     "systemctl show fleet-idle-check.timer -p TimersMonotonic").stdout
    assert "Type=oneshot" in shown
    assert "/usr/local/sbin/fleet-idle-check /etc/jupyter-fleet/autostop.json" in shown
    assert "OnUnitActiveUSec=1h" in shown and "OnActiveUSec=1h" in shown
    # The verify was a dry run: it decided, logged why, and did not power off.
    assert _idle_state(host)["dry_run"] is True
    assert not _marker(host)


def test_installed_script_is_the_one_in_the_repository(lab):
    host = lab[0]
    wanted = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    assert sh(host, "sha256sum /usr/local/sbin/fleet-idle-check").stdout.split()[0] == wanted


def test_second_run_changes_nothing(lab):
    host, state, inventory, _ = lab
    again = fleet("provision", state=state, inventory=inventory)
    assert again.rc == 0, again.output
    result = again.report["hosts"][host.name]
    assert result["status"] == "ok", result
    assert changed_steps(again.report, host.name) == []
    assert result["handlers"] == []
    # One round trip: a single remote command, over the connection the keeper held since the
    # first run (0 logins) or a fresh one if the keeper had idled out meanwhile (1 login).
    assert result["commands"] == 1 and result["connections"] in (0, 1), result


# Runs code in a kernel through its connection file, as a notebook would: the server sees the
# kernel's busy/idle messages and its execution_state leaves "starting".
RUN_CODE = """
import sys
from jupyter_client import BlockingKernelClient
client = BlockingKernelClient(connection_file=sys.argv[1])
client.load_connection_file()
client.start_channels()
client.wait_for_ready(timeout=60)
reply = client.execute_interactive("total = sum(range(10))", timeout=60)
client.stop_channels()
print(reply["content"]["status"])
"""


def _start_kernel(host) -> str:
    created = sh(host, AUTH + f"-X POST -H 'Content-Type: application/json' -d '{{\"name\": \"python3\"}}' "
                              f"{API}/api/kernels").stdout
    return json.loads(created)["id"]


def _kernels(host) -> dict[str, dict]:
    return {k["id"]: k for k in json.loads(sh(host, AUTH + f"'{API}/api/kernels?no_track_activity=1'").stdout)}


def test_fresh_kernel_keeps_the_machine_up(lab):
    host = lab[0]
    used = _start_kernel(host)
    connection = f"/home/student/.local/share/jupyter/runtime/kernel-{used}.json"
    _wait_for(lambda: sh(host, f"test -e {connection}", check=False).returncode == 0, "the connection file")
    ran = sh(host, f"/opt/jupyter/bin/python - {connection} <<'PY'\n{RUN_CODE}PY").stdout
    assert ran.strip() == "ok"
    _wait_for(lambda: _kernels(host)[used]["execution_state"] == "idle", "the kernel to report idle")
    unused = _start_kernel(host)  # never connected to: Jupyter leaves it "starting"

    decision = _check_now(host)
    assert decision["idle"] is False and decision["poweroff"] is False, decision
    assert decision["dry_run"] is False
    assert decision["reason"] == f"kernel {unused} is starting", decision
    assert not _marker(host)
    assert _kernels(host)[unused]["execution_state"] == "starting"
    # One line per check in the unit's journal; the token never appears there.
    journal = sh(host, "journalctl -q -u fleet-idle-check.service --no-pager -o cat").stdout
    assert "fleet-idle-check: " + decision["reason"] in journal
    assert sh(host, f"cat {TOKEN_FILE}").stdout.strip() not in journal


def _seconds_since_activity(host) -> float:
    """Age of the newest activity Jupyter records, read without counting as activity."""
    newest = None
    for path in ("/api/status", "/api/kernels", "/api/terminals"):
        data = json.loads(sh(host, AUTH + f"'{API}{path}?no_track_activity=1'").stdout)
        items = [data] if isinstance(data, dict) else data
        for item in items:
            if item.get("last_activity"):
                when = datetime.fromisoformat(item["last_activity"])
                newest = when if newest is None or when > newest else newest
    return (datetime.now(timezone.utc) - newest).total_seconds()


def _wait_idle_for(host, seconds: float, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while True:
        age = _seconds_since_activity(host)
        if age >= seconds:
            return
        assert time.monotonic() < deadline, f"Jupyter still active {age:.0f}s ago"
        time.sleep(min(seconds - age + 1, 15))


def test_idle_machine_powers_off_unless_someone_is_logged_in(lab):
    host = lab[0]
    states = sorted(k["execution_state"] for k in _kernels(host).values())
    assert states == ["idle", "starting"], "the kernels of the previous test are still there"
    _wait_idle_for(host, 65)

    # Everything idle, but someone has an interactive SSH login: not idle.
    argv = host.ssh_command("sleep 120")
    argv.insert(1, "-tt")  # a terminal: an interactive login, recorded in utmp
    login = subprocess.Popen(argv,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: sh(host, "who").stdout.strip() != "", "the login to show in who")
        decision = _check_now(host)
        assert decision["idle"] is False and "ssh session" in decision["reason"], decision["reason"]
        assert not _marker(host)
    finally:
        stop(login)
    _wait_for(lambda: sh(host, "who").stdout.strip() == "", "the login to leave who")

    # Nobody logged in, the kernel idle for over a minute: the machine would power off.
    decision = _check_now(host)
    assert decision["idle"] is True and decision["poweroff"] is True, decision["reason"]
    assert decision["reason"].startswith("idle: last activity"), decision["reason"]
    assert "2 kernels none busy (1 never connected)" in decision["reason"]
    assert _marker(host)
    assert "powering off: idle" in sh(host, "journalctl -q -u fleet-idle-check.service --no-pager -o cat").stdout


def _wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_the_timer_runs_the_check_on_its_own(lab):
    host, state, inventory, _ = lab
    assert _seconds_since_activity(host) >= 60
    sh(host, f"rm -f {MARKER} {STATE}")
    faster = fleet("provision", "--set", "autostop_interval=5s", state=state, inventory=inventory)
    assert faster.rc == 0, faster.output
    assert changed_steps(faster.report, host.name) == [
        "template fleet-idle-check.timer.j2 -> /etc/systemd/system/fleet-idle-check.timer"]
    assert faster.report["hosts"][host.name]["handlers"] == ["reload autostop units"]
    assert "OnUnitActiveUSec=5s" in sh(host, "systemctl show fleet-idle-check.timer -p TimersMonotonic").stdout
    sh(host, f"rm -f {STATE}")  # the provision's dry-run verify wrote one
    _wait_for(lambda: sh(host, f"test -e {STATE}", check=False).returncode == 0, "the timer's first check", 40)
    decision = _idle_state(host)
    # Still idle since the previous test: provisioning asks only /api/status (which Jupyter does
    # not count as activity) and the dry run passes no_track_activity, and its SSH session has no
    # terminal. So a run of the course's playbook does not keep a machine awake.
    assert decision["dry_run"] is False, decision
    assert decision["idle"] is True and decision["poweroff"] is True, decision["reason"]
    assert _marker(host)


def test_disabled_stops_and_disables_the_timer(lab):
    host, state, inventory, _ = lab
    args = ("provision", "--set", "autostop_enabled=false", "--set", "autostop_interval=5s")
    off = fleet(*args, state=state, inventory=inventory)
    assert off.rc == 0, off.output
    assert changed_steps(off.report, host.name) == ["service fleet-idle-check.timer"]
    assert sh(host, "systemctl is-enabled fleet-idle-check.timer; systemctl is-active fleet-idle-check.timer",
              check=False).stdout.split() == ["disabled", "inactive"]
    again = fleet(*args, state=state, inventory=inventory)
    assert again.rc == 0, again.output
    assert changed_steps(again.report, host.name) == []
