"""Where collected work lives on the controller, and what Fleet remembers about it.

DIR/<student>/<stamp>/files/...   the work as it was at that collect (unchanged files are hard
                                  links to the previous collect's copies)
DIR/<student>/<stamp>/manifest.json   every file: path, size, sha256, mtime; what was skipped
Earlier collects are never touched. DIR defaults to collected/<course>/ in the project.

The state folder keeps, per course and host, the last collect (student, time, files, bytes and
the work folder's fingerprint): `coursework.json`, read by the teardown guard and the report.
"""
from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fleet import atomic
from fleet.engine.roles import PROJECT
from fleet.engine.state import state_dir
from fleet.errors import InputError

STUDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
STAMP = re.compile(r"\d{8}T\d{6}Z(-\d+)?")


def default_dir(course: str) -> Path:
    return PROJECT / "collected" / course


def check_student(name: object, where: str) -> str:
    """A student's name names a folder: a plain file name, nothing that could climb out."""
    text = str(name)
    if not STUDENT.fullmatch(text):
        raise InputError(f"expected a student name of letters, digits and _ . @ + - (64 at most, "
                         f"starting with a letter or digit), got {text!r}", key=where)
    return text


def private_dir(path: Path) -> Path:
    """A folder of ours (mode 0700), never a link someone put at that name."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: expected a folder, found something else (a link?)", key="--to")
    return path


def collects(student_dir: Path) -> list[Path]:
    """The student's complete collects, oldest first."""
    if not student_dir.is_dir():
        return []
    return sorted(p for p in student_dir.iterdir()
                  if STAMP.fullmatch(p.name) and not p.is_symlink() and (p / "manifest.json").is_file())


def read_manifest(collect: Path) -> dict[str, Any]:
    return json.loads((collect / "manifest.json").read_text())


def known_hashes(previous: Path | None) -> dict[str, str]:
    """path -> sha256 of the previous collect's files that are really there: the host sends
    everything else."""
    if previous is None:
        return {}
    known = {}
    for entry in read_manifest(previous).get("files", []):
        copy = previous / "files" / entry["path"]
        try:
            info = copy.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_size == entry["size"]:
            known[entry["path"]] = entry["sha256"]
    return known


def new_stamp(student_dir: Path, now: datetime) -> str:
    base = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stamp, n = base, 1
    while (student_dir / stamp).exists() or (student_dir / f".incoming-{stamp}").exists():
        n += 1
        stamp = f"{base}-{n}"
    return stamp


# ---------------------------------------------------------------- what the state folder remembers

def _state_file() -> Path:
    return state_dir() / "coursework.json"


def remember(course: str, host: str, record: dict[str, Any]) -> None:
    path = _state_file()
    with atomic.locked(path.with_name(".coursework.lock")):
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault(course, {})[host] = record
        atomic.replace(path, json.dumps(data, indent=2, sort_keys=True), mode=0o600)


def last_collects(course: str) -> dict[str, dict[str, Any]]:
    """host -> {student, time, files, bytes, fingerprint, collect}; hosts never collected are missing."""
    path = _state_file()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text()).get(course, {})
    except ValueError:
        return {}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


