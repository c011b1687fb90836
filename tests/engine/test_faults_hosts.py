"""Faults on real hosts: a host down before the run, power cut and SSH cut in the middle of
applying, the dpkg lock held, Ctrl-C on the controller, --max-fail, host keys, and shell
metacharacters in knob values. Each run must leave every host convergent on the next run."""
from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from fleet.testhosts import hosts as testhosts
from tests.fixtures import fleet, sh, start_fleet, wait_for

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def lab(three_hosts, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    inventory = state / "faults.yml"
    testhosts.write_inventory(three_hosts, inventory, vars={"roles": ["faults"], "faults_version": "1"})
    first = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert first.rc == 0, first.output
    return three_hosts, state, inventory


def set_vars(inventory, **values) -> None:
    data = yaml.safe_load(inventory.read_text())
    data["vars"].update(values)
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))


def provision(lab, *args):
    _, state, inventory = lab
    return fleet("provision", *args, state=state, inventory=inventory, roles_path=True)


def restarts(host) -> list[str]:
    return sh(host, "cat /srv/faults/restarts 2>/dev/null || true").stdout.split()


def assert_whole_config(host, versions: tuple[str, ...]) -> None:
    """The config is one complete version, never a mix or a truncation; no temp file is left."""
    text = sh(host, "cat /srv/faults/config").stdout
    assert any(text == f"version = {v}\n" + "x" * 200_000 + "\n" for v in versions), text[:40]


def converge_all(lab, version: str) -> dict:
    hosts, _, _ = lab
    run = provision(lab)
    assert run.rc == 0, run.output
    for host in hosts:
        assert_whole_config(host, (version,))
        assert sh(host, "ls -a /srv/faults | grep -c '^.fleet-tmp' || true").stdout.strip() == "0"
    again = provision(lab)
    assert again.rc == 0 and all(h["status"] == "ok" for h in again.report["hosts"].values()), again.output
    return run.report


def test_host_down_before_the_run_then_at_failed(lab):
    hosts, state, inventory = lab
    down = hosts[2]
    set_vars(inventory, faults_version="2")
    testhosts.power_cut(down)
    try:
        run = provision(lab, "--connect-timeout", "3")
        assert run.rc == 3, run.output  # 3: unreachable hosts
        assert run.report["hosts"][down.name]["status"] == "unreachable"
        assert "cannot connect" in run.report["hosts"][down.name]["error"]
        assert [run.report["hosts"][h.name]["status"] for h in hosts[:2]] == ["changed", "changed"]
    finally:
        testhosts.boot_again(down)
    retry = provision(lab, "--hosts", "@failed")
    assert retry.rc == 0, retry.output
    assert list(retry.report["hosts"]) == [down.name]
    assert retry.report["hosts"][down.name]["status"] == "changed"


@pytest.mark.parametrize("cut", ["power", "ssh"])
def test_cut_in_the_middle_of_applying(lab, cut):
    hosts, state, inventory = lab
    victim = hosts[0]
    version = f"cut-{cut}"
    set_vars(inventory, faults_version=version, faults_sleep=8)
    for h in hosts:
        sh(h, "rm -f /srv/faults/slow-started")
    proc, report = start_fleet("provision", state=state, inventory=inventory)
    wait_for(lambda: sh(victim, "test -e /srv/faults/slow-started", check=False).returncode == 0, timeout=120)
    if cut == "power":
        testhosts.power_cut(victim)
    else:
        sh(victim, "pkill -KILL -f 'sshd: ubuntu'", check=False)
    output, _ = proc.communicate(timeout=300)
    result = json.loads(report.read_text())
    assert proc.returncode == 3, output
    assert result["hosts"][victim.name]["status"] == "unreachable"
    assert [result["hosts"][h.name]["status"] for h in hosts[1:]] == ["changed", "changed"]
    if cut == "power":
        testhosts.boot_again(victim)
    # The config was replaced atomically before the cut; its handler is still pending.
    assert_whole_config(victim, (version,))
    assert version not in restarts(victim)
    report_after = converge_all(lab, version)
    assert report_after["hosts"][victim.name]["handlers"] == ["record restart"]
    assert restarts(victim).count(version) == 1
    set_vars(inventory, faults_sleep=0)


