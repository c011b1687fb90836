"""The runner's --max-fail: one parser for every form (tests as data), and the runner using it."""
from __future__ import annotations

import socket

import pytest

from fleet.transport.base import ConnectOptions
from fleet.errors import InputError
from fleet.inventory.model import Host
from fleet.engine.roles import HostPlan
from fleet.engine.runner import RunOptions, parse_max_fail, run_fleet

GOOD = [
    # (text, hosts in the run, failures allowed)
    ("0", 10, 0), ("3", 10, 3), (" 3 ", 10, 3), ("20%", 10, 2), ("25%", 10, 2), ("12.5%", 8, 1),
    ("0%", 10, 0), ("100%", 10, 10), ("50 %", 4, 2),
]
BAD = ["1.5", "50%%", "%", "-1", "-5%", "150%", "many", "", "3 hosts", "1e3", "nan%", "inf%", "0x10", "½"]


@pytest.mark.parametrize("text,total,allowed", GOOD)
def test_counts_and_percentages(text, total, allowed):
    assert parse_max_fail(text).allowed(total) == allowed


@pytest.mark.parametrize("text", BAD)
def test_anything_else_is_bad_input(text):
    with pytest.raises(InputError, match=r"--max-fail: expected a number of hosts \(3\) or a percentage \(20%\) of at most 100%, got"):
        parse_max_fail(text)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens once the socket closes


@pytest.mark.parametrize("max_fail,started", [("1", 2), ("0", 1), ("50%", 3), ("12.5%", 1), (None, 4)])
def test_the_runner_stops_starting_hosts_past_the_limit(tmp_path, monkeypatch, max_fail, started):
    """Four unreachable hosts (a closed loopback port), one at a time: failures allowed + 1 start."""
    monkeypatch.setenv("FLEET_SSH_PERSIST", "0")
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    port = _closed_port()
    plans = {f"h{i}": HostPlan(Host(f"h{i}", "127.0.0.1", user="ubuntu", port=port), {}, [])
             for i in range(4)}
    options = RunOptions(connect=ConnectOptions(known_hosts=tmp_path / "known_hosts", connect_timeout=2),
                         parallel=1, max_fail=max_fail)
    run = run_fleet(plans, options)
    statuses = [r.status for r in run.hosts.values()]
    assert statuses == ["unreachable"] * started + ["skipped"] * (4 - started), statuses
    if started < 4:
        assert run.stopped_reason.startswith(f"--max-fail {max_fail} exceeded")


class _Answers:
    """A connection that records the scripts it is sent and answers the probe with a failed
    every-run check (a service still starting after a reboot)."""

    connections = commands = 0

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def open(self) -> None: ...
    def close(self) -> None: ...

    def run_script(self, script, timeout=None, *, files=()):
        self.scripts.append(script)
        nonce = script.split("\n", 1)[0].removeprefix("__N=")
        if len(self.scripts) == 1:
            return 0, "".join(f"\n@@{nonce}@@ {m}" for m in ("verify 0\nnothing answers yet", "rc 1", "pending", "done")) + "\n"
        return 0, ""


def test_a_check_failed_in_the_probe_is_asked_again_with_its_wait(monkeypatch, tmp_path):
    from fleet.engine import runner
    from fleet.engine.steps import Verify
    from fleet.inventory.variables import HostVars

    conn = _Answers()
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(runner, "connect", lambda host, options, state: conn)
    check = Verify("service answers", "test -e /run/service.ready", every_run=True, wait_s=30)
    plan = HostPlan(Host("h1", "127.0.0.1"), HostVars({}), ["r"], verifies=[("r", check)])
    runner.run_host(plan, RunOptions(connect=ConnectOptions(known_hosts=tmp_path / "kh")), runner.Stop())
    assert len(conn.scripts) == 2, "a no-op whose probe check failed must ask it again, waiting"
    assert "test -e /run/service.ready" in conn.scripts[1]


def test_a_host_served_by_an_early_probe_counts_its_time_from_that_probe(monkeypatch, tmp_path):
    """The recap's "in N s" and each host's seconds start when the probe left, not when the engine
    had loaded: an early probe sent 2 s before the run is in both (it once read "in 0.0 s")."""
    import time

    from fleet.engine import runner, speculation
    from fleet.engine.remote import Probe
    from fleet.inventory.variables import HostVars

    conn = _Answers()
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(runner, "connect", lambda host, options, state: conn)
    template = Probe([], []).script().partition("\n")[2]
    early = speculation._Early(template, "feed01", sent=time.monotonic() - 2.0)
    early.answer = (0, "\n@@feed01@@ done\n")
    early.done.set()
    spec = speculation.Speculation("k", tmp_path)
    spec.started["h1"] = early
    monkeypatch.setattr(speculation, "current", spec)
    plan = HostPlan(Host("h1", "127.0.0.1"), HostVars({}), [])
    run = run_fleet({"h1": plan}, RunOptions(connect=ConnectOptions(known_hosts=tmp_path / "kh")))
    host = run.hosts["h1"]
    assert host.status == "ok" and host.early_probe and conn.scripts == [], "the early answer served the run"
    assert 2.0 <= host.early_probe_s < 10 and host.seconds >= host.early_probe_s
    assert run.seconds >= host.seconds
