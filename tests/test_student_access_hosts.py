"""Each student reaches only their own machine, tried on 2 real hosts as a student would: with
their handout row (its key, its login, its URL), a shell through their own Jupyter, and a
classmate's address. The course user has no sudo; the admin login (`ubuntu`, the test key) is
never in a handout."""
from __future__ import annotations

import csv
import io
import shlex
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from fleet.engine.remote import USER_READ_S
from fleet.testhosts import hosts as testhosts
from tests.fixtures import fleet, free_port, git_server, sh, stop, wait_port  # noqa: F401 (fixture)
from tests.jupyter_ws import Jupyter, forwarding

pytestmark = pytest.mark.hosts

# Never a prompt, never a remembered host key: each attempt stands on its key alone.
QUIET = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes"]
PLANTED = "/tmp/planted-code-ran"


@pytest.fixture(scope="module")
def course(hosts_factory, git_server, tmp_path_factory):  # noqa: F811
    a, b = hosts_factory(2)
    state = tmp_path_factory.mktemp("state")
    inventory = state / "course.yml"
    testhosts.write_inventory([a, b], inventory, vars={
        "roles": ["jupyter", "repos"], "course_user": "student",
        "repos_list": [{"url": git_server.url("course.git"), "dest": "course", "ref": "main"}],
    }, groups={"rlab": {"hosts": [a], "vars": {"roles": ["jupyter", "repos", "r_kernel"],
                                                "r_kernel_cran_packages": ["IRkernel"]}}})
    data = yaml.safe_load(inventory.read_text())
    data["roster"] = [{"student": "alice", "host": a.name}, {"student": "bob", "host": b.name}]
    inventory.write_text(yaml.safe_dump(data))
    first = fleet("provision", state=state, inventory=inventory)
    assert first.rc == 0, first.output
    yield a, b, state, inventory
    testhosts.teardown([a, b])


def handout(state: Path, inventory: Path) -> dict[str, dict]:
    run = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    assert run.rc == 0, run.output
    return {row["student"]: row for row in csv.DictReader(io.StringIO(run.output))}


