"""The pyinfra side of `invoke bench --peer pyinfra` on one real host, with a small workload (one
small pip package, no Jupyter to start): the deploy really changes the host, a re-run reports no
change, and a file put back wrong is reported as exactly that change (so the no-op check can fail).

pyinfra comes from the `bench` extra, or from the venv named by FLEET_BENCH_PYINFRA (its
`pyinfra` command: pyinfra pins paramiko<5, which a shared environment may not want).
"""
from __future__ import annotations

import importlib.util
import os

import pytest

from bench import peer
from bench import run as bench
from fleet.testhosts import hosts as testhosts
from tests.skips import require

pytestmark = pytest.mark.hosts

PACKAGE = "six==1.17.0"


@pytest.fixture(scope="module")
def lab(hosts_factory, tmp_path_factory):
    given = os.environ.get("FLEET_BENCH_PYINFRA")
    require(bool(given) or importlib.util.find_spec("pyinfra") is not None or os.access(peer.PROJECT_VENV, os.X_OK),
            "pyinfra is not installed (scripts/install-deps makes .venv-bench) and FLEET_BENCH_PYINFRA is not set")
    command = peer.pyinfra_command(given)
    [host] = hosts_factory(1)
    work = tmp_path_factory.mktemp("bench-peer")
    (work / "git").mkdir()
    git, url = bench.serve_repo(work / "git")
    inventory = peer.write_inventory([host], work / "inventory.py", peer.workload(url, [PACKAGE], with_service=False),
                                     work / "known_hosts")
    yield host, command, inventory
    git.terminate()
    testhosts.teardown([host])


def test_cold_run_changes_the_host_and_a_rerun_changes_nothing(lab):
    host, command, inventory = lab
    cold = peer.run_pyinfra(command, inventory)
    assert peer.pyinfra_ok(cold, changed=True), cold["output"]
    assert {"venv /opt/jupyter", f"pip {PACKAGE}", "jupyter config", "apt git"} <= set(cold["totals"]["changed_ops"])
    probe = host.run("/opt/jupyter/bin/python -c 'import six; print(six.__version__)' && "
                     "sudo -n stat -c '%U %a' /home/student/course/.git /home/student/notebooks && "
                     "sudo -n stat -c '%U:%G %a' /etc/jupyter/jupyter_server_config.py && "
                     "sudo -n grep -c 'c.ServerApp.port = 8800' /etc/jupyter/jupyter_server_config.py && "
                     "dpkg-query -W -f='${Package} ' git python3-venv curl")
    lines = probe.stdout.split("\n")
    assert lines[:5] == ["1.17.0", "student 755", "student 755", "root:student 640", "1"], probe.stdout
    assert set(lines[5].split()) == {"git", "python3-venv", "curl"}, probe.stdout

    again = peer.run_pyinfra(command, inventory)
    assert peer.pyinfra_ok(again, changed=False), again["totals"]
    assert again["totals"]["success"] == 0 and again["totals"]["no_change"] > 10, again["totals"]


def test_a_changed_file_is_the_one_change_reported(lab):
    host, command, inventory = lab
    host.run("sudo -n sed -i 's/port = 8800/port = 9999/' /etc/jupyter/jupyter_server_config.py")
    run = peer.run_pyinfra(command, inventory)
    assert not peer.pyinfra_ok(run, changed=False)
    assert run["rc"] == 0 and run["totals"]["changed_ops"] == ["jupyter config"], run["totals"]
    assert host.run("sudo -n grep -c 'port = 8800' /etc/jupyter/jupyter_server_config.py").stdout.strip() == "1"
