"""Which student's work lives where: per host, the student (the host's `student` variable, else
the host's name), the course user it belongs to, the folders that make up the work (the Jupyter
root folder and the knob `collect_paths`) and the size limit `collect_max_mb`. Checked before
any host is touched."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from fleet.course.coursework.store import check_student
from fleet.errors import InputError, InputErrors
from fleet.inventory.model import Host


@dataclass
class Target:
    name: str
    host: Host
    student: str
    user: str
    roots: list[str]
    max_bytes: int


def work_roots(values: dict, where: str) -> list[str]:
    roots = [str(values.get("jupyter_notebook_dir") or f"/home/{values.get('course_user')}/notebooks")]
    extra = values.get("collect_paths") or []
    if not isinstance(extra, list):
        raise InputError(f"expected a list of paths under the course user's home, got {extra!r}",
                         file=where, key="collect_paths")
    for path in extra:
        pure = PurePosixPath(str(path))
        if not str(path).strip() or ".." in pure.parts:
            raise InputError(f"expected a path under the course user's home without '..', got {path!r}",
                             file=where, key="collect_paths")
        roots.append(str(pure))
    return roots


def max_bytes(values: dict, where: str) -> int:
    raw = values.get("collect_max_mb", 100)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise InputError(f"expected a number of megabytes above 0, got {raw!r}", file=where, key="collect_max_mb")
    return int(raw * 1_000_000)


def resolve(session, names: list[str]) -> list[Target]:
    """The targets of the selected hosts, or one InputErrors naming every problem."""

    found, errors = [], []
    seen: dict[str, str] = {}   # student -> host
    for name in names:
        values = session.values(name)
        where = f"{session.inventory.source} (host {name})"
        try:
            student = check_student(values.get("student") or name, f"hosts.{name}.student")
            if student in seen:
                raise InputError(f"student {student!r} is also the student of {seen[student]}: each student's "
                                 "work needs a folder of its own", file=where, key="student")
            seen[student] = name
            user = str(values.get("course_user") or "")
            if not user:
                raise InputError("expected the course user's name", file=where, key="course_user")
            found.append(Target(name, session.inventory.hosts[name], student, user,
                                work_roots(values, where), max_bytes(values, where)))
        except InputError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else InputErrors(errors)
    return found