def ssh(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """An ssh command line as given, with QUIET's options put in front of its own."""
    return subprocess.run(["ssh", *QUIET, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@contextmanager
def tunnel(row_tunnel: str, identity: str | None = None) -> Iterator[int]:
    """The handout's tunnel command as printed, on a free local port (only `-L`'s local end changes)."""
    argv = shlex.split(row_tunnel)
    forward = argv.index("-L") + 1
    local = free_port()
    argv[forward] = f"{local}:" + argv[forward].split(":", 1)[1]
    if identity:
        argv[1:1] = ["-i", identity]
    with forwarding(argv, local):
        yield local


def run_cell(row: dict, code: str, identity: str | None = None) -> str:
    token = row["url"].split("token=")[1]
    with tunnel(row["tunnel"], identity) as port:
        client = Jupyter(port, token)
        kernel = client.start_kernel()
        try:
            return client.execute(kernel, code)
        finally:
            client.shutdown(kernel)


def key_of(row: dict) -> str:
    argv = shlex.split(row["tunnel"])
    return argv[argv.index("-i") + 1]


def login(key: str, user: str, address: str, command: str = "id") -> subprocess.CompletedProcess[str]:
    return ssh(["ssh", "-i", key, "--", f"{user}@{address}", command])


def test_alices_row_opens_her_jupyter_and_a_cell_runs_as_the_course_user(course):
    a, _, state, inventory = course
    alice = handout(state, inventory)["alice"]
    assert alice["host"] == a.name and alice["login"] == "student"
    assert "ubuntu" not in alice["tunnel"] and "testkey" not in alice["tunnel"]
    out = run_cell(alice, "import getpass, socket\nprint(getpass.getuser(), socket.gethostname())")
    assert out.split() == ["student", a.name]


def test_alices_key_opens_no_other_login_and_no_other_machine(course):
    a, b, state, inventory = course
    key = key_of(handout(state, inventory)["alice"])
    for address in (a.address, b.address):
        for user in ("student", "ubuntu", "root"):
            if (address, user) == (a.address, "student"):
                continue
            attempt = login(key, user, address)
            assert attempt.returncode == 255 and "Permission denied" in attempt.stderr, (address, user, attempt)
    # Her own login: the key's forced command answers, no command of hers runs, no shell, no root.
    for command in ("id", "sudo -n id", "bash -i"):
        attempt = login(key, "student", a.address, command)
        assert attempt.returncode != 0 and "uid=" not in attempt.stdout, attempt
        assert "opens only the tunnel to your Jupyter" in attempt.stdout
    # Through her own Jupyter she has a shell as the course user, and no way to root.
    out = run_cell(handout(state, inventory)["alice"],
                   "import subprocess\nr = subprocess.run(['sudo', '-n', 'id'], capture_output=True, text=True)\n"
                   "print(r.returncode, 'uid=0' in r.stdout)")
    assert out.split() == ["1", "False"]


def _forward(key: str, address: str, spec: str) -> bytes:
    """Open `-L local:spec` with the key, connect through it, return what comes back (b'' when sshd
    refuses to open the channel)."""
    local = free_port()
    proc = subprocess.Popen(["ssh", *QUIET, "-N", "-i", key, "-L", f"{local}:{spec}", f"student@{address}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port("127.0.0.1", local)
        with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
            conn.settimeout(10)
            try:
                return conn.recv(100)
            except (ConnectionResetError, socket.timeout):
                return b""
    finally:
        stop(proc)


def test_alices_key_tunnels_to_her_jupyter_and_to_nothing_else(course):
    a, b, state, inventory = course
    key = key_of(handout(state, inventory)["alice"])
    assert _forward(key, a.address, "localhost:22") == b""         # her machine's own sshd: refused
    assert _forward(key, a.address, f"{b.address}:22") == b""      # a classmate's machine: refused
    # The same way to her Jupyter's port does open (the control that the refusals above mean something).
    local = free_port()
    proc = subprocess.Popen(["ssh", *QUIET, "-N", "-i", key, "-L", f"{local}:localhost:8888", f"student@{a.address}"],
                            stdin=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", local)
        with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
            conn.sendall(b"GET /api HTTP/1.0\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        stop(proc)
    # A remote forward (her machine reaching back into the network through her) is refused too.
    back = ssh(["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-i", key, "-R", "2222:localhost:22",
                f"student@{a.address}"])
    assert back.returncode == 255 and "forwarding failed" in back.stderr.lower(), back


def test_a_students_bundle_checks_her_machines_key_and_opens_her_login(course, tmp_path):
    a, _, state, inventory = course
    run = fleet("handout", "--bundle", str(tmp_path / "bundles"), "--hosts", a.name, state=state, inventory=inventory)
    assert run.rc == 0, run.output
    folder = tmp_path / "bundles" / "alice"
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "id_ed25519", "known_hosts", "tunnel.cmd",
                                                        "tunnel.sh", "url.txt"]
    argv = shlex.split((folder / "tunnel.sh").read_text().splitlines()[-1].removeprefix("exec "))
    assert argv[1:5] == ["-o", "UserKnownHostsFile=known_hosts", "-o", "StrictHostKeyChecking=yes"]
    # Her ssh, as the bundle runs it, accepts the machine only by the recorded key, then meets her key's limits.
    # The bundle's own options and key, a command in place of the tunnel (-N and -L dropped).
    forward = argv.index("-L")
    login_argv = [a for i, a in enumerate(argv) if a != "-N" and i not in (forward, forward + 1)]
    dest = login_argv.index("--")
    attempt = subprocess.run(["ssh", "-o", "BatchMode=yes", *login_argv[1:dest], "-T", *login_argv[dest:], "true"],
                             cwd=folder, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert attempt.returncode == 1 and "opens only the tunnel to your Jupyter" in attempt.stdout, attempt
    (folder / "known_hosts").write_text("")   # without the recorded key, strict checking refuses the machine
    refused = subprocess.run(["ssh", "-o", "BatchMode=yes", *login_argv[1:dest], "-T", *login_argv[dest:], "true"],
                             cwd=folder, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused


def test_a_key_the_student_plants_in_her_own_home_changes_nothing(course):
    a, _, state, inventory = course
    alice = handout(state, inventory)["alice"]
    public = subprocess.run(["ssh-keygen", "-y", "-f", key_of(alice)], capture_output=True, text=True,
                            check=True).stdout.strip()
    run_cell(alice, "import os\nos.makedirs(os.path.expanduser('~/.ssh'), exist_ok=True)\n"
                    f"open(os.path.expanduser('~/.ssh/authorized_keys'), 'a').write({public + chr(10)!r})")
    assert public in sh(a, "cat /home/student/.ssh/authorized_keys").stdout   # the planting happened
    attempt = login(key_of(alice), "student", a.address, "id")
    assert "uid=" not in attempt.stdout and "opens only the tunnel" in attempt.stdout  # still the restricted key


def test_planted_python_and_r_files_are_never_run_by_root(course):
    a, b, state, inventory = course
    plant = (f"import os; open({PLANTED!r}, 'a').write('json.py as uid %d\\n' % os.getuid())\n"
             "raise ImportError('planted')\n")
    rprofile = f"cat('.Rprofile as', Sys.info()[['user']], '\\n', file = {PLANTED!r}, append = TRUE)\n"
    for host in (a, b):
        for home in ("/home/ubuntu", "/home/student", "/root"):
            sh(host, f"printf %s {shlex.quote(plant)} > {home}/json.py; printf %s {shlex.quote(rprofile)} > {home}/.Rprofile;"
                     f" cp {home}/json.py {home}/sitecustomize.py; rm -f {PLANTED}")
        sh(host, "echo '# drift' >> /etc/jupyter/jupyter_server_config.py")   # a change: provision's apply runs too
    assert "json.py" in sh(a, f"cd /home/ubuntu && python3 -c 'import json' ; cat {PLANTED}", check=False).stdout
    sh(a, f"rm -f {PLANTED}")   # the plant works where Python is not isolated (the control)
    for command in (["provision"], ["check"], ["report", "--output", str(state / "class.html")]):
        run = fleet(*command, state=state, inventory=inventory)
        assert run.rc in (0, 4), run.output
    for host in (a, b):
        # The student's own R and Python (her kernel, her checks) may read her own files: never root's.
        ran = sh(host, f"cat {PLANTED} 2>/dev/null; true").stdout
        assert "uid 0" not in ran and "as root" not in ran, f"{host.name}: {ran}"


def test_reading_a_checkout_as_the_student_is_bounded(course):
    a, b, state, inventory = course
    checkout = "/home/student/notebooks/course"
    # What a student can do in her own checkout: git runs core.fsmonitor on every `git status`.
    sh(a, "printf '#!/bin/sh\\nsleep 99999\\n' > /home/student/.hang && chown student: /home/student/.hang && "
          f"chmod 755 /home/student/.hang && runuser -u student -- git -C {checkout} config core.fsmonitor /home/student/.hang")
    try:
        started = time.monotonic()
        run = fleet("check", state=state, inventory=inventory, timeout=600)
        elapsed = time.monotonic() - started
        assert run.rc == 2, run.output
        steps = {s["name"]: s for s in run.report["hosts"][a.name]["steps"]}
        clone = next(s for name, s in steps.items() if "course" in name and s["status"] == "failed")
        assert f"took over {USER_READ_S} s and was stopped" in clone["message"], clone
        assert run.report["hosts"][b.name]["status"] == "ok"   # the classmate's host is not held
        assert elapsed < 300, elapsed   # seconds, not the 30-minute command timeout
    finally:
        sh(a, f"runuser -u student -- git -C {checkout} config --unset core.fsmonitor; pkill -u student -x sleep; true")


def test_a_removed_student_keeps_nothing_and_an_own_key_works_the_same_way(course, tmp_path):
    a, b, state, inventory = course
    alice_key = key_of(handout(state, inventory)["alice"])
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "carol@laptop", "-f", str(tmp_path / "carol")],
                   check=True, stdin=subprocess.DEVNULL)
    data = yaml.safe_load(inventory.read_text())
    data["roster"] = [{"student": "bob", "host": b.name},
                      {"student": "carol", "host": a.name, "ssh_key": (tmp_path / "carol.pub").read_text().strip()}]
    inventory.write_text(yaml.safe_dump(data))
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output
    # alice's key (which she also planted in ~/.ssh/authorized_keys above) opens nothing anywhere.
    for address in (a.address, b.address):
        attempt = ssh(["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-i", alice_key, "-L", f"{free_port()}:localhost:8888",
                       f"student@{address}"])
        assert attempt.returncode == 255 and "Permission denied" in attempt.stderr, attempt
    carol = handout(state, inventory)["carol"]
    assert "-i" not in shlex.split(carol["tunnel"])   # her own key: the row names none
    out = run_cell(carol, "import getpass, socket\nprint(getpass.getuser(), socket.gethostname())",
                   identity=str(tmp_path / "carol"))
    assert out.split() == ["student", a.name]
    for user, address in (("student", b.address), ("ubuntu", a.address), ("root", a.address)):
        attempt = login(str(tmp_path / "carol"), user, address)
        assert attempt.returncode == 255 and "Permission denied" in attempt.stderr, (user, address, attempt)
    again = fleet("provision", state=state, inventory=inventory)
    assert again.rc == 0 and all(h["status"] == "ok" for h in again.report["hosts"].values()), again.output



def test_planted_python_is_not_run_by_root_during_bake(course, hosts_factory, monkeypatch):
    from fleet.testhosts import layers

    _, _, state, inventory = course
    (builder,) = hosts_factory(1)
    # Only root can write /etc: the plant leaves a mark there if root imports it, and else stays quiet.
    bait = ("import os\nif os.getuid() == 0:\n    open('/etc/planted-code-ran', 'a').write('json.py as root\\n')\n"
            "raise ImportError('planted')\n")
    for home in ("/home/ubuntu", "/root"):
        sh(builder, f"printf %s {shlex.quote(bait)} > {home}/json.py")
    monkeypatch.setenv("FLEET_STATE_DIR", str(state))
    layer = layers.bake_course(inventory, f"test-access-{builder.index}", builder=builder)
    try:
        assert (layer / "home/ubuntu/json.py").exists()             # the plant was there all along
        assert not (layer / "etc/planted-code-ran").exists()        # and root never imported it
    finally:
        layers.remove_layer(layer)
