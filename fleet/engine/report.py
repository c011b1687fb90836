"""What people see: live progress while hosts run, a recap at the end, and the JSON report.
Everything shown has passed through the run's secret masker."""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from fleet import atomic
from fleet.engine.drift import groups as drift_groups
from fleet.engine.drift import plural
from fleet.engine.results import HostResult, RunResult

STYLE = {"ok": "green", "changed": "yellow", "drift": "yellow", "would change": "yellow", "failed": "red",
         "unreachable": "red", "interrupted": "magenta", "skipped": "magenta"}


# Piped or in CI, rich would fold every line at 80 columns, in the middle of a path; there is
# no terminal to fit, so use $COLUMNS when set, else a width no diff line or table reaches.
PIPED_WIDTH = 160


def console_width() -> int | None:
    """None: let rich measure the terminal."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPED_WIDTH


class Reporter:
    def __init__(self, console: Console | None = None, show_diff: bool = False, verbose: bool = False,
                 group: bool = False) -> None:
        self.console = console or Console(stderr=False, highlight=False, width=console_width())
        self.show_diff, self.verbose = show_diff, verbose
        # group: each host gets its one summary line as it finishes; its changes are shown once
        # per group of hosts that changed identically, in the recap (check mode).
        self.group = group
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True)
        self._task: TaskID | None = None   # set by start()
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, total: int, what: str) -> None:
        self._task = self.progress.add_task(what, total=total)
        self.progress.start()

    def host_started(self, name: str) -> None:
        with self._lock:
            self._running.add(name)
            self._describe()

    def host_done(self, result: HostResult) -> None:
        with self._lock:
            self._running.discard(result.host)
            self._describe()
            if self._task is not None:
                self.progress.advance(self._task)
        # soft_wrap: one line per host, however long, never folded
        self.console.print(self._host_line(result), soft_wrap=True)
        if self.group and not self.verbose:
            return
        self._details(result.steps, result.handlers, result.verifies)

    def _details(self, steps: list[Any], handlers: list[str], verifies: list[dict[str, Any]]) -> None:
        for step in steps:
            if step.status in ("changed", "would change", "failed") or self.verbose:
                # The time of the slow changes (installs, clones) says where a long run went.
                took = f" [dim]({step.seconds:.1f} s)[/]" if step.seconds and step.seconds >= 1 else ""
                self.console.print(f"    [{STYLE.get(step.status, 'white')}]{step.status:>12}[/] "
                                   f"[dim]{escape(step.role)}[/] {escape(step.message)}{took}", markup=True,
                                   highlight=False, soft_wrap=True)
                if step.diff and self.show_diff:
                    self.console.print(step.diff.rstrip(), markup=False, highlight=False, soft_wrap=True)
                if step.status == "failed" and step.output:
                    self.console.print("        " + step.output.strip()[-800:].replace("\n", "\n        "),
                                       markup=False, highlight=False, soft_wrap=True)
        for handler in handlers:
            self.console.print(f"    [yellow]{'handler':>12}[/] {escape(handler)}", soft_wrap=True)
        for verify in verifies:
            if not verify["ok"]:
                self.console.print(f"    [red]{'verify':>12}[/] {escape(verify['name'])} failed: "
                                   f"{escape(verify['output'][-300:])}", markup=True, highlight=False, soft_wrap=True)

    def _describe(self) -> None:
        running = sorted(self._running)
        text = ", ".join(running[:4]) + (f" +{len(running) - 4}" if len(running) > 4 else "")
        if self._task is not None:
            self.progress.update(self._task, description=f"running {text}" if running else "finishing")

    def _host_line(self, r: HostResult) -> str:
        counts = f"ok={r.count('ok')} changed={r.count('changed') + r.count('would change')} failed={r.count('failed')}"
        extra = f" — {escape(' '.join(r.error.split()))}" if r.error else ""
        return (f"[{STYLE.get(r.status, 'white')}]{r.status:>11}[/] [bold]{escape(r.host)}[/] {counts} "
                f"({r.seconds:.1f} s){extra}")

    def print_groups(self, groups: list[dict[str, Any]]) -> None:
        """One block per distinct change set, the largest first, then the hosts unlike any other."""
        if not groups:
            return
        hosts = sum(len(g["hosts"]) for g in groups)
        self.console.print(f"\n[bold]{plural(len(groups), 'distinct change set')}[/] over {plural(hosts, 'host')}:",
                           soft_wrap=True)
        shared, unique = [g for g in groups if not g["unique"]], [g for g in groups if g["unique"]]
        for heading, part in (("", shared), ("unlike any other" if shared else "", unique)):
            if heading and part:
                self.console.print(f"\n[bold]{heading}:[/]")
            for group in part:
                self._group(group)
        self.console.print()

    def _group(self, group: dict[str, Any]) -> None:
        bare = not (group["changes"] or group["handlers"] or group["failed_verifies"])
        what = f": {group['status']}" if bare else ""   # unreachable, interrupted, skipped
        self.console.print(f"\n[bold]{plural(len(group['hosts']), 'host')}[/]: {escape(group['label'])}{escape(what)}",
                           soft_wrap=True)
        verifies = [{"name": n, "ok": False, "output": ""} for n in group["failed_verifies"]]
        self._details([_Step(**c) for c in group["changes"]], group["handlers"], verifies)

    def recap(self, run: RunResult) -> None:
        self.progress.stop()
        if self.group:
            self.print_groups(drift_groups({n: _as_dict(r) for n, r in run.hosts.items()}))
        table = Table(title="Recap" + (" (check mode: nothing was changed)" if run.check else ""), show_edge=False)
        for column in ("host", "status", "ok", "changed", "failed", "handlers", "time"):
            table.add_column(column, justify="left" if column in ("host", "status") else "right")
        for r in run.hosts.values():
            table.add_row(r.host, f"[{STYLE.get(r.status, 'white')}]{r.status}[/]", str(r.count("ok")),
                          str(r.count("changed") + r.count("would change")), str(r.count("failed")),
                          str(len(r.handlers)), f"{r.seconds:.1f}s")
        self.console.print(table)
        totals: dict[str, int] = {}
        for r in run.hosts.values():
            totals[r.status] = totals.get(r.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(totals.items()))
        self.console.print(f"[bold]{len(run.hosts)} hosts[/]: {summary} in {run.seconds:.1f} s", highlight=False)
        if run.stopped_reason:
            self.console.print(f"[magenta]stopped:[/] {run.stopped_reason}", highlight=False)


class _Step:
    """A group's change, shaped like a StepResult for printing."""

    def __init__(self, role: str, name: str, status: str, message: str, diff: str | None) -> None:
        self.role, self.name, self.status, self.message, self.diff = role, name, status, message, diff
        self.output, self.seconds = None, None


def _as_dict(result: HostResult) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(result)


def write_json(run: RunResult, path: str | Path) -> None:
    """Write the full per-host, per-step result atomically, readable by its owner only."""
    atomic.replace(Path(path), json.dumps(run.to_json(), indent=2), mode=0o600)
