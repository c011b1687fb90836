"""Course images on real hosts: bake a course (jupyter, repos, clusters, r_kernel) into a layer with
the real bake code (fleet.testhosts.layers.bake_course: a fresh builder, provisioned, verified,
checked and prepared by fleet.course.imaging.builder.make_ready, as `invoke bake` does on EC2), boot a class
of 3 from it, and provision them: only per-host changes, every check passing, a cell on each through
its own token, distinct host keys, then a no-op run."""
from __future__ import annotations

import csv
import io
import os
import uuid

import pytest

from fleet.course.imaging import imageprep

from fleet.testhosts import hosts as testhosts
from fleet.testhosts import layers
from tests.fixtures import changed_steps, fleet, git_server, sh  # noqa: F401 (fixture)
from tests.testhosts.test_clean_bake_hosts import fleet_state
from tests.jupyter_ws import Jupyter, ssh_tunnel
from tests.skips import require

pytestmark = pytest.mark.hosts

ROLES = ["jupyter", "repos", "clusters", "r_kernel"]
CONFIG = "/etc/jupyter/jupyter_server_config.py"
# What a machine booted from the image may change: its own token and config, and the server's
# start (the bake's drop-in holds it until the config is there, so no restart is needed).
# The config (its token) and the student's key are each machine's own; the image holds neither.
PER_HOST_STEPS = {f"template jupyter_server_config.py.j2 -> {CONFIG}", "service jupyter",
                  "file /etc/ssh/jupyter-fleet-keys/student"}
VERIFIES = {"jupyter answers /api/status with the token", "a 2-engine cluster runs a task on both engines",
            "the ir kernelspec is visible to the Jupyter server"}


def host_key(host) -> str:
    return sh(host, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]


@pytest.fixture(scope="module")
def course(git_server, tmp_path_factory):  # noqa: F811
    require(os.geteuid() == 0, "booting test hosts needs root")
    course_vars = {"roles": ROLES, "course_user": "student",
                   "repos_list": [{"url": git_server.url("course.git"), "dest": "course", "ref": "main"}]}
    booted: list[testhosts.TestHost] = []
    layer = None
    try:
        state = tmp_path_factory.mktemp("class")
        # the same file name, so the same course name: templates carry it
        inventory = testhosts.write_inventory([], state / "course.yml", vars=course_vars)
        with fleet_state(tmp_path_factory.mktemp("bake")):
            layer = layers.bake_course(inventory, f"test-{uuid.uuid4().hex[:8]}")
        hosts = testhosts.boot(3, layer=layer)
        booted += hosts
        inventory = testhosts.write_inventory(hosts, state / "course.yml", vars=course_vars)
        run = fleet("provision", "--verify", state=state, inventory=inventory)
        yield {"hosts": hosts, "state": state, "inventory": inventory, "run": run, "layer": layer}
    finally:
        testhosts.teardown(booted)
        if layer is not None:
            layers.remove_layer(layer)


def test_the_layer_keeps_software_and_drops_per_host_files(course):
    layer = course["layer"]
    assert (layer / "opt/jupyter/bin/jupyter-lab").exists()
    assert (layer / "usr/share/jupyter/kernels/ir/kernel.json").exists()
    assert (layer / "home/student/notebooks/course/README.md").exists()
    for rel in ("etc/machine-id", "etc/hostname"):
        assert not (layer / rel).exists(), rel
    # removed in the upper dir: a whiteout (a 0/0 character device), or absent
    for rel in ("etc/ssh/ssh_host_ed25519_key", CONFIG.lstrip("/"), "etc/ssh/jupyter-fleet-keys/student"):
        path = layer / rel
        assert not path.exists() or (path.is_char_device() and path.stat().st_rdev == 0), rel
    assert (layer / f"etc/systemd/system/{imageprep.FIRST_BOOT_UNIT}").is_file()
    assert CONFIG in (layer / f"etc/systemd/system/jupyter.service.d/{imageprep.HOLD_NAME}").read_text()


def test_the_class_converges_with_only_per_host_changes(course):
    run = course["run"]
    assert run.rc == 0, run.output
    for host in course["hosts"]:
        result = run.report["hosts"][host.name]
        assert set(changed_steps(run.report, host.name)) <= PER_HOST_STEPS, changed_steps(run.report, host.name)
        assert set(result["handlers"]) <= {"restart jupyter"}
        assert {v["name"]: v["ok"] for v in result["verifies"]} == dict.fromkeys(VERIFIES, True), result["verifies"]


def test_a_cell_runs_on_each_host_through_its_own_token(course):
    handout = fleet("handout", "--format", "csv", state=course["state"], inventory=course["inventory"])
    assert handout.rc == 0, handout.output
    tokens = {row["host"]: row["url"].split("token=")[1] for row in csv.DictReader(io.StringIO(handout.output))}
    assert len(set(tokens.values())) == 3
    for i, host in enumerate(course["hosts"]):
        other = tokens[course["hosts"][(i + 1) % 3].name]
        with ssh_tunnel(host, 8888) as port:
            assert Jupyter(port, other).get("/api/status").status_code == 403     # not this host's token
            client = Jupyter(port, tokens[host.name])
            kernel = client.start_kernel("ir")
            try:
                assert client.execute(kernel, "cat(6 * 7)").strip() == "42"
            finally:
                client.shutdown(kernel)


def test_host_keys_and_machine_ids_differ(course):
    hosts = course["hosts"]
    keys = {host_key(h) for h in hosts}
    assert len(keys) == 3
    ids = {sh(h, "cat /etc/machine-id").stdout.strip() for h in hosts}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)
    for kind in ("ed25519", "ecdsa", "rsa"):     # ssh-keygen -A makes every kind sshd offers
        prints = {sh(h, f"ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub").stdout.split()[1] for h in hosts}
        assert len(prints) == 3, kind
    for h in hosts:
        assert sh(h, f"systemctl is-enabled {imageprep.FIRST_BOOT_UNIT}").stdout.strip() == "enabled"


def test_a_second_run_changes_nothing(course):
    again = fleet("provision", state=course["state"], inventory=course["inventory"])
    assert again.rc == 0, again.output
    for host in course["hosts"]:
        assert changed_steps(again.report, host.name) == []
        assert again.report["hosts"][host.name]["handlers"] == []
