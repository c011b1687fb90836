"""Teardown refuses to destroy uncollected work. Before `terminate` or `demo-down` deletes disks,
each machine's work folder is fingerprinted on the host (names, sizes and times of its files,
read as the course user: cheap, no content is read) and compared with the fingerprint the last
collect recorded. A machine whose work changed since, was never collected, or cannot be read
at all is named with its student and how much would be lost, and the teardown is refused unless
the instructor collects first (`--collect`) or says so (`--discard-student-work`)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rich.console import Console

from fleet.course.coursework import store, wire
from fleet.course.coursework.collect import run_script
from fleet.course.coursework.targets import Target
from fleet.transport.base import PARALLEL, ConnectOptions, Unreachable


@dataclass
class Loss:
    host: str
    student: str
    why: str
    files: int | None = None
    bytes: int | None = None

    def line(self) -> str:
        size = "" if self.bytes is None else f" ({self.files} files, {store.human_bytes(self.bytes)})"
        return f"{self.student} on {self.host}{size}: {self.why}"


def fingerprint(target: Target, options: ConnectOptions) -> dict | str:
    """{fingerprint, files, bytes} of the host's work, {"nouser": True}, or why it cannot be read."""
    try:
        rc, output, mark = run_script(target, options, {"mode": "fingerprint", "roots": target.roots})
        result, _ = wire.parse(output, mark)
    except (Unreachable, wire.HostSideError) as exc:
        return str(exc)
    return str(result["error"]) if result.get("error") else result


def losses(course: str, targets: list[Target], options: ConnectOptions, parallel: int = PARALLEL) -> list[Loss]:
    """The work that tearing these hosts down would lose."""
    last = store.last_collects(course)

    def one(target: Target) -> Loss | None:
        found = fingerprint(target, options)
        if isinstance(found, str):
            return Loss(target.name, target.student, f"its work cannot be read ({found})")
        if found.get("nouser") or not found.get("files"):
            return None    # no course user, or no files: nothing to lose
        record = last.get(target.name) or {}
        size = {"files": int(found["files"]), "bytes": int(found["bytes"])}
        if not record:
            return Loss(target.name, target.student, "never collected", **size)
        if record.get("fingerprint") != found.get("fingerprint") or record.get("student") != target.student:
            return Loss(target.name, target.student, f"changed since its last collect ({record.get('time')})", **size)
        return None

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return [loss for loss in pool.map(one, targets) if loss is not None]


def decide(found: list[Loss], discard: bool, what: str, out: Console) -> bool:
    """True: go ahead with the teardown. Prints the refusal or the warning."""
    if not found:
        return True
    lines = "\n".join(f"  {loss.line()}" for loss in found)
    known = [loss.bytes for loss in found if loss.bytes is not None]
    total = f"{store.human_bytes(sum(known))} in {sum(loss.files or 0 for loss in found)} files" if known else "unknown"
    if discard:
        out.print(f"[yellow]warning:[/] --discard-student-work: {what} destroys the work of {len(found)} "
                  f"student{'s' if len(found) != 1 else ''} (at least {total}):\n{lines}", highlight=False, soft_wrap=True)
        return True
    out.print(f"[red]refused:[/] {what} would destroy student work that was not collected "
              f"({len(found)} student{'s' if len(found) != 1 else ''}, {total}):\n{lines}\n"
              "Collect it first (`invoke collect`, or add --collect), or pass --discard-student-work "
              "to destroy it anyway.", highlight=False, soft_wrap=True)
    return False
