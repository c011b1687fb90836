"""`tunnel` and `handout` through the real CLI: the ssh command they print is what OpenSSH
itself parses (`ssh -G` is the oracle), inventory values cannot become ssh options, the local
port is checked, and the handout file cannot be redirected through a planted link."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures import fleet


def course(tmp_path: Path, **host) -> Path:
    data = {"name": "lab", "vars": {"roles": ["jupyter"], "jupyter_port": 8890},
            "hosts": {"h1": {"address": "127.0.0.1", "user": "ubuntu", "port": 1, **host}}}
    path = tmp_path / "course.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def ssh_config(command: str, cwd: Path | None = None) -> dict[str, str]:
    """What OpenSSH makes of a printed command line (-G: parse, print, connect to nothing)."""
    argv = shlex.split(command)
    assert argv[0] == "ssh"
    out = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL, cwd=cwd).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():   # the first of a repeated option (identityfile: -i, then defaults)
        if " " in line:
            name, value = line.split(" ", 1)
            config.setdefault(name, value)
    return config


def test_the_printed_tunnel_is_what_ssh_parses(tmp_path):
    run = fleet("tunnel", "--host", "h1", "--local-port", "9000", state=tmp_path / "state", inventory=course(tmp_path))
    assert run.rc == 0, run.output
    command, url = run.output.strip().splitlines()[-2:]
    config = ssh_config(command)
    # The student's login and key, never the admin's (`user: ubuntu` and its key in the inventory).
    assert (config["hostname"], config["user"], config["port"]) == ("127.0.0.1", "student", "1")
    assert config["identityfile"] == str(tmp_path / "state" / "students" / "lab" / "h1")
    assert config["localforward"] == "9000 [localhost]:8890"
    assert url.startswith("http://localhost:9000/lab?token=")


HOSTILE = [
    # (inventory field, value, expected in the message)
    ("address", "-oProxyCommand=touch PWNED", "hosts.h1.address: expected a host name or an IP address"),
    ("address", "-F/dev/null", "hosts.h1.address: expected a host name or an IP address"),
    ("address", "127.0.0.1 -oProxyCommand=x", "hosts.h1.address: expected a host name or an IP address"),
    ("user", "-oProxyCommand=touch PWNED", "hosts.h1.user: expected a user name"),
    ("user", "a@b", "hosts.h1.user: expected a user name"),
]


@pytest.mark.parametrize("field,value,message", HOSTILE, ids=[f"{c[0]} {c[1]}" for c in HOSTILE])
@pytest.mark.parametrize("command", ["tunnel", "handout"])
def test_an_inventory_value_never_reaches_ssh_as_an_option(tmp_path, field, value, message, command):
    args = ["--host", "h1", "--open"] if command == "tunnel" else ["--format", "csv"]
    run = fleet(command, *args, state=tmp_path / "state", inventory=course(tmp_path, **{field: value}))
    assert run.rc == 1, run.output
    assert f"course.yml: {message}" in run.output, run.output
    assert "Traceback" not in run.output and "token=" not in run.output
    assert not list(Path(".").glob("PWNED")) and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", "80.5"])
def test_the_local_port_is_checked(tmp_path, port):
    run = fleet("tunnel", "--host", "h1", "--local-port", port, state=tmp_path / "state", inventory=course(tmp_path))
    assert run.rc == 1, run.output
    assert f"--local-port: expected a port number from 1 to 65535, got {port!r}" in run.output
    assert "Traceback" not in run.output and "token=" not in run.output


def test_the_handout_file_is_private_and_a_planted_link_cannot_redirect_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "handout.csv"
    for name in (".handout.csv.tmp", ".handout.csv.tmp.0"):   # the temp names a guesser would plant
        (tmp_path / name).symlink_to(victim)
    run = fleet("handout", "--format", "csv", "--output", str(out), state=tmp_path / "state",
                inventory=course(tmp_path))
    assert run.rc == 0, run.output
    assert victim.read_text() == "keep me\n"
    assert not out.is_symlink() and (out.stat().st_mode & 0o777) == 0o600
    rows = out.read_text().splitlines()
    assert rows[0] == "student,email,host,address,login,tunnel,url" and "token=" in rows[1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".handout")) == \
        [".handout.csv.tmp", ".handout.csv.tmp.0"]   # no temp file of ours left behind


def test_each_student_bundle_holds_only_that_students_credentials(tmp_path):
    data = {"name": "lab", "vars": {"roles": ["jupyter"]}, "roster": [{"student": "alice"}, {"student": "bob"}],
            "hosts": {"h1": {"address": "10.0.0.1", "user": "ubuntu"}, "h2": {"address": "10.0.0.2", "user": "ubuntu"}}}
    inventory = tmp_path / "course.yml"
    inventory.write_text(yaml.safe_dump(data))
    state, out = tmp_path / "state", tmp_path / "bundles"
    run = fleet("handout", "--bundle", str(out), state=state, inventory=inventory)
    assert run.rc == 0, run.output
    assert sorted(p.name for p in out.iterdir()) == ["alice", "bob"]
    csv_run = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    rows = {line.split(",")[0]: line for line in csv_run.output.splitlines()[1:]}
    for student, address in (("alice", "10.0.0.1"), ("bob", "10.0.0.2")):
        folder = out / student
        assert (folder.stat().st_mode & 0o077) == 0
        key = folder / "id_ed25519"
        assert (key.stat().st_mode & 0o777) == 0o600
        # The bundled key is the student's: its public half is what provision authorises (ssh-keygen -y).
        public = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True).stdout
        assert public.split()[:2] == _authorised(state, inventory, student)
        command = (folder / "tunnel.sh").read_text().splitlines()[-1].removeprefix("exec ")
        config = ssh_config(command, cwd=folder)   # as tunnel.sh runs it, from its folder
        assert (config["hostname"], config["user"], config["identityfile"]) == (address, "student", "id_ed25519")
        assert "%~dp0id_ed25519" in (folder / "tunnel.cmd").read_text()
        token = (folder / "url.txt").read_text().strip().split("token=")[1]
        assert token in rows[student]
        other = [r for s, r in rows.items() if s != student][0].split("token=")[1]
        everything = b"".join(p.read_bytes() for p in folder.iterdir())
        assert other.encode() not in everything and b"ubuntu" not in everything


def _authorised(state: Path, inventory: Path, student: str) -> list[str]:
    """The public key provision would authorise for this student (the jupyter role's key line)."""
    import os

    from fleet import app

    os.environ["FLEET_STATE_DIR"] = str(state)
    try:
        session = app.Session.open(str(inventory))
        host = next(h for h, s in session.inventory.students.items() if s.name == student)
        return session.values(host)["student_key"].split()[:2]
    finally:
        del os.environ["FLEET_STATE_DIR"]
