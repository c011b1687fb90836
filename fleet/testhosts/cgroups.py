"""A cgroup of its own for each test host.

systemd-nspawn with --keep-unit and no machined puts the container under its own cgroup
(`payload/`, beside `supervisor/`). Hosts started by one process all began in that process's
cgroup, so every container's systemd managed the same `payload/system.slice/...` and they
created, killed and removed one another's unit cgroups: "Failed at step CGROUP spawning
/lib/systemd/systemd-remount-fs: No such file or directory" and "Failed to kill control group
... Input/output error" in a booting host's journal, a `degraded` boot, or a boot that stalls
because systemd-user-sessions never ran. So each host's nspawn starts in a cgroup of its own,
in every hierarchy systemd uses (the unified tree, and v1's name=systemd on hybrid machines).
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Joins the cgroups given as arguments (their count first), then execs the command: the same
# process, so the pid and start time the caller recorded stay nspawn's.
_JOIN = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; '
         'exec "$@"')


def hierarchies() -> list[Path]:
    """This process's own cgroup folder in each hierarchy systemd manages."""
    mounts: dict[str, str] = {}
    with open("/proc/mounts") as f:
        for line in f:
            _, where, fstype, options = line.split()[:4]
            if fstype == "cgroup2":
                mounts.setdefault("", where)
            elif fstype == "cgroup" and "name=systemd" in options.split(","):
                mounts.setdefault("name=systemd", where)
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in mounts:
            found.append(Path(mounts[controllers]) / path.lstrip("/"))
    return found


def for_host(name: str) -> list[Path]:
    return [h / f"fleet-{name}" for h in hierarchies()]


def start_inside(name: str, command: list[str]) -> list[str]:
    """`command`, started inside the host's own cgroups (made here)."""
    groups = for_host(name)
    if not groups:
        log.warning("no cgroup hierarchy found: test hosts share one cgroup and may disturb each other's boots")
        return command
    for group in groups:
        group.mkdir(exist_ok=True)
    return ["sh", "-c", _JOIN, "sh", str(len(groups)), *map(str, groups), *command]


def remove(name: str) -> None:
    """Remove the host's cgroups once its container is gone, deepest first (the container's
    systemd leaves its unit folders behind, empty)."""
    for group in for_host(name):
        if not group.is_dir():
            continue
        folders = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for folder in [*folders, group]:
            try:
                folder.rmdir()
            except OSError as e:
                log.warning("cgroup %s not removed: %s", folder, e)
