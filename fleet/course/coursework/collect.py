"""`invoke collect`: each selected host's student work, read on the host as the course user and
unpacked on the controller into a new collect folder per student (see store.py). Incremental:
the host is told the hashes of the files the last collect already has and sends only the rest,
in one round trip. Hosts run in parallel; a line per host as it finishes, then a table."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from fleet.course.coursework import store, wire
from fleet.course.coursework.targets import Target
from fleet.course.coursework.unpack import shown, unpack
from fleet.engine.results import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from fleet.engine.state import state_dir
from fleet.errors import FleetError
from fleet.transport.base import PARALLEL, ConnectOptions, Unreachable
from fleet.transport.connection import connect


@dataclass
class Collected:
    host: str
    student: str
    status: str = "ok"            # ok, failed, unreachable
    files: int = 0
    bytes: int = 0
    changed: int = 0
    skipped: list[dict] = field(default_factory=list)
    message: str = ""
    folder: str | None = None
    fingerprint: str | None = None


def run_script(target: Target, options: ConnectOptions, params: dict, payload: bytes = b"") -> tuple[int, str, str]:
    """Run hostside.py on the target's host as its course user: (exit status, output, mark)."""
    text, mark = wire.script(target.user, params, payload)
    conn = connect(target.host, options, state_dir())
    conn.open()
    try:
        rc, output = conn.run_script(text)
    finally:
        conn.close()
    return rc, output, mark


def collect_one(target: Target, options: ConnectOptions, dest: Path, course: str, now: datetime) -> Collected:
    done = Collected(target.name, target.student)
    student_dir = store.private_dir(dest / target.student)
    earlier = store.collects(student_dir)
    previous = earlier[-1] if earlier else None
    params = {"mode": "collect", "roots": target.roots, "max_bytes": target.max_bytes,
              "known": store.known_hashes(previous)}
    try:
        rc, output, mark = run_script(target, options, params)
    except Unreachable as exc:
        done.status, done.message = "unreachable", str(exc)
        return done
    # The controller's own limit: base64 is 4/3 of the bytes; the manifest needs some room too.
    if len(output) > target.max_bytes * 4 // 3 + 16_000_000:
        done.status, done.message = "failed", f"the host sent {len(output)} bytes, over collect_max_mb: refused"
        return done
    try:
        result, payload = wire.parse(output, mark)
    except wire.HostSideError as exc:
        done.status, done.message = "failed", f"{exc} (exit {rc})"
        return done
    if result.get("nouser"):
        done.message = f"no user {target.user} on the host: no work to collect"
        return done
    done.skipped = [s for s in result.get("skipped", []) if isinstance(s, dict)]
    if result.get("error"):
        done.status, done.message = "failed", str(result["error"])
        return done
    stamp = store.new_stamp(student_dir, now)
    incoming = student_dir / f".incoming-{stamp}"
    (incoming / "files").mkdir(mode=0o700, parents=True)
    files: list[dict[str, Any]] = result["files"] if isinstance(result.get("files"), list) else []
    problems = unpack(payload, files, incoming / "files", target.max_bytes,
                      previous / "files" if previous else None)
    if problems:
        shutil.rmtree(incoming)
        done.status = "failed"
        done.message = "refused what the host sent, nothing kept: " + "; ".join(problems[:10]) + (
            f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        return done
    done.files, done.bytes = len(files), sum(int(f.get("size", 0)) for f in files)
    done.changed = sum(1 for f in files if f.get("sent"))
    done.fingerprint = str(result.get("fingerprint"))
    manifest = {"course": course, "host": target.name, "student": target.student, "time": now.isoformat(timespec="seconds"),
                "roots": target.roots, "fingerprint": done.fingerprint, "files": files, "skipped": done.skipped,
                "bytes": done.bytes, "changed": done.changed, "previous": previous.name if previous else None}
    (incoming / "manifest.json").write_text(json.dumps(manifest, indent=1))
    final = student_dir / stamp
    incoming.rename(final)
    done.folder = str(final)
    store.remember(course, target.name, {"student": target.student, "time": manifest["time"], "files": done.files,
                                         "bytes": done.bytes, "fingerprint": done.fingerprint, "collect": str(final)})
    return done


def collect_all(targets: list[Target], options: ConnectOptions, dest: Path, course: str,
                on_done: Callable[[Collected], None] = lambda c: None, parallel: int = PARALLEL) -> list[Collected]:
    now = store.now_utc()
    store.private_dir(dest)

    def one(target: Target) -> Collected:
        try:
            result = collect_one(target, options, dest, course, now)
        except (OSError, FleetError) as exc:   # the controller's own disk: that student fails, not the run
            result = Collected(target.name, target.student, "failed", message=f"on the controller: {exc}")
        on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(pool.map(one, targets))


def exit_code(results: list[Collected]) -> int:
    statuses = {r.status for r in results}
    return EXIT_FAILED if "failed" in statuses else EXIT_UNREACHABLE if "unreachable" in statuses else EXIT_OK


def host_line(r: Collected) -> str:
    if r.status != "ok":
        return f"[red]{r.status}[/] {r.host} ({r.student}): {r.message}"
    if r.folder is None:
        return f"[green]ok[/] {r.host} ({r.student}): {r.message}"
    text = (f"[green]ok[/] {r.host} ({r.student}): {r.files} files, {store.human_bytes(r.bytes)}, "
            f"{r.changed} changed since the last collect -> {r.folder}")
    for s in r.skipped:
        text += f"\n    skipped {shown(s.get('path'))}: {s.get('why')}"
    return text


def summary_table(results: list[Collected]) -> Table:
    table = Table(title="Collected", show_edge=False)
    for column in ("student", "host", "files", "bytes", "changed", "skipped", "result"):
        table.add_column(column, justify="right" if column in ("files", "bytes", "changed", "skipped") else "left")
    for r in sorted(results, key=lambda r: r.student):
        table.add_row(r.student, r.host, str(r.files), store.human_bytes(r.bytes), str(r.changed), str(len(r.skipped)),
                      "ok" if r.status == "ok" else f"[red]{r.status}[/]")
    table.add_section()
    table.add_row("total", f"{len(results)} hosts", str(sum(r.files for r in results)),
                  store.human_bytes(sum(r.bytes for r in results)), str(sum(r.changed for r in results)),
                  str(sum(len(r.skipped) for r in results)), f"{sum(r.status == 'ok' for r in results)} ok")
    return table


def report(results: list[Collected], out: Console) -> None:
    out.print(summary_table(results))
