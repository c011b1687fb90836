"""Baked layers: a provisioned host turned into a cached lower layer that hosts boot from."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from fleet.testhosts.base import lower_dirs
from fleet.testhosts.common import LAYERS, HostError, TestHost, alive, layer_stamp, wipe
from fleet.testhosts.hosts import boot, stop, teardown, unmount

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- baked layers

# written per host by _prepare, so they must not come from a layer
_PER_HOST_FILES = ("etc/hostname", "etc/hosts", "etc/machine-id")


def bake_course(inventory: Path, name: str, builder: TestHost | None = None,
                info: Mapping[str, Any] | None = None) -> Path:
    """A course's baked layer, made the way `invoke bake` makes an EC2 image (fleet.course.imaging.bake): a
    builder booted fresh from the base (or `builder`, refused when it was in one of the course's
    handouts or has a student assigned: fleet.course.imaging.builder.refuse_source), provisioned with the
    course's `vars`, verified, checked for drift and prepared (fleet.course.imaging.builder.make_ready: homes
    from /etc/skel plus the course's content), then turned into the layer `name` and torn down.
    The fleet's state (known hosts, secrets) is that of the caller (FLEET_STATE_DIR)."""
    from fleet.course.imaging import builder as builders
    from fleet.engine import state
    from fleet.inventory import files as inventory_mod
    from fleet.transport import keeper

    course = inventory_mod.load(inventory)
    if builder is not None:
        builders.refuse_source(course.name, [builder.name, builder.address], course)
    host = builder if builder is not None else boot(1)[0]
    try:
        one_host = state.state_dir() / "bake" / f"{course.name}.yml"
        one_host.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        one_host.write_text(yaml.safe_dump({"name": course.name, "vars": course.vars, "hosts": {host.name: {
            "address": host.address, "user": host.user, "port": host.port, "key": str(host.key)}}}, sort_keys=False))
        removed = builders.make_ready(one_host, host.name)
        keeper.stop(state.state_dir())          # no connection left open to a machine about to shut down
    except BaseException:
        if builder is None:
            teardown([host])
        raise
    return bake_layer(host, name, None, {"course": course.name, "removed": removed, **dict(info or {})})


def bake_layer(h: TestHost, name: str, prepare: str | None, info: Mapping[str, Any] | None = None) -> Path:
    """Turn a provisioned host into a cached layer that hosts can boot from; the host is torn down.

    `prepare` is the prepare-for-imaging script (fleet.course.imaging.imageprep), run as root on the host
    (None: it already ran, as bake_course runs it). Then the host shuts down and its upper dir, renamed (same filesystem: no copy), becomes
    LAYERS/name, an extra lower layer over the base. Overlayfs honours the whiteouts and
    opaque dirs a lower layer carries, so what the provision deleted stays deleted.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}", name):
        raise HostError(f"bad layer name {name!r}: letters, digits, '.', '_' and '-'")
    dest = LAYERS / name
    if dest.exists():
        if any(str(dest) in lowers for lowers in lower_dirs()):
            raise HostError(f"layer {name} exists and hosts are booted from it; tear them down first")
        layer_stamp(dest).unlink(missing_ok=True)
        wipe(dest)
    p = subprocess.run(h.ssh_command("sudo -n bash -s"), input=prepare, text=True, capture_output=True,
                       timeout=300) if prepare is not None else None
    if p is not None and p.returncode:
        raise HostError(f"{h.name}: preparing for imaging failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    stop(h)
    if alive(h.pid, h._start):
        raise HostError(f"{h.name} did not shut down; not baked")
    unmount(h)
    LAYERS.mkdir(parents=True, exist_ok=True)
    tmp = LAYERS / f".{name}.tmp"
    wipe(tmp)
    h.upper.rename(tmp)
    for rel in _PER_HOST_FILES:
        (tmp / rel).unlink(missing_ok=True)
    tmp.rename(dest)
    stamp = {"name": name, "from": h.name, "baked": time.strftime("%Y-%m-%dT%H:%M:%S"), **dict(info or {})}
    layer_stamp(dest).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")   # last: marks it complete
    teardown([h])
    return dest




def layer_info(layer: Path) -> dict[str, Any]:
    try:
        return json.loads(layer_stamp(Path(layer)).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def remove_layer(layer: Path) -> None:
    layer = Path(layer)
    if any(str(layer) in lowers for lowers in lower_dirs()):
        raise HostError(f"{layer} is in use by booted hosts")
    layer_stamp(layer).unlink(missing_ok=True)
    wipe(layer)
