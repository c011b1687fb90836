"""The local commands' printing and exit codes (their options are described in fleet/commands/local.py;
demo and bench have faces of their own: fleet/testhosts/commands.py, bench/command.py)."""
from __future__ import annotations

import functools
import getpass
import os
import subprocess
import sys
from pathlib import Path

from invoke import Exit
from rich.table import Table

from fleet import app, atomic
from fleet.course import access
from fleet.engine.results import EXIT_INPUT
from fleet.errors import FleetError, InputError

console = app.console


def user_errors(func):
    """Bad input: one clear message, exit 1, nothing touched. No tracebacks for user errors."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            console.print(f"[red]error:[/] {exc}", highlight=False, markup=True)
            raise Exit(code=EXIT_INPUT) from None
        except FleetError as exc:
            console.print(f"[red]error:[/] {exc}", highlight=False)
            raise Exit(code=2) from None
    return wrapper


@user_errors
def provision(ask_sudo_password: bool = False, **kwargs) -> None:
    password = None
    if ask_sudo_password:
        password = os.environ.get("FLEET_SUDO_PASSWORD") or getpass.getpass("sudo password: ")
    run = app.provision(sudo_password=password, **kwargs)
    code = run.exit_code()
    if code:
        raise Exit(code=code)


@user_errors
def show_vars(host: str, inventory: str | None, set_: list[str] | None) -> None:
    console.print(app.show_vars(host, inventory, set_))


@user_errors
def facts(hosts: str, inventory: str | None, insecure_host_keys: bool = False) -> None:
    from fleet.engine.hostfacts import SYSTEM, gather

    session = app.Session.open(inventory)
    names = session.select(hosts)
    found = gather([session.inventory.hosts[n] for n in names], [SYSTEM], app.connect_options(insecure_host_keys))
    table = Table(title="Facts", show_edge=False)
    for column in ("host", "os", "arch", "cpus", "memory", "disk free", "python", "uptime"):
        table.add_column(column)
    failed = False
    for name, result in found.items():
        if isinstance(result, str):
            failed = True
            table.add_row(name, f"[red]{result}[/]", "", "", "", "", "", "")
            continue
        s = result.get(SYSTEM.key, {})
        table.add_row(name, s.get("os", "?"), s.get("arch", "?"), s.get("cpus", "?"), f"{s.get('memory_gib', '?')} GiB",
                      s.get("disk_free", "?"), s.get("python", "?"), f"{float(s.get('uptime_s', 0)) / 3600:.1f} h")
    console.print(table)
    if failed:
        raise Exit(code=3)


@user_errors
def tunnel(host: str, inventory: str | None, local_port: object, run: bool) -> None:
    local = access.parse_local_port(local_port)
    session = app.Session.open(inventory)
    if host not in session.inventory.hosts:
        raise InputError(f"unknown host {host!r} in {session.inventory.source}", key="--host")
    reach = access.access(session, host, local)
    # The URL holds the token: it is printed here on purpose, for the person who asked.
    print(reach["tunnel"])
    print(reach["url"])
    if run:
        raise Exit(code=subprocess.call(reach["argv"]))


@user_errors
def handout(hosts: str, inventory: str | None, fmt: str, output: str | None, bundle: str | None = None) -> None:
    session = app.Session.open(inventory)
    if bundle:
        written = access.bundle(session, hosts, bundle)
        for student, folder in written:
            console.print(f"{student}: {folder}", highlight=False)
        console.print(f"wrote {len(written)} student bundles under {bundle} (each folder is one student's: their "
                      "key, tunnel commands, URL with token; hand each student theirs only)")
        return
    text, count = access.handout(session, hosts, fmt)
    if output:
        # The handout holds tokens: owner-only, written whole.
        path = Path(output)
        atomic.replace(path, text, mode=0o600)
        console.print(f"wrote {count} rows to {path} (mode 0600: the instructor's copy, with every student's "
                      f"token; hand students their own `--bundle` folder instead)")
    else:
        sys.stdout.write(text)


@user_errors
def lock(inventory: str | None, upgrade: bool, python: str | None) -> None:
    path, summary = app.lock(inventory, upgrade=upgrade, python=python)
    table = Table(title=f"Wrote {path}", show_edge=False)
    for column in ("venv", "packages", "changed since the last lock"):
        table.add_column(column)
    for venv, count, moved in summary:
        table.add_row(venv, str(count), ", ".join(moved) if moved else "-")
    console.print(table)
    console.print("Every host installs exactly this lock on its next `invoke provision`; commit the file.")


@user_errors
def students(inventory: str | None) -> None:
    session = app.Session.open(inventory)
    table = Table(title=f"Students of {session.inventory.name}", show_edge=False)
    for column in ("student", "email", "host", "address", "login", "key", "opens"):
        table.add_column(column)
    for name in session.inventory.hosts:
        row = access.access(session, name)
        values = session.values(name)
        opens = "tunnel to Jupyter" + (", shell" if values["student_ssh"] == "shell" else "")
        opens += " (sudo)" if values["student_sudo"] else ""
        student = session.inventory.students[name]
        key = "own key (roster)" if row["own_key"] else str(session.secrets.students.private_path(row["student"]))
        table.add_row(row["student"] + ("" if student.named else " (placeholder)"), row["email"], name,
                      row["address"], row["login"], key, opens)
    console.print(table)


@user_errors
def gpus(hosts: str, inventory: str | None, insecure_host_keys: bool = False) -> None:
    from fleet.engine.hostfacts import gather
    from roles.mxnet.gpu import GPU_FACT, choose_mxnet_build, gpu_table_rows

    session = app.Session.open(inventory)
    names = session.select(hosts)
    found = gather([session.inventory.hosts[n] for n in names], [GPU_FACT], app.connect_options(insecure_host_keys))

    results, errors = {}, {}
    for name, result in found.items():
        if isinstance(result, str):
            errors[name] = result
            continue
        values = session.values(name)
        facts = result[GPU_FACT.key]
        results[name] = (facts, choose_mxnet_build(facts, prefer=values.get("mxnet_build", "auto"),
                                                   cuda=values.get("mxnet_cuda") or None,
                                                   allow_cpu_fallback=bool(values.get("mxnet_allow_cpu_fallback"))))
    rows = gpu_table_rows(results)
    table = Table(title="GPUs", show_edge=False)
    columns = list(rows[0]) if rows else ["host"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(row[c]) for c in columns])
    for name, error in errors.items():
        table.add_row(name, f"[red]{error}[/]", *[""] * (len(columns) - 2))
    console.print(table)
    if errors:
        raise Exit(code=3)


@user_errors
def report(hosts: str, inventory: str | None, output: str, json_path: str | None, with_urls: bool,
           insecure_host_keys: bool = False) -> None:
    from fleet.course.classreport import build

    done = build(hosts, inventory, output, json_path=json_path, with_urls=with_urls,
                 insecure_host_keys=insecure_host_keys)
    counts = ", ".join(f"{n} {s}" for s, n in done["counts"].items())
    console.print(f"wrote {done['path']}{' (mode 0600: it contains tokens)' if with_urls else ''}: "
                  f"{done['hosts']} hosts ({counts}), {done['groups']} drift group{'s' if done['groups'] != 1 else ''}, "
                  f"Jupyter answering on {done['answering']} of {done['probed']}", soft_wrap=True)


@user_errors
def disconnect() -> None:
    from fleet.engine.state import state_dir
    from fleet.transport.keeper import disconnect as retire

    reply = retire(state_dir())
    if reply is None:
        console.print("no SSH connections are kept for this state folder")
        return
    closed, in_use = reply["closed"], reply["in_use"]
    message = f"closed {closed} kept SSH connection{'s' if closed != 1 else ''}"
    if in_use:
        message += f"; {in_use} in use by a running command close when its script is done"
    console.print(message)


@user_errors
def collect(hosts: str, inventory: str | None, to: str | None, insecure_host_keys: bool = False) -> None:
    from fleet.course.coursework.commands import collect as run

    code = run(hosts, inventory, to, insecure_host_keys, console)
    if code:
        raise Exit(code=code)


@user_errors
def restore(student: str, host: str | None, from_: str | None, inventory: str | None, to: str | None,
            overwrite: bool = False, insecure_host_keys: bool = False) -> None:
    from fleet.course.coursework.commands import restore_work

    restore_work(student, host, from_, inventory, to, overwrite, insecure_host_keys, console)