def test_dpkg_lock_held_fails_with_the_holder_then_proceeds_once_free(lab):
    hosts, _, inventory = lab
    h = hosts[1]
    hold = ("systemd-run --unit=hold-dpkg-lock python3 -c \"import fcntl, time; f = open('/var/lib/dpkg/lock-frontend', 'w'); "
            "fcntl.lockf(f, fcntl.LOCK_EX); time.sleep({})\"")
    sh(h, "apt-get remove -y -q tree >/dev/null 2>&1 || true")
    sh(h, hold.format(60))
    time.sleep(1)
    run = provision(lab, "--hosts", h.name, "--set", "faults_package=tree", "--set", "apt_lock_timeout=3")
    assert run.rc == 2, run.output
    apt = next(s for s in run.report["hosts"][h.name]["steps"] if s["name"] == "apt tree")
    assert apt["status"] == "failed"
    assert "held by process" in apt["output"] and "python3" in apt["output"], apt
    sh(h, "systemctl stop hold-dpkg-lock")
    sh(h, hold.format(6))
    time.sleep(1)
    run = provision(lab, "--hosts", h.name, "--set", "faults_package=tree", "--set", "apt_lock_timeout=60")
    assert run.rc == 0, run.output
    assert sh(h, "dpkg-query -W -f='${Status}' tree").stdout == "install ok installed"


def test_ctrl_c_stops_new_hosts_and_next_run_converges(lab):
    hosts, state, inventory = lab
    set_vars(inventory, faults_version="sigint", faults_sleep=4)
    for h in hosts:
        sh(h, "rm -f /srv/faults/slow-started")
    proc, report = start_fleet("provision", "--parallel", "1", state=state, inventory=inventory)
    wait_for(lambda: sh(hosts[0], "test -e /srv/faults/slow-started", check=False).returncode == 0, timeout=120)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    result = json.loads(report.read_text())
    assert result["hosts"][hosts[0].name]["status"] == "changed"   # the running script was let finish
    assert {result["hosts"][h.name]["status"] for h in hosts[1:]} == {"skipped"}
    assert "interrupted by Ctrl-C" in output and "Recap" in output
    set_vars(inventory, faults_sleep=0)
    converge_all(lab, "sigint")


def test_max_fail_stops_starting_hosts(lab):
    hosts, _, inventory = lab
    set_vars(inventory, faults_version="maxfail")
    data = yaml.safe_load(inventory.read_text())
    data["hosts"] = {"dead1": {"address": "127.0.0.1", "port": 1, "user": "ubuntu"},
                     "dead2": {"address": "127.0.0.1", "port": 1, "user": "ubuntu"}} | data["hosts"]
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        run = provision(lab, "--parallel", "1", "--max-fail", "1")
        assert run.rc == 2, run.output
        statuses = {name: h["status"] for name, h in run.report["hosts"].items()}
        assert statuses == {"dead1": "unreachable", "dead2": "unreachable",
                            **{h.name: "skipped" for h in hosts}}
        assert "--max-fail 1 exceeded" in run.output
        percent = provision(lab, "--parallel", "1", "--max-fail", "50%")
        assert {h["status"] for h in percent.report["hosts"].values()} >= {"unreachable"}
        assert percent.report["hosts"][hosts[0].name]["status"] == "changed"  # 2 of 5 is not over 50 %
    finally:
        del data["hosts"]["dead1"], data["hosts"]["dead2"]
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    converge_all(lab, "maxfail")


def test_changed_host_key_is_refused(lab):
    hosts, state, inventory = lab
    h = hosts[2]
    known = (state / "known_hosts").read_text()
    assert h.address in known  # recorded on first contact (trust on first use)
    sh(h, "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -A && systemctl restart ssh")
    # A rebuilt machine has none of the old sessions: the connection kept open to the old one
    # (whose key was checked) is closed, so the next run meets the new key.
    assert fleet("disconnect", state=state).rc == 0
    run = provision(lab, "--hosts", h.name)
    assert run.rc == 3, run.output
    assert "host key" in run.report["hosts"][h.name]["error"] and "changed" in run.report["hosts"][h.name]["error"]
    assert "Refusing to connect" in run.output
    throwaway = provision(lab, "--hosts", h.name, "--insecure-host-keys")
    assert throwaway.rc == 0, throwaway.output
    assert (state / "known_hosts").read_text() == known  # the insecure run recorded nothing


def test_shell_metacharacters_in_knobs_are_data_not_code(lab):
    hosts, _, _ = lab
    h = hosts[0]
    label = "$(touch /tmp/pwned-1); `touch /tmp/pwned-2` 'quote\" && touch /tmp/pwned-3"
    run = provision(lab, "--hosts", h.name, "--set", "faults_label=" + json.dumps(label))
    assert run.rc == 0, run.output
    assert sh(h, "ls /tmp/pwned-* 2>/dev/null | wc -l").stdout.strip() == "0"
    import shlex

    content = sh(h, "cat " + shlex.quote(f"/srv/faults/label {label}/content")).stdout
    assert content == label + "\n"
