"""Course images against a moto server over real HTTP (the fixtures of tests/aws/test_cloud.py):
CreateImage with tags and waiting, launch from the image matching the recipe, a changed recipe
making it stale (launch falls back to the base AMI and says so), prune, terminate --images,
and the recipe fingerprint itself (offline)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.aws import cloud, images
from fleet.engine import recipe
from fleet.inventory import files as inventory_mod
from tests.aws.test_cloud import CIDR, REGION, REPO, _run_task, ami, aws, moto_url, up  # noqa: F401 (fixtures)

COURSE = "stats"
RECIPE = {"name": COURSE, "vars": {"roles": ["jupyter", "repos"], "jupyter_extra_packages": ["pandas>=2"]},
          "hosts": {"s1": {"address": "192.0.2.1"}}}


def write_recipe(path: Path, **changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(RECIPE))
    data["vars"].update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fingerprint(path: Path) -> str:
    return recipe.of(inventory_mod.load(path)).fingerprint


def instance_image(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["ImageId"]


def task(args: list[str], answer: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250", FLEET_SSH_PERSIST="0",
               FLEET_STATE_DIR=os.path.join(os.getcwd(), ".fleet-state"))
    return _run_task(args, env, answer)


@pytest.fixture
def baked(aws, tmp_path, ami):  # noqa: F811
    """A course with one instance and an image made from it for the current recipe."""
    source = up(COURSE, 1, tmp_path, ami, instance_type="t3.micro").instances[0]
    path = write_recipe(tmp_path / "stats.yml")
    rec = recipe.of(inventory_mod.load(path))
    image = images.create(COURSE, source.id, rec.fingerprint, rec.roles, delay=1, attempts=5)
    return {"image": image, "recipe": path, "source": source, "base": ami}


def test_create_tags_the_image_and_its_snapshots_and_waits(aws, baked):
    image = baked["image"]
    raw = aws.describe_images(ImageIds=[image.id])["Images"][0]
    assert raw["State"] == "available" == image.state
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags["jupyter-fleet:managed"] == "true" and tags["jupyter-fleet:course"] == COURSE
    assert tags["jupyter-fleet:fingerprint"] == fingerprint(baked["recipe"]) == image.fingerprint
    assert tags["jupyter-fleet:roles"] == "jupyter,repos"
    assert tags["jupyter-fleet:source-instance"] == baked["source"].id
    snapshots = aws.describe_snapshots(Filters=[{"Name": "tag:jupyter-fleet:course", "Values": [COURSE]}])["Snapshots"]
    assert [s["SnapshotId"] for s in snapshots] == list(image.snapshots)
    assert image.size_gib == sum(s["VolumeSize"] for s in snapshots) > 0


def test_launch_boots_from_the_matching_image_and_says_so(aws, baked, tmp_path):
    proc = task(["launch", "--course", COURSE, "--count", "2", "--instance-type", "t3.micro", "--cidr", CIDR,
                 "--no-wait-ssh", "--key-dir", str(tmp_path / "keys"), "--inventory", str(baked["recipe"])])
    assert proc.returncode == 0, proc.stderr
    assert f"image {baked['image'].id} matches the course's recipe" in proc.stdout
    new = [i for i in cloud.course_instances(COURSE) if i.id != baked["source"].id]
    assert [instance_image(aws, i.id) for i in new] == [baked["image"].id]


def test_a_changed_recipe_makes_the_image_stale_and_launch_falls_back(aws, baked, tmp_path):
    changed = write_recipe(baked["recipe"], jupyter_extra_packages=["pandas>=2", "scipy"])
    assert fingerprint(changed) != baked["image"].fingerprint
    proc = task(["launch", "--course", COURSE, "--count", "2", "--instance-type", "t3.micro", "--cidr", CIDR,
                 "--no-wait-ssh", "--key-dir", str(tmp_path / "keys"), "--inventory", str(changed)])
    assert proc.returncode == 0, proc.stderr
    assert "no image matches the current recipe" in proc.stdout and "1 stale" in proc.stdout
    new = [i for i in cloud.course_instances(COURSE) if i.id != baked["source"].id]
    base = cloud.resolve_ami(*cloud.ec2_session(None)[:2])
    assert [instance_image(aws, i.id) for i in new] == [base] != [baked["image"].id]
    listing = task(["images", "--course", COURSE, "--inventory", str(changed)])
    assert listing.returncode == 0, listing.stderr
    assert baked["image"].id in listing.stdout and "stale" in listing.stdout


@pytest.mark.parametrize("choice, expect", [("base", "base"), ("image", "image")])
def test_image_option_chooses(aws, baked, tmp_path, choice, expect):
    wanted = baked["image"].id if choice == "image" else "base"
    proc = task(["launch", "--course", COURSE, "--count", "2", "--instance-type", "t3.micro", "--cidr", CIDR,
                 "--no-wait-ssh", "--key-dir", str(tmp_path / "keys"), "--inventory", str(baked["recipe"]),
                 "--image", wanted])
    assert proc.returncode == 0, proc.stderr
    new = [i for i in cloud.course_instances(COURSE) if i.id != baked["source"].id]
    got = instance_image(aws, new[0].id)
    assert (got == baked["image"].id) == (expect == "image")


def test_an_image_of_another_course_is_refused(aws, baked, tmp_path):
    proc = task(["launch", "--course", "other", "--count", "1", "--instance-type", "t3.micro", "--cidr", CIDR,
                 "--no-wait-ssh", "--key-dir", str(tmp_path / "keys"), "--image", baked["image"].id])
    assert proc.returncode == 1 and "is not one of course other's images" in proc.stderr
    assert cloud.course_instances("other") == []


def test_prune_removes_stale_images_and_their_snapshots(aws, baked, tmp_path):
    old = baked["image"]
    changed = write_recipe(baked["recipe"], jupyter_extra_packages=["polars"])
    rec = recipe.of(inventory_mod.load(changed))
    fresh = images.create(COURSE, baked["source"].id, rec.fingerprint, rec.roles, delay=1, attempts=5)
    proc = task(["images", "--course", COURSE, "--inventory", str(changed), "--prune"])
    assert proc.returncode == 0, proc.stderr
    assert f"pruned 1 stale images: {old.id}" in proc.stdout
    assert [i.id for i in images.course_images(COURSE)] == [fresh.id]
    left = {s["SnapshotId"] for s in aws.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not set(old.snapshots) & left and set(fresh.snapshots) <= left


def test_status_shows_image_storage_cost(aws, baked):
    proc = task(["status", "--course", COURSE])
    assert proc.returncode == 0, proc.stderr
    size = baked["image"].size_gib
    assert f"images: 1, snapshots {size} GiB, storage ${size * images.snapshot_price():,.2f}/month" in proc.stdout


def test_terminate_images_removes_them_with_the_course(aws, baked):
    other = up("other", 1, Path(os.getcwd()), baked["base"], instance_type="t3.micro").instances[0]
    kept = images.create("other", other.id, "f" * 16, ["jupyter"], delay=1, attempts=5)
    proc = task(["terminate", "--course", COURSE, "--images", "--yes", "--discard-student-work"])
    assert proc.returncode == 0, proc.stderr
    assert "deregistered 1 images, deleted 1 snapshots" in proc.stdout
    assert cloud.course_instances(COURSE) == [] and images.course_images(COURSE) == []
    left = {s["SnapshotId"] for s in aws.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not set(baked["image"].snapshots) & left
    assert [i.id for i in images.course_images("other")] == [kept.id] and set(kept.snapshots) <= left


# ------------------------------------------------------------------ the recipe, offline

@pytest.mark.parametrize("change, stale", [
    ({"jupyter_extra_packages": ["pandas>=2", "scipy"]}, True),     # installs more
    ({"roles": ["jupyter", "repos", "clusters"]}, True),            # another role
    ({"course_user": "learner"}, True),
    ({"jupyter_port": 8890}, False),                                # per-host config only
    ({"jupyter_token": "x" * 20}, False),                           # a secret, per host
    ({"autostop_idle_minutes": 5}, False),                          # a role the course does not use
])
def test_which_changes_make_an_image_stale(tmp_path, change, stale):
    before = fingerprint(write_recipe(tmp_path / "a.yml"))
    after = fingerprint(write_recipe(tmp_path / "b.yml", **change))
    assert (before != after) is stale


def test_group_and_host_levels_are_per_host(tmp_path):
    path = write_recipe(tmp_path / "a.yml")
    before = fingerprint(path)
    data = yaml.safe_load(path.read_text())
    data["hosts"]["s1"]["vars"] = {"jupyter_extra_packages": ["torch"]}
    path.write_text(yaml.safe_dump(data))
    assert fingerprint(path) == before


def test_a_role_file_change_makes_the_image_stale(tmp_path, monkeypatch):
    site = tmp_path / "roles" / "site_tools"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("def steps(v, ctx):\n    return []\n")
    (site / "defaults.yml").write_text("site_tools_level: 1\n")
    (site / "spec.yml").write_text("site_tools_level: {type: int}\n")
    monkeypatch.setenv("FLEET_ROLES_PATH", str(tmp_path / "roles"))
    path = write_recipe(tmp_path / "a.yml", roles=["jupyter", "site_tools"])
    before = fingerprint(path)
    (site / "__init__.py").write_text("def steps(v, ctx):\n    return []  # changed\n")
    assert fingerprint(path) != before


def test_a_course_without_roles_has_nothing_to_bake(tmp_path):
    path = write_recipe(tmp_path / "a.yml", roles=[])
    with pytest.raises(recipe.InputError, match="vars.roles.*nothing to bake"):
        fingerprint(path)


def test_bake_refuses_bad_input_before_touching_anything(aws, baked, tmp_path):
    before = [i.id for i in images.course_images(COURSE)]
    proc = task(["bake", "--course", "nosuchcourse"])
    assert proc.returncode == 1 and "no recipe for course nosuchcourse: pass --inventory" in proc.stderr
    proc = task(["bake", "--course", COURSE, "--inventory", str(baked["recipe"]), "--builder", "nope"])
    assert proc.returncode == 1 and f"no running instance 'nope' in course {COURSE}" in proc.stderr
    empty = write_recipe(tmp_path / "empty.yml", roles=[])
    proc = task(["bake", "--course", COURSE, "--inventory", str(empty)])
    assert proc.returncode == 1 and "nothing to bake" in proc.stderr
    assert [i.id for i in images.course_images(COURSE)] == before


@pytest.mark.parametrize("roles", [["jupyter"], ["jupyter", "autostop"], ["repos"], ["jupyter", "clusters", "r_kernel"]])
def test_the_prepare_script_parses_and_removes_what_the_roles_write(roles):
    from fleet.course.imaging import imageprep
    from roles import autostop, jupyter

    text = imageprep.script({"roles": roles, "jupyter_service": "jupyter"})
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert (jupyter.CONFIG in text) is ("jupyter" in roles)            # the token lives there
    assert (autostop.TOKEN_FILE in text and autostop.STATE_FILE in text) is ("autostop" in roles)
    assert "/etc/ssh/ssh_host_*" in text and ": > /etc/machine-id" in text
