"""The end of a course on 3 real hosts (booted once for the module): two students' work is
collected (notebooks, a course checkout with local edits, and what a student plants: links to
/etc/shadow and to another user's home, a FIFO, a name with a newline, a sparse file over the
limit), collected again after one edit, restored onto the third host where a cell of a restored
notebook runs, and `terminate` (against moto) refuses until the changed work is collected."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import yaml

from fleet.testhosts import hosts as testhosts
from tests.fixtures import NOTEBOOK, fleet, git_server, sh  # noqa: F401 (fixture)
from tests.jupyter_ws import Jupyter, ssh_tunnel

pytestmark = pytest.mark.hosts

COURSE = "endcourse"
USER = "student"            # the course user, not the login user (ubuntu)
EDIT = "\n# alice's own note\n"


def as_student(host, command: str):
    return sh(host, f"cd / && runuser -u {USER} -- bash -c {shlex.quote(command)}")


def mine(name: str) -> str:
    cells = [dict(NOTEBOOK["cells"][1], source=[f"print('{name} was here', 6 * 7)"])]
    return json.dumps(dict(NOTEBOOK, cells=cells), indent=1)


def listing(root: Path) -> set[str]:
    return {str(Path(folder, name).relative_to(root)) for folder, dirs, files in os.walk(root) for name in dirs + files}


@pytest.fixture(scope="module")
def classroom(hosts_factory, git_server, tmp_path_factory):  # noqa: F811
    hosts = hosts_factory(3)
    state = tmp_path_factory.mktemp("state")
    scratch = tmp_path_factory.mktemp("scratch")      # the controller's side, listed before and after
    (scratch / "decoy").mkdir()
    inventory = state / "course.yml"
    testhosts.write_inventory(hosts, inventory, vars={
        "roles": ["jupyter", "repos"], "course_user": USER,
        "repos_list": [{"url": git_server.url("course.git"), "dest": "course", "ref": "main"}]})
    data = yaml.safe_load(inventory.read_text())
    data["name"] = COURSE
    for host, student in zip(hosts, ("alice", "bob", "carol"), strict=True):
        data["hosts"][host.name]["vars"] = {"student": student}
    inventory.write_text(yaml.safe_dump(data))
    first = fleet("provision", state=state, inventory=inventory)
    assert first.rc == 0, first.output
    alice, bob, fresh = hosts
    for host, name in ((alice, "alice"), (bob, "bob")):
        as_student(host, f"cd ~/notebooks && printf %s {shlex.quote(mine(name))} > mine.ipynb && mkdir -p week2 "
                         f"&& echo 'x = 1' > week2/draft.py && printf %s {shlex.quote(EDIT)} >> course/README.md")
    # what alice plants: links out, a FIFO, a newline in a name, a sparse file over collect_max_mb
    sh(alice, "useradd -m bob && chmod 755 /home/bob && echo 'bob secret' > /home/bob/secret.ipynb "
              "&& chmod 644 /home/bob/secret.ipynb")
    as_student(alice, "cd ~/notebooks && ln -s /etc/shadow shadow && ln -s /home/bob bobs-home && mkfifo pipe "
                      "&& printf 'two lines' > \"$(printf 'two\\nlines.txt')\" && truncate -s 200M huge.bin")
    yield hosts, state, inventory, scratch
    testhosts.teardown(hosts)


def latest(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))[-1]


def test_collect_brings_the_work_and_nothing_else(classroom):
    (alice, bob, _), state, inventory, scratch = classroom
    before = listing(scratch)
    run = fleet("collect", "--hosts", f"{alice.name},{bob.name}", "--to", str(scratch / "collected"),
                state=state, inventory=inventory)
    assert run.rc == 0, run.output
    new = listing(scratch) - before
    assert new and all(p == "collected" or p.startswith("collected/") for p in new), new

    got = latest(scratch / "collected" / "alice") / "files" / "notebooks"
    assert (got / "mine.ipynb").read_text() == mine("alice")
    assert (got / "week2" / "draft.py").read_text() == "x = 1\n"
    readme = (got / "course" / "README.md").read_text()
    assert readme == "# Course\n" + EDIT                   # the checkout with its local edit, byte for byte
    assert (got / "course" / "week1" / "hello.ipynb").exists()
    assert (got / "two\nlines.txt").read_text() == "two lines"
    names = {p.name for p in got.rglob("*")}
    assert not {"shadow", "bobs-home", "secret.ipynb", "pipe", "huge.bin"} & names, names
    everything = b"".join(p.read_bytes() for p in (scratch / "collected").rglob("*") if p.is_file() and not p.is_symlink())
    assert b"bob secret" not in everything and b"root:" not in everything
    assert "skipped notebooks/pipe: FIFO: not collected" in run.output
    assert "skipped notebooks/huge.bin: 209715200 bytes, over collect_max_mb: not collected" in run.output
    assert "skipped notebooks/shadow: link to /etc/shadow: not followed" in run.output
    manifest = json.loads((latest(scratch / "collected" / "alice") / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {"notebooks/mine.ipynb", "notebooks/course/README.md"}
    bobs = latest(scratch / "collected" / "bob") / "files" / "notebooks"
    assert (bobs / "mine.ipynb").read_text() == mine("bob")


def test_a_second_collect_after_one_edit_moves_one_file(classroom):
    (alice, bob, _), state, inventory, scratch = classroom
    as_student(alice, "echo 'x = 2' > ~/notebooks/week2/draft.py")
    run = fleet("collect", "--hosts", f"{alice.name},{bob.name}", "--to", str(scratch / "collected"),
                state=state, inventory=inventory)
    assert run.rc == 0, run.output
    manifest = json.loads((latest(scratch / "collected" / "alice") / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"] if f["sent"]] == ["notebooks/week2/draft.py"]
    assert "1 changed since the last collect" in run.output
    bob_manifest = json.loads((latest(scratch / "collected" / "bob") / "manifest.json").read_text())
    assert bob_manifest["changed"] == 0
    first, second = sorted((scratch / "collected" / "alice").iterdir())[:2]
    assert (first / "files/notebooks/week2/draft.py").read_text() == "x = 1\n"      # the earlier collect is kept
    assert (second / "files/notebooks/week2/draft.py").read_text() == "x = 2\n"


def test_restore_onto_a_fresh_host_and_run_a_restored_cell(classroom):
    (_, _, fresh), state, inventory, scratch = classroom
    run = fleet("restore", "--student", "alice", "--host", fresh.name, "--to", str(scratch / "collected"),
                state=state, inventory=inventory)
    assert run.rc == 0, run.output
    assert f"onto {fresh.name}" in run.output
    owners = sh(fresh, f"stat -c %U /home/{USER}/notebooks/mine.ipynb /home/{USER}/notebooks/week2/draft.py").stdout
    assert owners.split() == [USER, USER]
    handout = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    token = next(line for line in handout.output.splitlines() if f",{fresh.name}," in line).split("token=")[1]
    with ssh_tunnel(fresh, 8888) as port:
        outputs = Jupyter(port, token.strip()).run_notebook("mine.ipynb")
    assert outputs == ["alice was here 42\n"], outputs


def test_the_class_report_shows_student_work_and_last_collect(classroom):
    import re

    (alice, bob, fresh), state, inventory, scratch = classroom
    page = scratch.parent / "class.html"
    run = fleet("report", "--output", str(page), state=state, inventory=inventory)
    assert run.rc == 0, run.output
    html = page.read_text()
    cells = {m.group(1): (m.group(2), m.group(3), m.group(4)) for m in re.finditer(
        r'<tr data-host="([^"]+)">.*?<td class="student">([^<]*)</td>\s*<td class="work small">([^<]*)</td>'
        r'\s*<td class="collected small">([^<]*)</td>', html, re.S)}
    files = int(sh(alice, f"find /home/{USER}/notebooks -type f -printf x | wc -c").stdout)   # a name has a newline
    assert cells[alice.name][0] == "alice" and cells[alice.name][1].startswith(f"{files} files, ")
    assert cells[alice.name][2].endswith(" UTC") and cells[bob.name][2].endswith(" UTC")
    assert cells[fresh.name][0] == "carol" and cells[fresh.name][2] == "never"


def test_terminate_refuses_until_the_changed_work_is_collected(classroom, moto_url, aws, ami, monkeypatch, capsys):  # noqa: F811
    """The fingerprint comes from the real host; the instance it stands for is moto's."""
    from invoke import Exit

    from fleet.aws import cloud
    from fleet import commands

    (alice, _, _), state, inventory, scratch = classroom
    monkeypatch.setenv("FLEET_STATE_DIR", str(state))
    launched = cloud.launch(COURSE, 1, ami=ami, key_dir=state / "keys", cidr="198.51.100.23/32", wait_ssh=False,
                            instance_type="t3.micro")
    data = yaml.safe_load(inventory.read_text())
    data["hosts"] = {alice.name: dict(data["hosts"][alice.name])}
    data["hosts"][alice.name]["vars"]["instance_id"] = launched.instances[0].id
    machines = state / "machines.yml"
    machines.write_text(yaml.safe_dump(data))
    as_student(alice, "echo 'late work' > ~/notebooks/late.txt")
    with pytest.raises(Exit):
        commands.run("terminate", course=COURSE, yes=True, inventory=str(machines))
    out = capsys.readouterr().out
    assert f"alice on {alice.name} (" in out and "changed since its last collect" in out
    assert len(cloud.course_instances(COURSE)) == 1
    commands.run("terminate", course=COURSE, yes=True, inventory=str(machines), collect=True,
                          to=str(scratch / "at-terminate"))
    assert cloud.course_instances(COURSE) == []
    collected = latest(scratch / "at-terminate" / "alice")
    assert (collected / "files/notebooks/late.txt").read_text() == "late work\n"


from tests.aws.test_cloud import ami, aws, moto_url  # noqa: E402,F401 (fixtures)
