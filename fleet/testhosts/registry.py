"""Who owns which host index: a process holds an flock per index; hosts left running with
`up --detach` are owned by a JSON registry instead."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from typing import Any, Iterator, Sequence

from fleet.testhosts.common import HELD, MAX_INDEX, REGISTRY, RUN, HostError, TestHost, alive, file_lock

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- index allocation

def try_lock(index: int) -> bool:
    RUN.mkdir(parents=True, exist_ok=True)
    fd = os.open(RUN / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    HELD[index] = fd
    return True


def release(index: int) -> None:
    """Give up this process's claim on an index (teardown does this)."""
    fd = HELD.pop(index, None)
    if fd is not None:
        os.close(fd)


def allocate(n: int) -> list[int]:
    """Claim n free indices for this process; tests, demos and benchmarks never collide."""
    detached = live_detached()
    got: list[int] = []
    for i in range(1, MAX_INDEX + 1):
        if len(got) == n:
            break
        if i not in HELD and i not in detached and try_lock(i):
            if i in live_detached():      # detached between our look and the lock
                release(i)
                continue
            got.append(i)
    if len(got) < n:
        for i in got:
            release(i)
        raise HostError(f"only {len(got)} of {n} host indices are free (1..{MAX_INDEX})")
    return got


def claim_indices(indices: Sequence[int]) -> list[int]:
    detached = live_detached()
    got: list[int] = []
    for i in indices:
        if not 1 <= i <= MAX_INDEX or i in HELD or i in detached or not try_lock(i):
            for j in got:
                release(j)
            raise HostError(f"host index {i} is out of range or in use")
        got.append(i)
    return got


# --------------------------------------------------------------------------- registry

def read_registry() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(REGISTRY.read_text())
    except (FileNotFoundError, ValueError):
        return {}


@contextlib.contextmanager
def _registry_edit() -> Iterator[dict[str, dict[str, Any]]]:
    with file_lock(RUN / "registry.lock"):
        reg = read_registry()
        yield reg
        tmp = REGISTRY.with_suffix(".tmp")
        tmp.write_text(json.dumps(reg, indent=1, sort_keys=True))
        tmp.replace(REGISTRY)             # atomic: readers without the lock never see half a file


def register_host(h: TestHost, detached: bool = False) -> None:
    with _registry_edit() as reg:
        old = reg.get(str(h.index), {})
        reg[str(h.index)] = {"name": h.name, "address": h.address, "pid": h.pid, "start": h._start,
                             "owner": os.getpid(), "detached": detached or old.get("detached", False)}


def unregister_host(index: int) -> None:
    with _registry_edit() as reg:
        reg.pop(str(index), None)


def live_detached() -> set[int]:
    """Indices owned by the registry: detached and their nspawn still running."""
    return {int(k) for k, e in read_registry().items()
            if e.get("detached") and alive(e.get("pid"), e.get("start"))}


def registered(detached_only: bool = False) -> list[TestHost]:
    """Hosts this machine has registered, whoever booted them (or only detached ones: a demo's)."""
    hosts = []
    for k, e in sorted(read_registry().items(), key=lambda kv: int(kv[0])):
        if detached_only and not e.get("detached"):
            continue
        h = TestHost.for_index(int(k))
        h.pid, h._start = e.get("pid"), e.get("start")
        hosts.append(h)
    return hosts
