"""The course's instances: found by tags, launched into free slots, written out as an inventory,
stopped, started and terminated."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from botocore.exceptions import ClientError

from fleet.aws import DEFAULT_INSTANCE_TYPE, DEFAULT_USER
from fleet.aws.amis import resolve_ami
from fleet.aws.common import (ACTIVE_STATES, BUILDER_TAG, COURSE_TAG, DEFAULT_KEY_DIR, MANAGED_TAG, SLOT_TAG, CloudError, Instance,
                              LaunchResult, caller_public_ip, check_course, ec2_session, explain, explained_errors,
                              free_slots, is_gpu_type, key_path, normalize_cidr, slot_order, tag_spec, wait_for_ssh)
from fleet.aws.groups import ensure_security_group
from fleet.aws.keys import ensure_key_pair
from fleet.aws.profile import METADATA_OPTIONS, ProfileChoice, check

# ------------------------------------------------------------------ instances




def _to_instance(raw: dict[str, Any]) -> Instance:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    slot_text = tags.get(SLOT_TAG, "")
    itype = raw.get("InstanceType", "")
    return Instance(
        id=raw["InstanceId"],
        name=tags.get("Name", raw["InstanceId"]),
        slot=int(slot_text) if slot_text.isdigit() else None,
        state=raw.get("State", {}).get("Name", "unknown"),
        type=itype,
        public_ip=raw.get("PublicIpAddress"),
        private_ip=raw.get("PrivateIpAddress"),
        launch_time=raw.get("LaunchTime"),
        key_name=raw.get("KeyName"),
        gpu=is_gpu_type(itype),
    )


def _describe(ec2: Any, course: str, states: Iterable[str], builders: bool = False) -> list[Instance]:
    """The course's managed instances; bake's builders only with `builders` (they hold no slot)."""
    filters = [
        {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
        {"Name": f"tag:{COURSE_TAG}", "Values": [course]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    found: list[Instance] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for raw in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                # Re-checked here, not only trusted to the filter: these are the
                # instances stop/terminate will act on.
                if tags.get(MANAGED_TAG) == "true" and tags.get(COURSE_TAG) == course \
                        and (builders or tags.get(BUILDER_TAG) != "true"):
                    found.append(_to_instance(raw))
    return sorted(found, key=slot_order)


def course_instances(
    course: str, region: str | None = None, states: Iterable[str] = ACTIVE_STATES, builders: bool = False
) -> list[Instance]:
    """The course's managed instances in the given states, ordered by slot (bake's builders too
    with `builders`)."""
    check_course(course)
    _, ec2, name = ec2_session(region)
    with explained_errors(name):
        return _describe(ec2, course, states, builders)


def _run_one(ec2: Any, course: str, slot: int | None, *, ami: str, instance_type: str,
             key: str, group_id: str, profile: ProfileChoice = ProfileChoice()) -> Instance:
    """One instance in a slot, or (slot None) bake's builder."""
    name = f"{course}-{slot}" if slot is not None else f"{course}-builder"
    extra = {SLOT_TAG: str(slot)} if slot is not None else {BUILDER_TAG: "true"}
    tags = tag_spec("instance", course, Name=name, **extra)
    resp = ec2.run_instances(
        # No instance profile unless the course allowed one (fleet.aws.profile): students can read it.
        **check(profile).request(),
        ImageId=ami,
        InstanceType=instance_type,
        KeyName=key,
        SecurityGroupIds=[group_id],
        MinCount=1,
        MaxCount=1,
        # The idle auto-stop runs `poweroff` inside the VM: with "stop" that stops the
        # instance (disk kept, billing paused) instead of destroying a student's work.
        InstanceInitiatedShutdownBehavior="stop",
        MetadataOptions=dict(METADATA_OPTIONS),
        # Tags go on at creation (one call per slot, as tags differ): an instance can
        # never exist untagged, so it can never escape status/stop/terminate.
        TagSpecifications=[tags, {**tag_spec("volume", course, Name=name)}],
        # Retries of this same call (by botocore) must not start a second instance.
        ClientToken=f"{course[:24]}-{slot if slot is not None else 'b'}-{uuid.uuid4().hex}",
    )
    return _to_instance(resp["Instances"][0])


