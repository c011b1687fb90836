"""The roster: who has which machine, checked with the inventory before any host is touched.
Public keys are checked against OpenSSH itself (`ssh-keygen -l` is the oracle)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.errors import InputError
from fleet.inventory import files, roster
from tests.fixtures import fleet

HOSTS = {"h1": {"address": "10.0.0.1"}, "h2": {"address": "10.0.0.2"}, "h3": {"address": "10.0.0.3"}}


def make_key(tmp_path: Path, name: str = "k", kind: str = "ed25519") -> str:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@laptop", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return (tmp_path / f"{name}.pub").read_text().strip()


def inventory(tmp_path: Path, roster_csv: str | None = None, **top) -> Path:
    path = tmp_path / "course.yml"
    path.write_text(yaml.safe_dump({"name": "course", "vars": {"roles": ["jupyter"]}, "hosts": HOSTS, **top}))
    if roster_csv is not None:
        (tmp_path / "course.roster.csv").write_text(roster_csv)
    return path


def test_students_take_their_machines_and_the_rest_go_in_slot_order(tmp_path):
    key = make_key(tmp_path)
    inv = files.load(inventory(tmp_path, "student,email,ssh_key,host\n"
                                         "# a comment line\n"
                                         "alice,alice@uni.example,,h2\n"
                                         f"bob,,{key},\n"))
    got = {h: (s.name, s.email, s.ssh_key, s.named) for h, s in inv.students.items()}
    assert got == {"h1": ("bob", "", " ".join(key.split()[:2]), True),
                   "h2": ("alice", "alice@uni.example", "", True),
                   "h3": ("h3", "", "", False)}   # nobody takes h3: a placeholder named after it
    assert inv.students["h2"].where.endswith("course.roster.csv:3")


def test_the_roster_may_be_inline_or_a_yaml_file_named_by_the_inventory(tmp_path):
    inline = files.load(inventory(tmp_path, roster=[{"student": "carol", "host": "h3"}]))
    assert inline.students["h3"].name == "carol" and inline.students["h1"].name == "h1"
    (tmp_path / "class.yml").write_text(yaml.safe_dump([{"student": "dan"}, {"student": "erin", "host": "h1"}]))
    named = files.load(inventory(tmp_path, roster="class.yml"))
    assert [s.name for s in named.students.values()] == ["erin", "dan", "h3"]


def test_an_ansible_inventory_finds_its_roster_beside_it(tmp_path):
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"a1": {"ansible_host": "10.0.0.9"}}}}))
    (tmp_path / "lab.roster.yml").write_text("- {student: fay}\n")
    assert files.load(path).students["a1"].name == "fay"


BAD = [
    # (roster CSV, what the message says, where)
    ("student,host\nalice,h1\nalice,h2\n", "student 'alice' is listed twice (first at", ":3: student"),
    ("student,host\nalice,h1\nbob,h1\n", "machine 'h1' is claimed by 'alice'", ":3: host"),
    ("student\na\nb\nc\nd\n", "student 'd' has no machine: the roster names more students than the inventory has hosts (3)",
     ":5: student"),
    ("student,host\nalice,h9\n", "no host 'h9' in the inventory (hosts: h1, h2, h3)", ":2: host"),
    ("student,ssh_key\nalice,ssh-ed25519 notbase64!\n", "the ssh-ed25519 key's data is not valid base64", ":2: ssh_key"),
    ("student,ssh_key\nalice,hello\n", "expected an OpenSSH public key", ":2: ssh_key"),
    ("student,ssh_key\nalice,command=\"x\" ssh-ed25519 AAAA\n", "expected an OpenSSH public key", ":2: ssh_key"),
    ("student\n../etc\n", "expected a name of letters, digits", ":2: student"),
    ("student,email\nalice,not-an-email\n", "expected an email address, got 'not-an-email'", ":2: email"),
    ("name,host\nalice,h1\n", "expected a header row with the columns student, email, ssh_key, host", ":1"),
    ("student\nalice,h1\n", "expected at most 1 columns (student), got 2", ":2"),
]


@pytest.mark.parametrize("text,message,where", BAD, ids=[b[1][:40] for b in BAD])
def test_a_bad_roster_is_refused_naming_the_file_line_and_field(tmp_path, text, message, where):
    with pytest.raises(InputError) as caught:
        files.load(inventory(tmp_path, text))
    assert message in str(caught.value)
    assert f"course.roster.csv{where}" in str(caught.value)


def test_a_key_of_one_type_claiming_another_is_refused(tmp_path):
    rsa = make_key(tmp_path, "r", "rsa").split()
    with pytest.raises(ValueError, match="the key says ssh-ed25519 but its data is a ssh-rsa key"):
        roster.public_key(f"ssh-ed25519 {rsa[1]}")


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_every_key_openssh_makes_is_accepted(tmp_path, kind):
    line = make_key(tmp_path, kind, kind)
    assert roster.public_key(line) == " ".join(line.split()[:2])


def test_a_wrong_roster_stops_provision_before_any_host_is_touched(tmp_path):
    path = inventory(tmp_path, "student,host\nalice,h1\nbob,h1\n")
    run = fleet("provision", state=tmp_path / "state", inventory=path)
    assert run.rc == 1, run.output
    assert "machine 'h1' is claimed by 'alice'" in run.output and "Traceback" not in run.output
    assert not (tmp_path / "state" / "known_hosts").exists()   # no connection was opened


def test_the_course_user_may_not_be_the_admin_login(tmp_path):
    data = {"name": "course", "vars": {"roles": ["jupyter"], "course_user": "ubuntu"},
            "hosts": {"h1": {"address": "10.0.0.1", "user": "ubuntu"}}}
    path = tmp_path / "course.yml"
    path.write_text(yaml.safe_dump(data))
    run = fleet("provision", state=tmp_path / "state", inventory=path)
    assert run.rc == 1, run.output
    assert "course.yml: vars: course_user: the course user 'ubuntu' is also the SSH login Fleet uses on host h1" \
        in run.output.replace("\n", " ").replace("  ", " "), run.output


def test_students_shows_who_has_which_machine_and_how_they_log_in(tmp_path):
    key = make_key(tmp_path)
    path = inventory(tmp_path, f"student,ssh_key,host\nalice,,h2\nbob,{key},h1\n")
    run = fleet("students", state=tmp_path / "state", inventory=path)
    assert run.rc == 0, run.output
    lines = {line.split()[0]: line for line in run.output.splitlines() if line.strip()[:2] in ("al", "bo", "h3")}
    assert "h2" in lines["alice"] and "students/course/alice" in lines["alice"] and "tunnel to Jupyter" in lines["alice"]
    assert "own key (roster)" in lines["bob"]
    assert "(placeholder)" in lines["h3"]
