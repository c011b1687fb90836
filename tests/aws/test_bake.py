"""`bake` itself (fleet.course.imaging.bake.bake and the CLI task) against a moto server: it launches a
dedicated builder from the base image, hands exactly that machine to the machine part, images
it and terminates it; it refuses a machine that was in a handout or has a student assigned,
before anything is provisioned or imaged. The machine part (provision, verify, check, prepare:
fleet.course.imaging.builder.make_ready) needs SSH, which moto's instances do not answer: here it is
replaced by a recorder; tests/testhosts/test_clean_bake_hosts.py runs it for real."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.course.imaging import bake as baking
from fleet.aws import cloud, images
from fleet.engine import state
from fleet.course.imaging.builder import BakeRefused
from tests.aws.test_cloud import CIDR, REGION, REPO, _run_task, ami, aws, moto_url, tags_of, up  # noqa: F401
from tests.aws.test_images import RECIPE, write_recipe

COURSE = RECIPE["name"]


@pytest.fixture
def course(aws, tmp_path, ami, monkeypatch):  # noqa: F811
    """Two class machines and the course's recipe; the fleet's state in tmp."""
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    machines = up(COURSE, 2, tmp_path, ami, instance_type="t3.micro").instances
    return {"machines": machines, "recipe": write_recipe(tmp_path / f"{COURSE}.yml"), "ami": ami}


class Recorder:
    """Stands in for make_ready: records which machine bake handed it, optionally fails."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[dict, str]] = []
        self.fail = fail

    def __call__(self, inventory: Path, host: str, *, insecure_host_keys: bool = False) -> list[str]:
        self.calls.append((yaml.safe_load(Path(inventory).read_text()), host))
        if self.fail:
            raise BakeRefused(f"provisioning {host} did not succeed (exit 2): nothing imaged")
        return ["/etc/ssh/ssh_host_*"]


def _state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def _raw(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _bake(course, tmp_path, machine, **kw):
    return baking.bake(COURSE, inventory=str(course["recipe"]), key_dir=tmp_path / "keys", ami=course["ami"],
                       cidr=CIDR, instance_type="t3.micro", wait_ssh=False, make_ready=machine, **kw)


def test_bake_launches_a_builder_from_the_base_image_images_it_and_terminates_it(aws, course, tmp_path):
    machine = Recorder()
    result = _bake(course, tmp_path, machine)
    builder = result.instance
    class_ids = {m.id for m in course["machines"]}
    assert result.launched and builder.id not in class_ids
    # the machine part got the builder, and only it
    [(inventory, host)] = machine.calls
    assert host == builder.name == f"{COURSE}-builder"
    assert list(inventory["hosts"]) == [builder.name]
    assert inventory["hosts"][builder.name]["address"] in (builder.public_ip, builder.private_ip)
    raw = _raw(aws, builder.id)
    assert raw["ImageId"] == course["ami"]                               # the base image, not a course image
    assert raw["MetadataOptions"]["HttpTokens"] == "required" and "IamInstanceProfile" not in raw
    tags = tags_of(aws, builder.id)
    assert tags["jupyter-fleet:builder"] == "true" and "jupyter-fleet:slot" not in tags
    # imaged from the builder, which is then gone; the class machines are untouched
    image_tags = {t["Key"]: t["Value"] for t in aws.describe_images(ImageIds=[result.image.id])["Images"][0]["Tags"]}
    assert image_tags["jupyter-fleet:source-instance"] == builder.id
    assert _state(aws, builder.id) in ("shutting-down", "terminated")
    assert {_state(aws, i) for i in class_ids} == {"running"}
    assert {i.id for i in cloud.course_instances(COURSE)} == class_ids   # a builder holds no slot


def test_a_failed_builder_is_terminated_and_nothing_is_imaged(aws, course, tmp_path):
    machine = Recorder(fail=True)
    with pytest.raises(BakeRefused, match="did not succeed"):
        _bake(course, tmp_path, machine)
    [(_, host)] = machine.calls
    [builder] = [i for i in cloud.course_instances(COURSE, states=("shutting-down", "terminated"), builders=True)]
    assert builder.name == host and images.course_images(COURSE) == []


def _handout(tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "invoke", "handout", "--inventory", f"aws:{COURSE}", "--format",
                           "csv"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_machine_in_a_handout_is_refused_as_builder_with_why_and_how(aws, course, tmp_path):
    handout = _handout(tmp_path)
    assert handout.returncode == 0, handout.stdout + handout.stderr
    first = course["machines"][0]
    assert {first.name, first.id} <= state.handed_out(COURSE)
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250")
    for name in (first.name, first.id):
        proc = _run_task(["bake", "--course", COURSE, "--inventory", str(course["recipe"]), "--builder", name,
                          "--key-dir", str(tmp_path / "keys")], env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{first.name} ({first.id}) was in a handout of course {COURSE}" in proc.stderr
        assert f"invoke bake --course {COURSE}` starts a fresh one from the base image" in proc.stderr
    assert images.course_images(COURSE) == [] and _state(aws, first.id) == "running"


def test_a_machine_with_a_student_assigned_is_refused(aws, course, tmp_path):
    first = course["machines"][0]
    data = yaml.safe_load(course["recipe"].read_text())
    data["hosts"] = {first.name: {"address": "192.0.2.1", "vars": {"student": "alice"}}}
    course["recipe"].write_text(yaml.safe_dump(data))
    machine = Recorder()
    with pytest.raises(BakeRefused, match=f"{first.name} has student alice assigned .*invoke bake --course {COURSE}"):
        _bake(course, tmp_path, machine, builder=first.name)
    assert machine.calls == [] and images.course_images(COURSE) == [] and _state(aws, first.id) == "running"


def test_an_unused_machine_named_as_builder_is_taken_then_terminated(aws, course, tmp_path):
    second = course["machines"][1]
    machine = Recorder()
    result = _bake(course, tmp_path, machine, builder=second.id)
    assert not result.launched and result.instance.id == second.id
    assert [host for _, host in machine.calls] == [second.name]
    assert _state(aws, second.id) in ("shutting-down", "terminated")


def test_a_machine_the_roster_gives_a_student_is_refused(aws, course, tmp_path):
    first = course["machines"][0]
    data = yaml.safe_load(course["recipe"].read_text())
    data["hosts"] = {first.name: {"address": "192.0.2.1"}}
    data["roster"] = [{"student": "alice", "host": first.name}]
    course["recipe"].write_text(yaml.safe_dump(data))
    machine = Recorder()
    with pytest.raises(BakeRefused, match=f"{first.name} is alice's machine in the roster .*invoke bake --course {COURSE}"):
        _bake(course, tmp_path, machine, builder=first.name)
    assert machine.calls == [] and images.course_images(COURSE) == [] and _state(aws, first.id) == "running"
