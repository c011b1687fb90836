"""`invoke bench --peer pyinfra`'s logic that needs no hosts: finding pyinfra (and saying which
extra to install when it is missing), the inventory it gets, reading its results, the table."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from bench import peer
from bench import run as bench
from fleet.testhosts.common import TestHost

PROJECT = Path(__file__).resolve().parent.parent


def test_missing_pyinfra_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr(peer.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(peer, "PROJECT_VENV", tmp_path / "none")
    with pytest.raises(peer.PeerError) as err:
        peer.pyinfra_command()
    assert "`bench` extra" in str(err.value) and "pip install -e '.[bench]'" in str(err.value)


def test_missing_pyinfra_stops_before_any_host(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(peer.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(peer, "PROJECT_VENV", tmp_path / "none")
    monkeypatch.setattr(peer.testhosts, "boot", lambda n: pytest.fail("booted hosts without pyinfra"))
    monkeypatch.setattr(peer.testhosts, "controller_setup", lambda: pytest.fail("set up the controller without pyinfra"))
    assert peer.main([5], "unused.json", "pyinfra") == 1
    assert "install the `bench` extra (pip install -e '.[bench]')" in capsys.readouterr().out.replace("\n", " ")


def test_the_extra_declares_pyinfra():
    import tomllib

    extras = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(spec.replace(" ", "").startswith("pyinfra>=3.10") for spec in extras["bench"])


def test_pyinfra_of_this_python_runs_as_a_module(monkeypatch):
    monkeypatch.setattr(peer.importlib.util, "find_spec", lambda name: object())
    assert peer.pyinfra_command() == [peer.sys.executable, "-m", "pyinfra"]


@pytest.mark.parametrize("peer_name, peer_bin, message", [
    ("ansible", None, "--peer ansible: unknown peer (expected one of: pyinfra)"),
    ("pyinfra", "/nonexistent/bin/pyinfra", "--peer-bin /nonexistent/bin/pyinfra: not an executable file"),
])
def test_bad_peer_arguments(peer_name, peer_bin, message):
    with pytest.raises(peer.PeerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        peer.check_peer(peer_name, peer_bin)


def test_peer_bin_is_used_as_given(tmp_path):
    tool = tmp_path / "pyinfra"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert peer.check_peer("pyinfra", str(tool)) == [str(tool)]
    tool.chmod(0o644)
    with pytest.raises(peer.PeerError):
        peer.check_peer("pyinfra", str(tool))


def read_inventory(path: Path) -> list:
    """The generated inventory is plain literals: read it as pyinfra would, without running code."""
    tree = ast.parse(path.read_text())
    [assign] = tree.body
    assert [t.id for t in assign.targets] == ["bench"]
    return ast.literal_eval(assign.value)


def test_inventory_for_booted_hosts(tmp_path):
    hosts = [TestHost.for_index(i) for i in (7, 3, 12)]
    url = "git://controller:9418/course.git"
    path = peer.write_inventory(hosts, tmp_path / "inv.py", peer.workload(url), tmp_path / "known_hosts")
    entries = read_inventory(path)
    assert [name for name, _ in entries] == ["h7", "h3", "h12"]
    for index, ((_, data), h) in enumerate(zip(entries, hosts, strict=True)):
        assert (data["ssh_hostname"], data["ssh_user"], data["ssh_key"]) == (h.address, h.user, str(h.key))
        assert data["ssh_known_hosts_file"] == str(tmp_path / "known_hosts")
        assert data["jupyter_port"] == 8800 + index                   # as bench.write_inventory gives Fleet
        assert f'permitopen="localhost:{8800 + index}"' in data["authorized_key"]
        assert ' ssh-ed25519 AAAA' in data["authorized_key"].split("\n")[1]
        assert data["repos"] == [{"url": url, "dest": "course", "ref": "main"}]
    assert len({data["jupyter_token"] for _, data in entries}) == 3
    assert len({data["authorized_key"] for _, data in entries}) == 3


def test_workload_is_fleets():
    """pyinfra installs what Fleet's jupyter role and the bench's workload ask for, pinned the same."""
    defaults = yaml.safe_load((PROJECT / "roles/jupyter/defaults.yml").read_text())
    work = peer.workload("git://x/c.git")
    assert work["pip_packages"] == [f"notebook=={defaults['jupyter_notebook_version']}",
                                    f"jupyterlab=={defaults['jupyter_lab_version']}",
                                    *defaults["jupyter_fast_start_packages"],
                                    *bench.workload_vars("git://x/c.git")["jupyter_extra_packages"]]
    assert json.loads(work["lab_overrides"]) == defaults["jupyter_lab_settings"]
    assert work["with_service"] is True
    assert peer.workload("git://x/c.git", packages=["six==1.17.0"], with_service=False)["pip_packages"] == ["six==1.17.0"]


def results_json(ops: list[tuple[str, list[str], list[str], list[str]]], failed: list[str] = ()) -> str:
    operations = [{"name": name, "success": s, "error": e, "no_change": n} for name, s, e, n in ops]
    totals = {"hosts": 0, "success": sum(len(o["success"]) for o in operations),
              "error": sum(len(o["error"]) for o in operations),
              "no_change": sum(len(o["no_change"]) for o in operations)}
    return json.dumps({"plan": [], "results": {"operations": operations, "totals": totals, "failed_hosts": list(failed)}})


CHANGED = results_json([("apt git", ["h1", "h2"], [], []), ("jupyter config", ["h1"], [], ["h2"])])
UNCHANGED = results_json([("apt git", [], [], ["h1", "h2"]), ("jupyter config", [], [], ["h1", "h2"])])
FAILED = results_json([("apt git", ["h1"], ["h2"], [])], failed=["h2"])


def test_totals_of_a_run():
    t = peer.totals(CHANGED)
    assert (t["success"], t["error"], t["no_change"], t["changed_ops"]) == (3, 0, 1, ["apt git", "jupyter config"])
    assert peer.totals("--> Loading config...\nnot json")["success"] is None


@pytest.mark.parametrize("stdout, rc, changed, ok", [
    (CHANGED, 0, True, True),
    (CHANGED, 0, False, False),      # a no-op that changed something
    (UNCHANGED, 0, False, True),
    (UNCHANGED, 0, True, False),     # a cold run that changed nothing
    (FAILED, 1, True, False),
    (UNCHANGED, 1, False, False),    # pyinfra's exit status counts too
])
def test_pyinfra_run_judged(stdout, rc, changed, ok):
    assert peer.pyinfra_ok({"rc": rc, "totals": peer.totals(stdout)}, changed=changed) is ok


@pytest.mark.parametrize("statuses, rc, changed, ok", [
    (["changed", "changed"], 0, True, True),
    (["changed", "ok"], 0, True, False),
    (["ok", "ok"], 0, False, True),
    (["ok", "changed"], 0, False, False),
    (["ok", "ok"], 2, False, False),
    ([], 0, False, False),           # no report at all
])
def test_fleet_run_judged(statuses, rc, changed, ok):
    report = {"hosts": {f"h{i}": {"status": s} for i, s in enumerate(statuses)}}
    assert peer.fleet_ok({"rc": rc, "report": report}, changed=changed) is ok


def test_runs_alternate_so_neither_always_goes_first():
    assert peer.alternate(3) == ["fleet", "pyinfra", "pyinfra", "fleet", "fleet", "pyinfra"]
    assert peer.alternate(2, first="pyinfra") == ["pyinfra", "fleet", "fleet", "pyinfra"]


def test_table_rows_with_ratios():
    result = {"hosts": 5, "fleet": {"cold_s": 81.3, "noop_median_s": 1.03},
              "pyinfra": {"cold_s": 82.4, "noop_median_s": 4.0}}
    result["cold_ratio"] = peer.ratio(81.3, 82.4)
    result["noop_ratio"] = peer.ratio(1.03, 4.0)
    assert peer.rows([result]) == [["5", "81.3", "82.4", "0.99", "1.03", "4.0", "0.26"]]
    assert len(peer.COLUMNS) == len(peer.rows([result])[0])
    assert peer.ratio(1.0, 0) is None


def test_the_offline_cold_run_gets_a_column_of_its_own():
    result = {"hosts": 5, "fleet": {"cold_s": 80.0, "noop_median_s": 1.0}, "pyinfra": {"cold_s": 100.0, "noop_median_s": 8.0},
              "cold_ratio": 0.8, "noop_ratio": 0.12, "fleet_offline": {"cold_s": 84.0},
              "offline_vs_online": peer.ratio(84.0, 80.0)}
    assert peer.rows([result])[0][-1] == "84.0 (1.05 of online)"
    assert len(peer.rows([result])[0]) == len(peer.COLUMNS) + 1
