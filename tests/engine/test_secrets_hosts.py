"""Secrets on a real host: a sudo password, a Jupyter password (argon2 hash) and a token are
never in the run's output, diffs, JSON reports, state files (other than the 0600 secret store),
nor in any process's arguments on the host while a run is in progress."""
from __future__ import annotations

import subprocess
import threading

import pytest
import requests

from fleet.testhosts import hosts as testhosts
from tests.fixtures import fleet, sh
from tests.jupyter_ws import ssh_tunnel

pytestmark = pytest.mark.hosts

SUDO_PASSWORD = "sudo-Pa55-9f3k2"
JUPYTER_PASSWORD = "jupyter-Pa55-7x1q8"


class HostProcessWatcher:
    """Polls `ps` on the host over a root login while a run goes on; keeps every command line."""

    def __init__(self, host) -> None:
        self.host, self.lines, self.stop = host, set(), threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        argv = self.host.ssh_command("while true; do ps -eo args; sleep 0.05; done")
        argv[-2] = f"root@{self.host.address}"
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        while not self.stop.is_set():
            line = proc.stdout.readline()
            if not line:
                break
            self.lines.add(line.rstrip())
        proc.kill()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def teacher_host(hosts_factory, tmp_path_factory):
    (host,) = hosts_factory(1)
    # A login whose sudo asks for a password, as on some university machines.
    sh(host, f"useradd -m -s /bin/bash teacher && echo 'teacher:{SUDO_PASSWORD}' | chpasswd && "
             "echo 'teacher ALL=(ALL) ALL' > /etc/sudoers.d/teacher && chmod 0440 /etc/sudoers.d/teacher && "
             "mkdir -p ~teacher/.ssh && cp ~ubuntu/.ssh/authorized_keys ~teacher/.ssh/ && chown -R teacher: ~teacher/.ssh")
    state = tmp_path_factory.mktemp("state")
    inventory = state / "secret.yml"
    testhosts.write_inventory([host], inventory, vars={"roles": ["jupyter"], "jupyter_auth": "password",
                                                       "jupyter_password": JUPYTER_PASSWORD})
    inventory.write_text(inventory.read_text().replace("user: ubuntu", "user: teacher"))
    yield host, state, inventory
    testhosts.teardown([host])


def test_no_secret_leaks_anywhere(teacher_host):
    host, state, inventory = teacher_host
    env = {"FLEET_SUDO_PASSWORD": SUDO_PASSWORD}
    outputs = []
    without = fleet("provision", state=state, inventory=inventory)
    assert without.rc == 2 and "password is required" in without.output  # sudo -n refuses: we must ask
    outputs.append(without.output)
    with HostProcessWatcher(host) as watcher:
        first = fleet("provision", "--sudo-password", "--diff", "--verbose", state=state, inventory=inventory, env=env)
    assert first.rc == 0, first.output
    outputs.append(first.output)
    hashed = sh(host, "grep hashed_password /etc/jupyter/jupyter_server_config.py").stdout.split('"')[1]
    assert hashed.startswith("argon2:$argon2id$")
    # Token mode next: the token changes the config, and --diff must not show it either.
    with HostProcessWatcher(host) as watcher2:
        token_run = fleet("provision", "--sudo-password", "--diff", "--set", "jupyter_auth=token",
                          state=state, inventory=inventory, env=env)
    assert token_run.rc == 0, token_run.output
    outputs.append(token_run.output)
    config = sh(host, "cat /etc/jupyter/jupyter_server_config.py").stdout
    token = config.split("IdentityProvider.token = \"")[1].split('"')[0]
    assert len(token) == 48
    check = fleet("check", "--diff", state=state, inventory=inventory, env=env)
    outputs.append(check.output)
    outputs.append(fleet("vars", "--host", host.name, state=state, inventory=inventory).output)
    reports = [p.read_text() for p in state.glob("report-*.json")]
    state_files = [p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()
                   and "secrets" not in p.parts and not p.name.startswith("report-") and p != inventory]
    secrets = {"sudo password": SUDO_PASSWORD, "jupyter password": JUPYTER_PASSWORD, "hash": hashed.split("$")[-1],
               "token": token}
    for name, secret in secrets.items():
        for text in outputs + reports + state_files:
            assert secret not in text, f"{name} leaked"
        for line in watcher.lines | watcher2.lines:
            assert secret not in line, f"{name} in a process's arguments on the host: {line}"
    assert any("bash -s" in line for line in watcher.lines | watcher2.lines)  # the watcher did see the run
    for path in (state / "secrets").glob("*"):
        assert path.stat().st_mode & 0o777 == 0o600


def test_password_login_works_and_the_token_is_refused_without_it(teacher_host):
    host, state, inventory = teacher_host
    env = {"FLEET_SUDO_PASSWORD": SUDO_PASSWORD}
    run = fleet("provision", "--sudo-password", state=state, inventory=inventory, env=env)
    assert run.rc == 0, run.output
    with ssh_tunnel(host, 8888) as port:
        base = f"http://127.0.0.1:{port}"
        session = requests.Session()
        assert session.get(base + "/api/status", timeout=30).status_code == 403
        session.get(base + "/login", timeout=30)
        xsrf = session.cookies.get("_xsrf")
        bad = session.post(base + "/login", data={"password": "wrong", "_xsrf": xsrf}, allow_redirects=False, timeout=30)
        assert bad.status_code != 302
        good = session.post(base + "/login", data={"password": JUPYTER_PASSWORD, "_xsrf": xsrf},
                            allow_redirects=False, timeout=30)
        assert good.status_code == 302, good.text[:300]
        assert session.get(base + "/api/status", timeout=30).status_code == 200
