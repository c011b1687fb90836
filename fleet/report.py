"""What people see: live progress while hosts run, a recap at the end, and the JSON report.
Everything shown has passed through the run's secret masker."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import atomic
from .results import HostResult, RunResult

STYLE = {"ok": "green", "changed": "yellow", "drift": "yellow", "would change": "yellow", "failed": "red",
         "unreachable": "red", "interrupted": "magenta", "skipped": "magenta"}


class Reporter:
    def __init__(self, console: Console | None = None, show_diff: bool = False, verbose: bool = False) -> None:
        self.console = console or Console(stderr=False, highlight=False)
        self.show_diff, self.verbose = show_diff, verbose
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True)
        self._task = None
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
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
            self.progress.advance(self._task)
        self.console.print(self._host_line(result))
        for step in result.steps:
            if step.status in ("changed", "would change", "failed") or self.verbose:
                # The time of the slow changes (installs, clones) says where a long run went.
                took = f" [dim]({step.seconds:.1f} s)[/]" if step.seconds and step.seconds >= 1 else ""
                self.console.print(f"    [{STYLE.get(step.status, 'white')}]{step.status:>12}[/] "
                                   f"[dim]{step.role}[/] {step.message}{took}", markup=True, highlight=False)
                if step.diff and self.show_diff:
                    self.console.print(step.diff.rstrip(), markup=False, highlight=False)
                if step.status == "failed" and step.output:
                    self.console.print("        " + step.output.strip()[-800:].replace("\n", "\n        "),
                                       markup=False, highlight=False)
        for handler in result.handlers:
            self.console.print(f"    [yellow]{'handler':>12}[/] {handler}")
        for verify in result.verifies:
            if not verify["ok"]:
                self.console.print(f"    [red]{'verify':>12}[/] {verify['name']} failed: {verify['output'][-300:]}",
                                   markup=True, highlight=False)

    def _describe(self) -> None:
        running = sorted(self._running)
        text = ", ".join(running[:4]) + (f" +{len(running) - 4}" if len(running) > 4 else "")
        self.progress.update(self._task, description=f"running {text}" if running else "finishing")

    def _host_line(self, r: HostResult) -> str:
        counts = f"ok={r.count('ok')} changed={r.count('changed') + r.count('would change')} failed={r.count('failed')}"
        extra = f" — {r.error}" if r.error else ""
        return f"[{STYLE.get(r.status, 'white')}]{r.status:>11}[/] [bold]{r.host}[/] {counts} ({r.seconds:.1f} s){extra}"

    def recap(self, run: RunResult) -> None:
        self.progress.stop()
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


def write_json(run: RunResult, path: str | Path) -> None:
    """Write the full per-host, per-step result atomically, readable by its owner only."""
    atomic.replace(Path(path), json.dumps(run.to_json(), indent=2), mode=0o600)
