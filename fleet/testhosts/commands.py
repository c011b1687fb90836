"""`invoke demo` and `invoke demo-down`: printing and exit codes over fleet/testhosts/demo.py (described in
fleet/commands/local.py; fleet.cli need not import the test hosts)."""
from __future__ import annotations

from fleet import app
from fleet.cli import user_errors
from fleet.engine.results import EXIT_INPUT


@user_errors
def demo(count: int, keep: bool) -> int:
    from fleet.testhosts.demo import run_demo

    return run_demo(count, keep)


@user_errors
def demo_down(collect_first: bool, discard: bool) -> int:
    from fleet.engine.state import state_dir
    from fleet.testhosts.demo import LOCAL_INVENTORY, stop_demo
    from fleet.transport.keeper import stop

    if LOCAL_INVENTORY.exists():   # the demo's hosts' disks go: their students' work first
        from fleet.course.coursework.commands import before_teardown

        session = app.Session.open(str(LOCAL_INVENTORY))
        if not before_teardown(session, list(session.inventory.hosts), "demo-down", collect_first=collect_first,
                               discard=discard, insecure_host_keys=True, out=app.console):
            return EXIT_INPUT
    stop(state_dir())  # its connections led to the demo's hosts
    stop_demo()
    return 0
