"""The state folder under real concurrency: several processes start together (a barrier) and
race for the course secret and for last-runs.json, as runs started by two people at once do."""
from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from fleet.engine import state
from fleet.errors import FleetError
from fleet.engine.secrets import CourseSecrets, Masker

RACERS = 8
ROUNDS = 15
_fork = multiprocessing.get_context("fork")


def _race(target, args_per_racer: list[tuple]) -> list:
    """Run target(barrier, queue, *args) in one process per args tuple, released together."""
    barrier, queue = _fork.Barrier(len(args_per_racer)), _fork.Queue()
    procs = [_fork.Process(target=_catching, args=(target, barrier, queue, *args)) for args in args_per_racer]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
    return results


def _catching(target, barrier, queue, *args) -> None:
    try:
        queue.put(("ok", target(barrier, *args)))
    except BaseException as exc:  # the parent asserts on it: a crash is a failure, not a hang
        queue.put(("error", f"{exc.__class__.__name__}: {exc}"))


def _token(barrier, folder: str) -> tuple[str, bytes]:
    secrets = CourseSecrets(Path(folder), "lab", Masker())
    barrier.wait()
    token = secrets.host_secret("h1")
    return token, (Path(folder) / "lab.key").read_bytes()


def test_runs_starting_together_share_one_full_course_key(tmp_path):
    empty_key_token = hmac.new(b"", b"h1/jupyter", hashlib.sha256).hexdigest()[:48]
    for round_ in range(ROUNDS):
        folder = tmp_path / f"round{round_}" / "secrets"
        results = _race(_token, [(str(folder),)] * RACERS)
        assert all(kind == "ok" for kind, _ in results), results
        tokens = {value[0] for _, value in results}
        keys = {value[1] for _, value in results}
        assert len(tokens) == 1 and len(keys) == 1, f"round {round_}: {len(keys)} keys seen"
        key = keys.pop()
        assert len(key) == 32 and key == (folder / "lab.key").read_bytes()
        assert tokens.pop() != empty_key_token
        assert (folder / "lab.key").stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".lab.key.lock")) == ["lab.key"]


def test_a_damaged_course_key_is_refused_not_used(tmp_path):
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "lab.key").write_bytes(b"")      # what a crash of the old code could leave
    with pytest.raises(FleetError, match=r"lab\.key: expected a 32-byte course secret, found 0 bytes"):
        CourseSecrets(folder, "lab", Masker()).host_secret("h1")


def _remember(barrier, folder: str, index: int) -> None:
    os.environ["FLEET_STATE_DIR"] = folder
    barrier.wait()
    state.remember_failed(f"/courses/c{index}.yml", [f"h{index}"])


def test_runs_finishing_together_lose_no_update_to_last_runs(tmp_path):
    for round_ in range(ROUNDS):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        results = _race(_remember, [(str(folder), i) for i in range(RACERS)])
        assert all(kind == "ok" for kind, _ in results), results
        runs = json.loads((folder / "last-runs.json").read_text())
        assert runs == {f"/courses/c{i}.yml": [f"h{i}"] for i in range(RACERS)}, f"round {round_}"
        assert (folder / "last-runs.json").stat().st_mode & 0o777 == 0o600
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
