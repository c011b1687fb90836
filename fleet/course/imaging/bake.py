"""`invoke bake`: make the course's image on a clean, dedicated builder, never on a class machine.

The steps in order, each a refusal point: the recipe (inventory) is valid; the builder is
launched from the base image (or, with `--builder NAME`, taken: refused when it was ever in a
handout or has a student assigned, fleet.course.imaging.builder.refuse_source); `provision --verify` on
it succeeds; a check run right after finds no drift; the prepare script (fleet.course.imaging.imageprep:
homes built from /etc/skel plus the course's content) runs; CreateImage, tags, wait
(fleet.aws.images); the builder is terminated, whatever happened after it started. The machine
part (fleet.course.imaging.builder.make_ready) is the one the test hosts' baked layers use.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from fleet.aws import DEFAULT_INSTANCE_TYPE, DEFAULT_KEY_DIR, DEFAULT_USER, cloud, images
from fleet.course.imaging import builder as builders
from fleet.engine import recipe, state
from fleet.course.imaging.builder import BakeRefused
from fleet.errors import InputError

__all__ = ["BakeRefused", "BakeResult", "bake", "take_builder"]


@dataclass
class BakeResult:
    instance: cloud.Instance
    recipe: recipe.Recipe
    removed: list[str]
    image: images.Image
    launched: bool               # the builder was started by this bake (else taken with --builder)


def take_builder(course: str, name: str, region: str | None, inventory=None) -> cloud.Instance:
    """The running instance `name` (name or id) of the course, if it may be a builder."""
    running = [i for i in cloud.course_instances(course, region, states=("running",), builders=True)
               if i.public_ip or i.private_ip]
    found = [i for i in running if name in (i.name, i.id)]
    if not found:
        names = ", ".join(i.name for i in running) or "none"
        raise InputError(f"no running instance {name!r} in course {course} (running: {names})", key="--builder")
    builders.refuse_source(course, [found[0].name, found[0].id], inventory)
    return found[0]


def bake(course: str, builder: str | None = None, inventory: str | None = None, region: str | None = None,
         key_dir: str | Path = DEFAULT_KEY_DIR, user: str = DEFAULT_USER, insecure_host_keys: bool = False,
         reboot: bool = True, instance_type: str = DEFAULT_INSTANCE_TYPE, ami: str | None = None, cidr: str | None = None,
         wait_ssh: bool = True, make_ready: Callable[..., list[str]] = builders.make_ready) -> BakeResult:
    """Launch (or take) a builder, make it ready, image it, terminate it."""
    path = recipe.inventory_path(course, inventory)
    if path is None:
        raise InputError(f"no recipe for course {course}: pass --inventory FILE (or add inventory/{course}.yml)",
                         key="--inventory")
    from fleet.inventory import files as inventory_mod

    recipe_inventory = inventory_mod.load(path)
    rec = recipe.of(recipe_inventory)
    if builder:
        instance = take_builder(course, builder, region, recipe_inventory)
    else:
        instance = cloud.launch_builder(course, instance_type=instance_type, region=region, ami=ami, cidr=cidr,
                                        key_dir=key_dir, wait_ssh=wait_ssh)
    address = instance.public_ip or instance.private_ip or ""
    try:
        one_host = state.state_dir() / "bake" / f"{course}.yml"
        one_host.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = str(cloud.key_path(course, key_dir))
        one_host.write_text(yaml.safe_dump({"name": course, "vars": recipe_inventory.vars,
                                            "hosts": {instance.name: {"address": address, "user": user, "key": key}}},
                                           sort_keys=False))
        removed = make_ready(one_host, instance.name, insecure_host_keys=insecure_host_keys)
        image = images.create(course, instance.id, rec.fingerprint, rec.roles, region, reboot=reboot)
    finally:
        # A builder is used once: prepared for imaging (or failed half way), it is no machine to keep.
        cloud.terminate_builder(course, instance.id, region)
        known = state.state_dir() / "known_hosts"
        if not insecure_host_keys and known.exists():
            subprocess.run(["ssh-keygen", "-R", address, "-f", str(known)], capture_output=True)
    return BakeResult(instance, rec, removed, image, launched=not builder)