def launch(
    course: str,
    count: int,
    *,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    region: str | None = None,
    ami: str | None = None,
    cidr: str | None = None,
    key_dir: Path | str = DEFAULT_KEY_DIR,
    wait_ssh: bool = True,
    user: str = DEFAULT_USER,
    ssh_timeout: float = 600.0,
    ip_lookup: Callable[[], str] = caller_public_ip,
    profile: ProfileChoice = ProfileChoice(),
) -> LaunchResult:
    """Bring the course up to `count` managed instances; safe to re-run.

    Existing non-terminated instances (stopped ones included) count towards `count`;
    only the missing slots are launched, lowest numbers first. Never shrinks.
    `user` is accepted for symmetry with inventory_hosts (the AMI decides the login).
    An instance profile (`profile`) is refused unless the course allowed it: before any AWS call.
    """
    check_course(course)
    check(profile)
    if count < 1:
        raise CloudError("count must be at least 1")
    session, ec2, region_name = ec2_session(region)
    allowed = normalize_cidr(cidr if cidr else f"{ip_lookup()}/32")
    with explained_errors(region_name, instance_type):
        key, path, key_action = ensure_key_pair(ec2, course, key_dir)
        group_id = ensure_security_group(ec2, course, allowed)
        existing = _describe(ec2, course, ACTIVE_STATES)
        result = LaunchResult(course, region_name, key, path, key_action, group_id, allowed, None,
                              existing=existing)
        missing = free_slots((i.slot for i in existing if i.slot is not None), count - len(existing))
        if len(existing) > count:
            result.notes.append(f"{len(existing)} instances exist, more than {count}: none removed")
        if missing:
            result.ami = resolve_ami(session, ec2, ami)
        for slot in missing:
            try:
                result.launched.append(_run_one(ec2, course, slot, ami=result.ami or "",
                                                instance_type=instance_type, key=key,
                                                group_id=group_id, profile=profile))
            except ClientError as exc:
                done = ", ".join(i.name for i in result.launched) or "none"
                err = explain(exc, region=region_name, instance_type=instance_type)
                raise CloudError(f"{err} (launched before the error: {done}; re-running launch "
                                 "only adds the missing slots)") from None
        if profile.name:
            result.notes.append(profile.warning() or "")
        stopped = [i.name for i in existing if i.state in ("stopped", "stopping")]
        if stopped:
            result.notes.append(f"stopped, left as is (use `invoke start`): {', '.join(stopped)}")
        waiting = [i.id for i in result.launched + existing if i.state in ("pending", "running")]
        if waiting:
            ec2.get_waiter("instance_running").wait(
                InstanceIds=waiting, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )
        # Re-read: public addresses are only known once the instances run.
        current = {i.id: i for i in _describe(ec2, course, ACTIVE_STATES)}
        result.launched = [current.get(i.id, i) for i in result.launched]
        result.existing = [current.get(i.id, i) for i in result.existing]
    if wait_ssh:
        deadline = time.monotonic() + ssh_timeout
        silent = [
            i.name for i in result.instances
            if i.state == "running" and (i.public_ip or i.private_ip)
            and not wait_for_ssh(i.public_ip or i.private_ip or "", 22,
                                 max(1.0, deadline - time.monotonic()))
        ]
        if silent:
            raise CloudError(
                f"instances are running but SSH did not answer within {int(ssh_timeout)}s: "
                f"{', '.join(silent)}; check that your address is inside {allowed} and re-run "
                "launch (it will not start more instances)"
            )
    return result


