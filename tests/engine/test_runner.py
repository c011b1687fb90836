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
