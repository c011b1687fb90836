"""An Ansible-shaped inventory, written as people write it, provisions 2 real hosts: the user and
the key only at `all`, a wrong port at `all` that the group's port overrides, addresses from a
host_vars/ file, and a key Fleet does not use (listed once under --verbose)."""
from __future__ import annotations

import pytest
import yaml

from tests.fixtures import as_root, fleet, sshd_logins

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def two_hosts(hosts_factory):
    from fleet.testhosts import hosts as testhosts

    hosts = hosts_factory(2)
    yield hosts
    testhosts.teardown(hosts)


def test_connection_settings_at_all_and_group_level_provision_two_hosts(two_hosts, tmp_path):
    first, second = two_hosts
    inventory = tmp_path / "course.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_user": first.user, "ansible_ssh_private_key_file": str(first.key),
                 "ansible_port": 2200,  # nothing listens there: only the group's port below reaches the hosts
                 "ansible_python_interpreter": "/usr/bin/python3",
                 "roles": ["faults"], "faults_version": "1", "faults_label": "ansible"},
        "children": {"lab": {"vars": {"ansible_port": first.port},
                             "hosts": {first.name: None, second.name: None}}},
    }}, sort_keys=False))
    (tmp_path / "host_vars").mkdir()
    for host in two_hosts:
        (tmp_path / "host_vars" / f"{host.name}.yml").write_text(f"ansible_host: {host.address}\n")
    state = tmp_path / "state"

    shown = fleet("vars", "--host", first.name, state=state, inventory=inventory, roles_path=True)
    assert shown.rc == 0, shown.output
    assert "connection: user" in shown.output and "all.vars.ansible_user" in shown.output
    assert "all.children.lab.vars.ansible_port" in shown.output
    assert f"host_vars/{first.name}.yml" in shown.output

    before = {host.name: sshd_logins(host) for host in two_hosts}
    run = fleet("provision", "--verbose", state=state, inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    listed = [line for line in run.output.splitlines() if "ansible_python_interpreter" in line]
    assert len(listed) == 1 and listed[0].startswith("inventory keys Fleet does not use:"), run.output
    for host in two_hosts:
        assert run.report["hosts"][host.name]["status"] == "changed"
        # The effect is on the host itself, and the login was the inventory's user.
        assert as_root(host, "cat /srv/faults/after") == "after 1\n"
        assert sshd_logins(host) > before[host.name]

    again = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert again.rc == 0, again.output
    assert {again.report["hosts"][h.name]["status"] for h in two_hosts} == {"ok"}


SUDO_PASSWORD = "become-Pa55-4k9w"


def test_become_password_from_the_inventory_is_the_sudo_password(two_hosts, tmp_path):
    """ansible_become_password at group level: used where sudo asks (a `teacher` login), harmless
    where it does not (`ubuntu`, NOPASSWD), and never shown."""
    from tests.fixtures import sh

    first, second = two_hosts
    sh(second, f"id teacher || (useradd -m -s /bin/bash teacher && echo 'teacher:{SUDO_PASSWORD}' | chpasswd && "
               "echo 'teacher ALL=(ALL) ALL' > /etc/sudoers.d/teacher && chmod 0440 /etc/sudoers.d/teacher && "
               "mkdir -p ~teacher/.ssh && cp ~ubuntu/.ssh/authorized_keys ~teacher/.ssh/ && chown -R teacher: ~teacher/.ssh)")
    inventory = tmp_path / "course.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_user": first.user, "ansible_ssh_private_key_file": str(first.key),
                 "roles": ["faults"], "faults_version": "become", "faults_label": "become"},
        "children": {"lab": {"vars": {"ansible_become_password": SUDO_PASSWORD},
                             "hosts": {first.name: {"ansible_host": first.address},
                                       second.name: {"ansible_host": second.address, "ansible_user": "teacher"}}}},
    }}, sort_keys=False))
    state = tmp_path / "state"
    run = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    for host in two_hosts:
        assert run.report["hosts"][host.name]["status"] == "changed"
        assert as_root(host, "cat /srv/faults/after") == "after become\n"
    shown = fleet("vars", "--host", second.name, state=state, inventory=inventory, roles_path=True)
    assert "connection: sudo_password" in shown.output and "all.children.lab.vars.ansible_become_password" in shown.output
    texts = [run.output, shown.output] + [p.read_text() for p in state.glob("report-*.json")]
    assert all(SUDO_PASSWORD not in text for text in texts)
    assert all("command not found" not in text for text in texts)  # the password never ran as a command