def launch_builder(
    course: str,
    *,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    region: str | None = None,
    ami: str | None = None,
    cidr: str | None = None,
    key_dir: Path | str = DEFAULT_KEY_DIR,
    wait_ssh: bool = True,
    ssh_timeout: float = 600.0,
    ip_lookup: Callable[[], str] = caller_public_ip,
) -> Instance:
    """Start bake's dedicated builder from the base image (never a course image): the course's key
    pair and SSH-only group, the same metadata options as a class machine, no instance profile,
    tagged as a builder (no slot). Returns it running, with SSH answering unless told not to wait."""
    check_course(course)
    session, ec2, region_name = ec2_session(region)
    allowed = normalize_cidr(cidr if cidr else f"{ip_lookup()}/32")
    with explained_errors(region_name, instance_type):
        key, _, _ = ensure_key_pair(ec2, course, key_dir)
        group_id = ensure_security_group(ec2, course, allowed)
        builder = _run_one(ec2, course, None, ami=resolve_ami(session, ec2, ami), instance_type=instance_type,
                           key=key, group_id=group_id)
        ec2.get_waiter("instance_running").wait(InstanceIds=[builder.id], WaiterConfig={"Delay": 5, "MaxAttempts": 120})
        builder = next((i for i in _describe(ec2, course, ("running",), builders=True) if i.id == builder.id), builder)
    address = builder.public_ip or builder.private_ip or ""
    if wait_ssh and not wait_for_ssh(address, 22, ssh_timeout):
        terminate_builder(course, builder.id, region)
        raise CloudError(f"the builder {builder.id} runs but SSH did not answer within {int(ssh_timeout)}s; it was "
                         f"terminated; check that your address is inside {allowed}")
    return builder


def terminate_builder(course: str, instance_id: str, region: str | None = None) -> None:
    """Terminate bake's builder: one instance of this course (checked by its tags), by id."""
    _, ec2, region_name = ec2_session(region)
    with explained_errors(region_name):
        found = [i for i in _describe(ec2, course, ACTIVE_STATES, builders=True) if i.id == instance_id]
        if found:
            ec2.terminate_instances(InstanceIds=[instance_id])


# -------------------------------------------------------------- inventory


def inventory_hosts(
    course: str,
    region: str | None = None,
    user: str = DEFAULT_USER,
    key_dir: Path | str = DEFAULT_KEY_DIR,
) -> dict[str, Any]:
    """The running instances in the fleet's native inventory shape, with gpu/cpu groups."""
    keyfile = str(key_path(course, key_dir))
    hosts: dict[str, Any] = {}
    groups: dict[str, dict[str, list[str]]] = {"gpu": {"hosts": []}, "cpu": {"hosts": []}}
    for inst in course_instances(course, region, states=("running",)):
        address = inst.public_ip or inst.private_ip
        if not address:
            continue
        name = inst.name if inst.name not in hosts else f"{inst.name}-{inst.id}"
        hosts[name] = {
            "address": address,
            "user": user,
            "key": keyfile,
            "vars": {"instance_type": inst.type, "gpu": inst.gpu, "instance_id": inst.id,
                     "private_ip": inst.private_ip or ""},  # clusters: members talk over the VPC
        }
        groups["gpu" if inst.gpu else "cpu"]["hosts"].append(name)
    return {"hosts": hosts, "groups": groups}


def write_snapshot(
    course: str,
    path: Path | str,
    region: str | None = None,
    user: str = DEFAULT_USER,
    key_dir: Path | str = DEFAULT_KEY_DIR,
) -> Path:
    """Write inventory_hosts() as a YAML inventory file (a frozen copy of `aws:<course>`)."""
    data = inventory_hosts(course, region, user=user, key_dir=key_dir)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# Snapshot of AWS course {course!r} taken {stamp} by `invoke snapshot`.\n"
              "# Addresses change when instances stop/start: re-run the snapshot, or use\n"
              f"# --inventory aws:{course} to always read the live list.\n")
    out.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return out


# -------------------------------------------------------------- lifecycle


def _act(course: str, region: str | None, states: Iterable[str], call: str, builders: bool = False) -> list[Instance]:
    check_course(course)
    _, ec2, name = ec2_session(region)
    with explained_errors(name):
        targets = _describe(ec2, course, states, builders)
        if targets:
            getattr(ec2, call)(InstanceIds=[i.id for i in targets])
    return targets


def stop(course: str, region: str | None = None) -> list[Instance]:
    """Stop the course's running instances (disks kept); returns those acted on."""
    return _act(course, region, ("pending", "running"), "stop_instances")


def start(course: str, region: str | None = None) -> list[Instance]:
    """Start the course's stopped instances; returns those acted on."""
    return _act(course, region, ("stopped",), "start_instances")


def terminate(course: str, region: str | None = None) -> list[Instance]:
    """Terminate (destroy, disks included) the course's instances; returns those acted on.

    The key pair and security group are kept, so a later launch reuses them.
    """
    return _act(course, region, ACTIVE_STATES, "terminate_instances", builders=True)  # a leftover builder too
