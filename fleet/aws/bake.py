"""`invoke bake`: provision and verify one of a course's EC2 instances, prepare it for
imaging, and turn it into a tagged image the rest of the class boots from.

The steps in order, each a refusal point: the recipe (inventory) is valid; `provision --verify`
on the instance succeeds; a check run right after finds no drift; the prepare script
(fleet.engine.imageprep) runs; CreateImage, tags, wait (fleet.aws.images). Only the last step talks to
EC2's image API, so it is tested on moto; the others need an SSH-reachable machine and are
tested on real test hosts.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from fleet import app
from fleet.aws import cloud, images
from fleet.engine import imageprep, recipe, state
from fleet.errors import FleetError, InputError


class BakeRefused(FleetError):
    """The instance is not fit to be imaged: nothing was imaged."""


@dataclass
class BakeResult:
    instance: cloud.Instance
    recipe: recipe.Recipe
    removed: list[str]
    image: images.Image


def pick_instance(instances: list[cloud.Instance], host: str | None, course: str) -> cloud.Instance:
    running = [i for i in instances if i.state == "running" and (i.public_ip or i.private_ip)]
    if host:
        found = [i for i in running if host in (i.name, i.id)]
        if not found:
            names = ", ".join(i.name for i in running) or "none"
            raise InputError(f"no running instance {host!r} in course {course} (running: {names})", key="--host")
        return found[0]
    if not running:
        raise InputError(f"course {course} has no running instance to bake: `invoke launch --course {course} "
                         "--count 1` first", key="--course")
    return running[0]                              # the lowest slot


def bake(course: str, host: str | None = None, inventory: str | None = None, region: str | None = None,
         key_dir: str | Path = cloud.DEFAULT_KEY_DIR, user: str = "ubuntu", insecure_host_keys: bool = False,
         reboot: bool = True) -> BakeResult:
    path = recipe.inventory_path(course, inventory)
    if path is None:
        raise InputError(f"no recipe for course {course}: pass --inventory FILE (or add inventory/{course}.yml)",
                         key="--inventory")
    from fleet.inventory import files as inventory_mod

    recipe_inventory = inventory_mod.load(path)
    rec = recipe.of(recipe_inventory)
    instance = pick_instance(cloud.course_instances(course, region, states=("running",)), host, course)
    address = instance.public_ip or instance.private_ip or ""
    key = str(cloud.key_path(course, key_dir))
    one_host = state.state_dir() / "bake" / f"{course}.yml"
    one_host.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    one_host.write_text(yaml.safe_dump({"name": course, "vars": recipe_inventory.vars,
                                        "hosts": {instance.name: {"address": address, "user": user, "key": key}}},
                                       sort_keys=False))
    run = app.provision(hosts=instance.name, inventory=str(one_host), verify=True,
                        insecure_host_keys=insecure_host_keys)
    if run.exit_code():
        raise BakeRefused(f"provisioning {instance.name} did not succeed (exit {run.exit_code()}): nothing imaged")
    drift = app.provision(hosts=instance.name, inventory=str(one_host), check=True,
                          insecure_host_keys=insecure_host_keys)
    if drift.exit_code():
        raise BakeRefused(f"{instance.name} drifted right after provisioning (check exit {drift.exit_code()}): "
                          "nothing imaged")
    known = None if insecure_host_keys else state.state_dir() / "known_hosts"
    try:
        removed = imageprep.run_over_ssh(imageprep.ssh_argv(address, user, key, None, known),
                                         {"roles": list(rec.roles), **rec.knobs})
    except imageprep.PrepareError as exc:
        raise BakeRefused(f"{instance.name}: {exc}") from None
    image = images.create(course, instance.id, rec.fingerprint, rec.roles, region, reboot=reboot)
    if known is not None and known.exists():
        # the instance comes back from the imaging reboot with new host keys: forget the old one
        subprocess.run(["ssh-keygen", "-R", address, "-f", str(known)], capture_output=True)
    return BakeResult(instance, rec, removed, image)
