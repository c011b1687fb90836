"""The benchmark's workload and its checks on real hosts: 4 hosts, not 10 or 30, because the
figures are `invoke bench`'s job; this proves that what it measures works and that its drift
check would notice a wrong report."""
from __future__ import annotations

import pytest

from bench import run as bench
from fleet.transport import keeper
from fleet.testhosts import hosts as testhosts

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def lab(hosts_factory, tmp_path_factory):
    hosts = hosts_factory(4)
    work = tmp_path_factory.mktemp("bench")
    (work / "git").mkdir()
    git, url = bench.serve_repo(work / "git")
    state = work / "state"
    state.mkdir()
    inventory = state / "bench.yml"
    bench.write_inventory(hosts, inventory, url)
    cold = bench.provision(state, inventory)
    yield hosts, state, inventory, cold
    keeper.stop(state)
    git.terminate()
    testhosts.teardown(hosts)


def test_cold_run_converges_and_names_its_slowest_steps(lab):
    hosts, _, _, cold = lab
    assert cold["rc"] == 0, cold["output"][-3000:]
    assert {r["status"] for r in cold["report"]["hosts"].values()} == {"changed"}
    slowest = max(cold["report"]["hosts"].values(), key=lambda h: h["seconds"])
    steps = bench.slowest_steps(slowest)
    seconds = [s["seconds"] for s in steps]
    assert seconds == sorted(seconds, reverse=True) and len(steps) == 6, steps
    # installing notebook and jupyterlab (about 100 MB of wheels) is among them, timed on the host
    pip = next(s for s in steps if s["step"].startswith("pip notebook=="))
    assert isinstance(pip["seconds"], float), steps


def test_noop_rerun_is_one_command_with_and_without_the_keeper(lab):
    _, state, inventory, _ = lab
    kept = bench.provision(state, inventory)
    direct = bench.provision(state, inventory, keep=False)
    for run in (kept, direct):
        assert run["rc"] == 0 and {r["status"] for r in run["report"]["hosts"].values()} == {"ok"}, run["output"]
        assert bench.per_host(run["report"], "commands") == 1
    assert bench.per_host(kept["report"], "connections") == 0       # the keeper's connections
    assert {r["connections"] for r in direct["report"]["hosts"].values()} == {1}   # a login each


def test_drift_on_three_hosts_is_reported_exactly_and_repaired(lab):
    hosts, state, inventory, _ = lab
    result = bench.drift(hosts, state, inventory)
    drifted = [h.name for h in hosts[1:4]]                          # hosts[0] is left alone
    assert result["drifted"] == drifted and result["reported_changed"] == sorted(drifted), result
    assert result["exact"], result
    assert result["repaired"] and result["api_verified_all"], result
