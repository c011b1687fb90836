"""The project's own state folder (default `.fleet/`, never committed): known_hosts, the
course secrets, and the last run's failed hosts for `--hosts @failed`."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .roles import PROJECT


def state_dir() -> Path:
    path = Path(os.environ.get("FLEET_STATE_DIR") or PROJECT / ".fleet")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _runs_file() -> Path:
    return state_dir() / "last-runs.json"


def remember_failed(inventory_source: str, failed: list[str]) -> None:
    path = _runs_file()
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[str(Path(inventory_source).resolve()) if not inventory_source.startswith("aws:") else inventory_source] = failed
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=2))
    os.replace(tmp, path)


def last_failed(inventory_source: str) -> list[str] | None:
    path = _runs_file()
    if not path.exists():
        return None
    key = str(Path(inventory_source).resolve()) if not inventory_source.startswith("aws:") else inventory_source
    return json.loads(path.read_text()).get(key)
