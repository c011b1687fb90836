"""`invoke restore`: a student's collected work back onto a machine (a new one after a failure,
or after a re-launch). The controller packs the chosen collect as a tar stream; on the host the
course user itself unpacks it under its home (so every file is the user's, and no link there
can lead a write anywhere the user could not write anyway). A file on the host that is newer
than the collected copy is kept unless --overwrite."""
from __future__ import annotations

import io
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from fleet.course.coursework import store, wire
from fleet.course.coursework.collect import run_script
from fleet.course.coursework.targets import Target
from fleet.course.coursework.unpack import name_problem, shown
from fleet.errors import FleetError, InputError
from fleet.transport.base import ConnectOptions


@dataclass
class Restored:
    host: str
    student: str
    collect: str
    restored: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)


def choose_collect(student_dir: Path, chosen: str | None) -> Path:
    found = store.collects(student_dir)
    if not found:
        raise InputError(f"no collected work in {student_dir}", key="--student")
    if chosen is None:
        return found[-1]
    match = [p for p in found if p.name == chosen]
    if not match:
        raise InputError(f"expected one of the collects in {student_dir} ({', '.join(p.name for p in found)}), "
                         f"got {chosen!r}", key="--from")
    return match[0]


def pack(collect: Path) -> bytes:
    """The collect's files as a tar stream, with their times and modes from its manifest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for entry in store.read_manifest(collect).get("files", []):
            why = name_problem(entry.get("path"))
            if why:
                raise FleetError(f"{collect}/manifest.json: {shown(entry.get('path'))}: {why}")
            copy = collect / "files" / entry["path"]
            info = copy.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise FleetError(f"{copy}: expected a regular file in the collect")
            member = tarfile.TarInfo(entry["path"])
            member.size, member.mtime = info.st_size, int(entry.get("mtime_ns", 0)) / 1e9
            member.mode = int(entry.get("mode", 0o644)) & 0o755
            with open(copy, "rb") as handle:
                tar.addfile(member, handle)
    return buffer.getvalue()


def restore(target: Target, collect: Path, options: ConnectOptions, overwrite: bool) -> Restored:
    rc, output, mark = run_script(target, options, {"mode": "restore", "overwrite": overwrite}, pack(collect))
    try:
        result, _ = wire.parse(output, mark)
    except wire.HostSideError as exc:
        raise FleetError(f"{target.name}: restore failed (exit {rc}): {exc}") from None
    if result.get("nouser"):
        raise FleetError(f"{target.name}: there is no user {target.user} on the host: provision it first")
    if result.get("error"):
        raise FleetError(f"{target.name}: restore failed: {result['error']}")
    return Restored(target.name, target.student, collect.name, list(result.get("restored", [])),
                    list(result.get("unchanged", [])), [k for k in result.get("kept", []) if isinstance(k, dict)])
