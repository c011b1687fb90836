"""The project's own state folder (default `.fleet/`, never committed): known_hosts, the
course secrets, and the last run's failed hosts for `--hosts @failed`."""
from __future__ import annotations

import json
import os
from pathlib import Path

from fleet import atomic
from fleet.engine.roles import PROJECT


def state_dir() -> Path:
    path = Path(os.environ.get("FLEET_STATE_DIR") or PROJECT / ".fleet")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _runs_file() -> Path:
    return state_dir() / "last-runs.json"


def remember_failed(inventory_source: str, failed: list[str]) -> None:
    """Record this inventory's failed hosts; runs of other inventories finishing at the same
    time keep theirs (locked read-modify-write, then an atomic replace)."""
    path = _runs_file()
    with atomic.locked(path.with_name(".last-runs.lock")):
        runs = json.loads(path.read_text()) if path.exists() else {}
        runs[_key(inventory_source)] = failed
        atomic.replace(path, json.dumps(runs, indent=2), mode=0o600)


def _key(inventory_source: str) -> str:
    return str(Path(inventory_source).resolve()) if not inventory_source.startswith("aws:") else inventory_source


def last_failed(inventory_source: str) -> list[str] | None:
    path = _runs_file()
    if not path.exists():
        return None
    runs: dict[str, list[str]] = json.loads(path.read_text())
    return runs.get(_key(inventory_source))


# ------------------------------------------------------------------ handouts

def _handouts_file() -> Path:
    return state_dir() / "handouts.json"


def record_handout(course: str, hosts: list[str] | tuple[str, ...] | set[str]) -> None:
    """Remember that these machines (names, and instance ids where known) were handed to students:
    `bake` never images one of them (fleet.course.imaging.builder). Only ever added to."""
    path = _handouts_file()
    with atomic.locked(path.with_name(".handouts.lock")):
        data = json.loads(path.read_text()) if path.exists() else {}
        data[course] = sorted(set(data.get(course, [])) | {str(h) for h in hosts})
        atomic.replace(path, json.dumps(data, indent=2), mode=0o600)


def handed_out(course: str) -> set[str]:
    """Every machine name or id of the course that was ever in a handout."""
    path = _handouts_file()
    return set(json.loads(path.read_text()).get(course, [])) if path.exists() else set()
