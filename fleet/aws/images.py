"""A course's EC2 images: create one from a prepared instance, find the one to launch from,
list them with their snapshot storage cost, and remove stale ones with their snapshots.

Images are found again by tags, like instances (fleet.aws.cloud): `jupyter-fleet:managed=true`,
`jupyter-fleet:course`, `jupyter-fleet:roles` and `jupyter-fleet:fingerprint` (the course's
recipe, fleet.engine.recipe). Their snapshots carry the managed and course tags too, so nothing an
image leaves behind is billed unseen.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml
from botocore.exceptions import ClientError

from fleet.aws import cloud
from fleet.aws.cloud import COURSE_TAG, MANAGED_TAG, PREFIX, CloudError

FINGERPRINT_TAG = f"{PREFIX}:fingerprint"
ROLES_TAG = f"{PREFIX}:roles"
SOURCE_TAG = f"{PREFIX}:source-instance"
# The waiter's pace: a real CreateImage of a 100 GiB disk takes 5 to 20 minutes.
WAIT_DELAY_S = 15
WAIT_ATTEMPTS = 160


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    state: str
    created: datetime | None
    fingerprint: str
    roles: str
    snapshots: tuple[str, ...]
    size_gib: int               # sum of the snapshots' volume sizes (an upper bound of what is billed)


@dataclass(frozen=True)
class Choice:
    ami: str | None             # None: the base AMI (resolved by cloud.launch)
    image: Image | None
    message: str


# ------------------------------------------------------------------- reading


def _to_image(raw: dict[str, Any]) -> Image:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    snapshots = tuple(m["Ebs"]["SnapshotId"] for m in raw.get("BlockDeviceMappings", [])
                      if m.get("Ebs", {}).get("SnapshotId"))
    size = sum(int(m["Ebs"].get("VolumeSize") or 0) for m in raw.get("BlockDeviceMappings", []) if "Ebs" in m)
    created = raw.get("CreationDate")
    when = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
    return Image(raw["ImageId"], raw.get("Name", ""), raw.get("State", "unknown"), when,
                 tags.get(FINGERPRINT_TAG, ""), tags.get(ROLES_TAG, ""), snapshots, size)


def _describe(ec2: Any, course: str) -> list[Image]:
    raw = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
        {"Name": f"tag:{COURSE_TAG}", "Values": [course]},
    ])["Images"]
    found = []
    for image in raw:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        # re-checked, not only trusted to the filter: these are what prune deletes
        if tags.get(MANAGED_TAG) == "true" and tags.get(COURSE_TAG) == course:
            found.append(_to_image(image))
    return sorted(found, key=lambda i: (i.created or datetime.min.replace(tzinfo=timezone.utc), i.id), reverse=True)


def course_images(course: str, region: str | None = None) -> list[Image]:
    """The course's managed images, newest first."""
    cloud.check_course(course)
    _, ec2, name = cloud.ec2_session(region)
    with cloud.explained_errors(name):
        return _describe(ec2, course)


def newest_matching(images: Iterable[Image], fingerprints: set[str]) -> Image | None:
    for image in images:                     # newest first
        if image.state == "available" and image.fingerprint in fingerprints:
            return image
    return None


# ------------------------------------------------------------------- creating


def create(course: str, instance_id: str, fingerprint: str, roles: Iterable[str], region: str | None = None,
           *, delay: int = WAIT_DELAY_S, attempts: int = WAIT_ATTEMPTS, reboot: bool = True) -> Image:
    """CreateImage from a prepared instance, tagged; waits until it is available.

    With `reboot` (EC2's default) the instance is shut down for the snapshot, so the disk is
    consistent; it boots again afterwards with fresh host keys (the prepare step removed them).
    """
    cloud.check_course(course)
    _, ec2, name = cloud.ec2_session(region)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tags = {MANAGED_TAG: "true", COURSE_TAG: course, FINGERPRINT_TAG: fingerprint,
            ROLES_TAG: ",".join(roles), SOURCE_TAG: instance_id, "Name": f"{course}-{fingerprint}"}
    with cloud.explained_errors(name):
        image_id = ec2.create_image(
            InstanceId=instance_id, Name=f"{PREFIX}-{course}-{fingerprint}-{stamp}",
            Description=f"Jupyter Fleet course {course}, recipe {fingerprint}", NoReboot=not reboot,
            TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["ImageId"]
        ec2.get_waiter("image_available").wait(ImageIds=[image_id],
                                               WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        image = _to_image(ec2.describe_images(ImageIds=[image_id])["Images"][0])
        if image.snapshots:
            # tagged after the fact: the snapshots exist only once the image does
            ec2.create_tags(Resources=list(image.snapshots), Tags=[
                {"Key": MANAGED_TAG, "Value": "true"}, {"Key": COURSE_TAG, "Value": course},
                {"Key": "Name", "Value": f"{course}-{fingerprint}"}])
    return image


# ------------------------------------------------------------------- choosing


def choose(course: str, fingerprints: set[str] | None, image: str | None = None,
           region: str | None = None) -> Choice:
    """What `launch` boots: `--image ID`, `--image base`, else the newest matching image, else base."""
    if image == "base":
        return Choice(None, None, "--image base: the base AMI")
    images = course_images(course, region)
    if image:
        picked = next((i for i in images if i.id == image), None)
        if picked is None:
            raise CloudError(f"image {image} is not one of course {course}'s images "
                             f"(`invoke images --course {course}` lists them)")
        if picked.state != "available":
            raise CloudError(f"image {image} is {picked.state}, not available")
        stale = "" if fingerprints is None or picked.fingerprint in fingerprints else \
            " (stale: its recipe differs from the current one; provision installs the difference)"
        return Choice(picked.id, picked, f"--image {picked.id}{stale}")
    if fingerprints is None:
        return Choice(None, None, "no recipe inventory for the course: the base AMI")
    match = newest_matching(images, fingerprints)
    if match is not None:
        return Choice(match.id, match, f"image {match.id} matches the course's recipe ({match.fingerprint})")
    if images:
        return Choice(None, None, f"no image matches the current recipe ({', '.join(sorted(fingerprints))}): "
                                  f"{len(images)} stale; the base AMI (run `invoke bake` to make one)")
    return Choice(None, None, "the course has no image: the base AMI (`invoke bake` makes one)")


# ------------------------------------------------------------------- removing


def delete(images: Iterable[Image], region: str | None = None) -> list[Image]:
    """Deregister images and delete their snapshots (a deregistered image's snapshots bill on)."""
    _, ec2, name = cloud.ec2_session(region)
    done = []
    with cloud.explained_errors(name):
        for image in images:
            ec2.deregister_image(ImageId=image.id)
            for snapshot in image.snapshots:
                try:
                    ec2.delete_snapshot(SnapshotId=snapshot)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "InvalidSnapshot.NotFound":
                        raise
            done.append(image)
    return done


def prune(course: str, fingerprints: set[str], region: str | None = None) -> list[Image]:
    """Remove the course's images whose recipe is not the current one."""
    stale = [i for i in course_images(course, region) if i.fingerprint not in fingerprints]
    return delete(stale, region)


def delete_all(course: str, region: str | None = None) -> list[Image]:
    return delete(course_images(course, region), region)


# ------------------------------------------------------------------- costs


@lru_cache(maxsize=4)
def snapshot_price(path: str = str(cloud.PRICES_FILE)) -> float:
    """USD per GiB-month of EBS snapshot storage, from the dated price table."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return float(data.get("ebs_snapshot_gib_month", 0.05))


def monthly_cost(images: Iterable[Image]) -> float:
    return sum(i.size_gib for i in images) * snapshot_price()
