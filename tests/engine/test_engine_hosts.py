"""The engine on 3 real Debian hosts: a role using every step kind converges; a second run
changes nothing with one command per host on the connection the SSH keeper kept open (or one
login per host with keeping off); a kept connection that died is replaced; drift on one host
is reported by `invoke check` for that host alone, then repaired."""
from __future__ import annotations

import pytest

from fleet.testhosts import hosts as testhosts
from tests.fixtures import as_root, changed_steps, fleet, git_server, sh, sshd_logins  # noqa: F401 (fixture)

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def lab(three_hosts, git_server, tmp_path_factory):  # noqa: F811
    state = tmp_path_factory.mktemp("state")
    inventory = state / "inventory.yml"
    testhosts.write_inventory(three_hosts, inventory, vars={"roles": ["allsteps"],
                                                           "allsteps_repo": git_server.url("course.git")})
    first = fleet("provision", state=state, inventory=inventory, roles_path=True)
    return three_hosts, state, inventory, first


def test_first_run_converges_every_host(lab):
    hosts, _, _, first = lab
    assert first.rc == 0, first.output
    for host in hosts:
        result = first.report["hosts"][host.name]
        assert result["status"] == "changed"
        assert {s["status"] for s in result["steps"]} <= {"changed", "ok"}
        # The service was started fresh after its files were written: no restart on top.
        assert result["handlers"] == []
        assert all(v["ok"] for v in result["verifies"])
    # The effects are real: checked on the hosts themselves, not through the tool.
    h = hosts[0]
    assert sh(h, "dpkg-query -W -f='${Status}' tree").stdout == "install ok installed"
    assert sh(h, "/opt/allsteps/bin/python -c 'import six; print(six.__version__)'").stdout.strip() == "1.16.0"
    assert sh(h, "stat -c '%U %a' /srv/allsteps").stdout.strip() == "student 755"
    assert f"# allsteps on {h.name}" in sh(h, "cat /srv/allsteps/allsteps.conf").stdout
    assert sh(h, "cat /srv/allsteps/env").stdout == "COURSE=allsteps\n"
    assert sh(h, "systemctl is-active allsteps; systemctl is-enabled allsteps").stdout.split() == ["active", "enabled"]
    assert sh(h, "sudo -u student git -C /home/student/course log --format=%s").stdout.strip() == "week 1"
    assert sh(h, "stat -c %U /home/student/course/README.md").stdout.strip() == "student"
    assert sh(h, "cat /srv/allsteps/built").stdout == "built\n"


def test_second_run_changes_nothing_with_one_command_on_the_kept_connection(lab):
    hosts, state, inventory, first = lab
    assert all(first.report["hosts"][h.name]["connections"] == 1 for h in hosts)   # the first run logged in
    logins_before = {h.name: sshd_logins(h) for h in hosts}
    again = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert again.rc == 0, again.output
    for host in hosts:
        result = again.report["hosts"][host.name]
        assert result["status"] == "ok", result
        assert changed_steps(again.report, host.name) == []
        assert result["handlers"] == []
        assert result["connections"] == 0 and result["commands"] == 1
        # Counted on the host too: no new login during the run.
        assert sshd_logins(host) == logins_before[host.name]


def test_without_keeping_each_run_logs_in_once_per_host(lab):
    hosts, state, inventory, _ = lab
    logins_before = {h.name: sshd_logins(h) for h in hosts}
    run = fleet("provision", state=state, inventory=inventory, roles_path=True, env={"FLEET_SSH_PERSIST": "0"})
    assert run.rc == 0, run.output
    for host in hosts:
        result = run.report["hosts"][host.name]
        assert result["status"] == "ok" and result["connections"] == 1 and result["commands"] == 1, result
        assert sshd_logins(host) - logins_before[host.name] == 1


