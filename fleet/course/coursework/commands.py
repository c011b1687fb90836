"""What the commands do with student work (behind fleet/cli.py and fleet/cli_cloud.py): collect,
restore, and the guard a teardown passes first. Each returns an exit code or a verdict and
prints for people; bad input raises InputError before any host is touched."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fleet.course.coursework import collect as collecting
from fleet.course.coursework import guard, store, targets
from fleet.course.coursework.restore import choose_collect, restore
from fleet.errors import InputError


def destination(course: str, to: str | None) -> Path:
    return Path(to).expanduser().resolve() if to else store.default_dir(course)


def collect(hosts: str, inventory: str | None, to: str | None, insecure_host_keys: bool, out: Console) -> int:
    from fleet import app

    session = app.Session.open(inventory)
    chosen = targets.resolve(session, session.select(hosts))
    dest = destination(session.inventory.name, to)
    out.print(f"collecting the work of {len(chosen)} student{'s' if len(chosen) != 1 else ''} into {dest}")
    with out.status("collecting") as status:
        finished: list[str] = []

        def done(result: collecting.Collected) -> None:
            finished.append(result.host)
            out.print(collecting.host_line(result), highlight=False, soft_wrap=True)
            status.update(f"collecting: {len(finished)}/{len(chosen)} hosts done")

        results = collecting.collect_all(chosen, app.connect_options(insecure_host_keys), dest,
                                         session.inventory.name, on_done=done)
    collecting.report(results, out)
    return collecting.exit_code(results)


def restore_work(student: str, host: str | None, chosen: str | None, inventory: str | None, to: str | None,
                 overwrite: bool, insecure_host_keys: bool, out: Console) -> int:
    from fleet import app

    session = app.Session.open(inventory)
    student = store.check_student(student, "--student")
    if host is not None and host not in session.inventory.hosts:
        raise InputError(f"unknown host {host!r} in {session.inventory.source}", key="--host")
    if host is None:
        everyone = targets.resolve(session, list(session.inventory.hosts))
        hosts = [t.name for t in everyone if t.student == student]
        if not hosts:
            raise InputError(f"no host of {session.inventory.source} has student {student!r}: pass --host",
                             key="--student")
        host = hosts[0]
    target = targets.resolve(session, [host])[0]
    collect_dir = choose_collect(destination(session.inventory.name, to) / student, chosen)
    done = restore(target, collect_dir, app.connect_options(insecure_host_keys), overwrite)
    out.print(f"restored {student}'s collect {done.collect} onto {done.host} (as {target.user}): "
              f"{len(done.restored)} files written, {len(done.unchanged)} already there, {len(done.kept)} kept",
              highlight=False)
    for kept in done.kept:
        out.print(f"    kept {kept.get('path')!r}: {kept.get('why')}", highlight=False)
    return 0


def before_teardown(session, names: list[str], what: str, *, collect_first: bool, discard: bool,
                    insecure_host_keys: bool, out: Console, unreadable: list[guard.Loss] | None = None,
                    to: str | None = None) -> bool:
    """True when `what` may go ahead: no uncollected work on these hosts, or the instructor said so."""
    from fleet import app

    chosen = targets.resolve(session, names)
    options = app.connect_options(insecure_host_keys)
    course = session.inventory.name
    if collect_first and chosen:
        results = collecting.collect_all(chosen, options, destination(course, to), course,
                                         on_done=lambda r: out.print(collecting.host_line(r), highlight=False,
                                                                     soft_wrap=True))
        collecting.report(results, out)
        if collecting.exit_code(results):
            bad = ", ".join(f"{r.student} on {r.host}" for r in results if r.status != "ok")
            out.print(f"[red]refused:[/] the collect did not finish for {bad}: {what} not done", highlight=False)
            return False
    found = (unreadable or []) + guard.losses(course, chosen, options)
    return guard.decide(found, discard, what, out)


def guard_instances(course: str, instances: list, inventory: str | None, *, collect_first: bool, discard: bool,
                    insecure_host_keys: bool, out: Console, to: str | None = None) -> bool:
    """`terminate`: the course's instances (fleet.aws Instance) about to be destroyed. They are
    reached through `inventory` (default aws:COURSE, the running ones) and matched to its hosts by
    the variable instance_id; an instance no host matches (stopped, say) cannot be read, and counts
    as work that would be lost."""
    from fleet import app
    from fleet.engine.compile import host_vars

    session = app.Session.open(inventory or f"aws:{course}")
    by_id = {}
    for name in session.inventory.hosts:
        value = host_vars(session.inventory, name, session.roleset, {}, session.secrets).get("instance_id")
        if value is not None and value.value:
            by_id[str(value.value)] = name
    last = store.last_collects(session.inventory.name)
    unreadable = []
    for instance in instances:
        if instance.id not in by_id:
            student = next((r.get("student") for h, r in last.items() if h == instance.name), instance.name)
            unreadable.append(guard.Loss(instance.name, str(student),
                                         f"{instance.state}, not reachable: its work cannot be read "
                                         "(start it, then collect)"))
    names = [by_id[i.id] for i in instances if i.id in by_id]
    return before_teardown(session, names, "terminate", collect_first=collect_first, discard=discard,
                           insecure_host_keys=insecure_host_keys, out=out, unreadable=unreadable, to=to)
