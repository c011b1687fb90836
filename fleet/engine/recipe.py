"""A course's recipe and its fingerprint: what an image baked from the course has installed.

The recipe is the course-wide part of an inventory: its roles, the knob values that change
what is installed (role defaults < the inventory's `vars`) and the role files themselves
(steps, defaults, specs, shipped files, templates). Group and host levels are left out on
purpose: they are per-host values, and `provision` converges them on every machine after it
boots from the image. An image is a cache of a provisioned machine, never the truth: a stale
one only costs the time of installing the difference.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.engine.roles import ENGINE_DEFAULTS, PROJECT, TEMPLATES_DIR, RoleSet
from fleet.errors import InputError
from fleet.inventory.model import Inventory
from fleet.inventory.variables import merge

# Knobs that only shape per-host configuration (written and restarted by `provision` on each
# machine); a change of them must not make every image stale. Secret knobs are left out too.
PER_HOST_KNOBS = frozenset({
    "jupyter_ip", "jupyter_port", "jupyter_auth", "jupyter_token", "jupyter_password",
    "autostop_enabled", "autostop_idle_minutes", "autostop_interval", "autostop_ssh_check",
    "autostop_poweroff_command", "clusters_engines",
})
# Engine knobs that change what is installed, beside the roles' own.
ENGINE_KNOBS = ("course_user", "python_installer", "uv_version", "package_source")
FINGERPRINT_LENGTH = 16


@dataclass(frozen=True)
class Recipe:
    course: str
    roles: tuple[str, ...]
    knobs: dict[str, Any]
    files: dict[str, str]          # path relative to the project -> sha256

    @property
    def fingerprint(self) -> str:
        doc = {"roles": list(self.roles), "knobs": self.knobs, "files": self.files}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def of(inventory: Inventory, roleset: RoleSet | None = None) -> Recipe:
    """The recipe of an inventory's course-wide level (raw values: Jinja is kept as written)."""
    roleset = roleset or RoleSet()
    merged = merge(roleset.default_layers() + [(f"{inventory.source}: vars", inventory.vars)])
    roles = list(merged["roles"].value or [])
    if not roles:
        raise InputError("the course has no roles at its `vars` level, so there is nothing to bake",
                         file=inventory.source, key="vars.roles")
    roleset.check_names(roles, merged["roles"].source)
    knobs: dict[str, Any] = {k: merged[k].value for k in ENGINE_KNOBS if k in merged}
    files: dict[str, str] = {_rel(ENGINE_DEFAULTS): _sha(ENGINE_DEFAULTS)}
    for name in roles:
        role = roleset.roles[name]
        for knob in sorted(set(role.defaults) | {k for k in merged if k.startswith(role.prefix)}):
            rule = role.spec.get(knob, {})
            if knob in PER_HOST_KNOBS or rule.get("secret") or knob not in merged:
                continue
            knobs[knob] = merged[knob].value
        files.update(_tree(role.path))
    files.update(_tree(TEMPLATES_DIR))
    return Recipe(inventory.name, tuple(roles), knobs, files)


def _tree(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {_rel(p): _sha(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:                 # a site role outside the project (FLEET_ROLES_PATH)
        return str(path.resolve())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inventory_path(course: str, inventory: str | Path | None = None) -> Path | None:
    """The course's recipe: `--inventory FILE`, else inventory/<course>.yml if there is one."""
    if inventory:
        path = Path(inventory)
        if not path.is_file():
            raise InputError(f"no such inventory file {path}", key="--inventory")
        return path
    default = PROJECT / "inventory" / f"{course}.yml"
    return default if default.is_file() else None


def for_course(course: str, inventory: str | Path | None = None, roleset: RoleSet | None = None) -> Recipe | None:
    """The course's recipe, or None when it has no recipe inventory (launch then uses the base AMI)."""
    from fleet.inventory import files as inventory_mod

    path = inventory_path(course, inventory)
    return of(inventory_mod.load(path), roleset) if path else None