def test_a_kept_connection_that_died_is_replaced(lab):
    hosts, state, inventory, _ = lab
    victim = hosts[0]
    as_root(victim, "pkill -KILL -f '^sshd: [u]buntu' || true")   # as a reboot or a network change would
    run = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    assert {h.name: run.report["hosts"][h.name]["connections"] for h in hosts} == {
        victim.name: 1, hosts[1].name: 0, hosts[2].name: 0}
    assert all(run.report["hosts"][h.name]["status"] == "ok" for h in hosts)


def test_disconnect_closes_the_kept_connections(lab):
    hosts, state, inventory, _ = lab
    closed = fleet("disconnect", state=state)
    assert closed.rc == 0 and "closed 3 kept SSH connections" in closed.output, closed.output
    assert "no SSH connections are kept" in fleet("disconnect", state=state).output
    run = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    assert all(run.report["hosts"][h.name]["connections"] == 1 for h in hosts)


def test_drift_on_one_host_is_reported_by_check_and_repaired(lab):
    hosts, state, inventory, _ = lab
    drifted = hosts[1]
    sh(drifted, "echo tampered >> /srv/allsteps/allsteps.conf && systemctl stop allsteps && "
                "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q tree >/dev/null")
    check = fleet("check", state=state, inventory=inventory, roles_path=True)
    assert check.rc == 4, check.output  # 4: drift found
    for host in hosts:
        expected = "drift" if host is drifted else "ok"
        assert check.report["hosts"][host.name]["status"] == expected
    assert sorted(changed_steps(check.report, drifted.name)) == sorted([
        "apt tree", "template allsteps.conf.j2 -> /srv/allsteps/allsteps.conf", "service allsteps"])
    diff = next(s["diff"] for s in check.report["hosts"][drifted.name]["steps"] if "allsteps.conf" in s["name"])
    assert "-tampered" in diff
    # Check mode changed nothing.
    assert "tampered" in sh(drifted, "cat /srv/allsteps/allsteps.conf").stdout

    repair = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert repair.rc == 0, repair.output
    assert [h for h in repair.report["hosts"] if repair.report["hosts"][h]["status"] == "changed"] == [drifted.name]
    assert "tampered" not in sh(drifted, "cat /srv/allsteps/allsteps.conf").stdout
    assert sh(drifted, "systemctl is-active allsteps").stdout.strip() == "active"
    assert sh(drifted, "dpkg-query -W -f='${Status}' tree").stdout == "install ok installed"
    final = fleet("check", state=state, inventory=inventory, roles_path=True)
    assert final.rc == 0, final.output


def test_a_rerun_probes_before_the_engine_loads_and_still_sees_drift(lab):
    """fleet.engine.speculation: the same command line sends last run's probe through the keeper
    first; the answer is used, and it is today's state of the host, not last run's."""
    hosts, state, inventory, _ = lab
    first_check = fleet("check", state=state, inventory=inventory, roles_path=True)   # remembers check's probe
    assert first_check.rc == 0, first_check.output
    sh(hosts[0], "echo COURSE=changed > /srv/allsteps/env")
    check = fleet("check", state=state, inventory=inventory, roles_path=True)
    assert check.rc == 4, check.output
    assert all(check.report["hosts"][h.name]["early_probe"] for h in hosts)
    assert [h for h, r in check.report["hosts"].items() if r["status"] == "drift"] == [hosts[0].name]
    repair = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert repair.rc == 0 and all(repair.report["hosts"][h.name]["early_probe"] for h in hosts), repair.output
    assert sh(hosts[0], "cat /srv/allsteps/env").stdout == "COURSE=allsteps\n"


def test_an_edited_inventory_is_probed_afresh(lab):
    hosts, state, inventory, _ = lab
    inventory.write_text(inventory.read_text() + "\n# edited\n")
    run = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    assert not any(run.report["hosts"][h.name]["early_probe"] for h in hosts)
    again = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert all(again.report["hosts"][h.name]["early_probe"] for h in hosts)
    assert {r["status"] for r in again.report["hosts"].values()} == {"ok"}
