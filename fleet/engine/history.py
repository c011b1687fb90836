"""Each host's last provision (when, and its result), kept per inventory in the state folder
(`last-provision.json`) for `invoke report`. Check runs change nothing, so they are not recorded."""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from fleet.engine.results import RunResult
from fleet.engine.state import state_dir


def _key(inventory_source: str) -> str:
    return inventory_source if inventory_source.startswith("aws:") else str(Path(inventory_source).resolve())


@contextmanager
def _locked() -> Iterator[Path]:
    """Two runs finishing at once must not lose each other's hosts (read, merge, write)."""
    directory = state_dir()
    with open(directory / "last-provision.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory / "last-provision.json"


def record(inventory_source: str, run: RunResult, now: datetime | None = None) -> None:
    when = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    with _locked() as path:
        data = json.loads(path.read_text()) if path.exists() else {}
        hosts = data.setdefault(_key(inventory_source), {})
        for name, result in run.hosts.items():
            if result.status == "skipped":   # never started: its previous provision still stands
                continue
            hosts[name] = {"time": when, "status": result.status,
                           "changed": result.count("changed"), "failed": result.count("failed")}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)


def last(inventory_source: str) -> dict[str, dict[str, Any]]:
    """host -> {time, status, changed, failed}; hosts never provisioned from here are missing."""
    path = state_dir() / "last-provision.json"
    if not path.exists():
        return {}
    try:
        runs: dict[str, dict[str, dict[str, Any]]] = json.loads(path.read_text())
        return runs.get(_key(inventory_source), {})
    except ValueError:
        return {}   # a damaged history only costs the report its "last provision" column
