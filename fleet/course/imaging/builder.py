"""The machine a course image is made from, and how it is made ready: shared by `invoke bake`
(an EC2 builder, fleet.course.imaging.bake) and the test hosts' baked layers (fleet.testhosts.layers).

An image carries whatever is on its source to every machine of the next class, so the source
is a dedicated builder started from the base image, never a class machine: `refuse_source`
refuses a machine that was ever in a handout (fleet.engine.state.record_handout) or has a
student assigned (a `student` variable at any level of the course inventory). `make_ready`
provisions the builder with --verify, checks that a run right after finds no drift, and runs
the prepare script (fleet.course.imaging.imageprep), whose home folders are built from /etc/skel plus
the course's own content.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fleet.engine import state
from fleet.course.imaging import imageprep
from fleet.errors import FleetError
from fleet.inventory.model import Inventory
from fleet.inventory.variables import inventory_layers, merge


class BakeRefused(FleetError):
    """The machine is not fit to be imaged: nothing was imaged."""


HOW_TO_BAKE = ("bake from a clean builder instead: `invoke bake --course {course}` starts a fresh one from the base "
               "image, provisions, verifies, images and terminates it (or `--builder NAME` for a dedicated builder "
               "that was never handed out)")


def refuse_source(course: str, names: Iterable[str], inventory: Inventory | None = None) -> None:
    """Raise BakeRefused when a machine known by any of `names` (its name first, then e.g. its
    instance id) was ever in one of the course's handouts or has a student assigned in the course
    inventory."""
    known = [n for n in names if n]
    names = set(known)
    how = HOW_TO_BAKE.format(course=course)
    if names & state.handed_out(course):
        raise BakeRefused(f"{' ('.join(known[:2])}{')' if len(known) > 1 else ''} was in a handout of course {course}: a student may have used it, and what "
                          f"they left on it (keys, startup files, kernels) would be on every machine booted from "
                          f"the image; {how}")
    if inventory is not None:
        for name in sorted(names & set(inventory.hosts)):
            named = inventory.students.get(name)
            if named is not None and named.named:   # the roster gives this machine to a student
                raise BakeRefused(f"{name} is {named.name}'s machine in the roster ({named.where}): what a student "
                                  f"left on it would be on every machine booted from the image; {how}")
            student = merge(inventory_layers(inventory, inventory.hosts[name])).get("student")
            if student is not None and student.value:
                raise BakeRefused(f"{name} has student {student.value} assigned ({student.source}): what a student "
                                  f"left on it would be on every machine booted from the image; {how}")


def make_ready(inventory: Path, host: str, *, insecure_host_keys: bool = False) -> list[str]:
    """Provision `host` of this (one-host) inventory with --verify, refuse on failure or drift, then
    prepare it for imaging; returns what the prepare script removed."""
    from fleet import app
    from fleet.engine.compile import compile_plans

    run = app.provision(hosts=host, inventory=str(inventory), verify=True, insecure_host_keys=insecure_host_keys)
    if run.exit_code():
        raise BakeRefused(f"provisioning {host} did not succeed (exit {run.exit_code()}): nothing imaged")
    drift = app.provision(hosts=host, inventory=str(inventory), check=True, insecure_host_keys=insecure_host_keys)
    if drift.exit_code():
        raise BakeRefused(f"{host} drifted right after provisioning (check exit {drift.exit_code()}): nothing imaged")
    session = app.Session.open(str(inventory))
    plan = compile_plans(session.inventory, [host], roleset=session.roleset, overrides={}, only_roles=None,
                         secrets=session.secrets, masker=session.masker)[host]
    machine = session.inventory.hosts[host]
    known = None if insecure_host_keys else state.state_dir() / "known_hosts"
    argv = imageprep.ssh_argv(machine.address, machine.user, machine.key, machine.port, known)
    try:
        return imageprep.run_over_ssh(argv, plan.vars, imageprep.home_content(plan.steps))
    except imageprep.PrepareError as exc:
        raise BakeRefused(f"{host}: {exc}") from None
