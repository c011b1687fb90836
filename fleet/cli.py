"""Command implementations behind tasks.py: print for people, exit with the right code."""
from __future__ import annotations

import csv
import functools
import getpass
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

from invoke import Exit
from rich.table import Table

from . import app
from .errors import FleetError, InputError
from .results import EXIT_INPUT

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
    from .hostfacts import SYSTEM, gather

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


def _access(session: app.Session, name: str, local_port: int | None = None) -> dict:
    from .compile import host_vars

    host = session.inventory.hosts[name]
    values = {k: v.value for k, v in host_vars(session.inventory, name, session.roleset, {}, session.secrets).items()}
    port = int(values["jupyter_port"])
    local = int(local_port or port)
    ssh = ["ssh", "-N", "-L", f"{local}:localhost:{port}"]
    if host.key:
        ssh += ["-i", host.key]
    if host.port and host.port != 22:
        ssh += ["-p", str(host.port)]
    ssh.append(f"{host.user}@{host.address}" if host.user else host.address)
    auth = values.get("jupyter_auth", "token")
    url = f"http://localhost:{local}/lab" + (f"?token={values['jupyter_token']}" if auth == "token" else "")
    return {"host": name, "student": values.get("student", name), "address": host.address,
            "tunnel": shlex.join(ssh), "url": url, "argv": ssh}


@user_errors
def tunnel(host: str, inventory: str | None, local_port: int | None, run: bool) -> None:
    session = app.Session.open(inventory)
    if host not in session.inventory.hosts:
        raise InputError(f"unknown host {host!r} in {session.inventory.source}", key="--host")
    access = _access(session, host, local_port)
    # The URL holds the token: it is printed here on purpose, for the person who asked.
    print(access["tunnel"])
    print(access["url"])
    if run:
        raise Exit(code=subprocess.call(access["argv"]))


@user_errors
def handout(hosts: str, inventory: str | None, fmt: str, output: str | None) -> None:
    if fmt not in ("csv", "md"):
        raise InputError(f"expected csv or md, got {fmt!r}", key="--format")
    session = app.Session.open(inventory)
    rows = [_access(session, name) for name in session.select(hosts)]
    columns = ["student", "host", "address", "tunnel", "url"]
    buffer = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        buffer.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for row in rows:
            buffer.write("| " + " | ".join(f"`{row[c]}`" if c in ("tunnel", "url") else str(row[c]) for c in columns) + " |\n")
    if output:
        # The handout holds tokens: owner-only, written whole.
        path = Path(output)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
        console.print(f"wrote {len(rows)} rows to {path} (mode 0600: it contains tokens)")
    else:
        sys.stdout.write(buffer.getvalue())


@user_errors
def gpus(hosts: str, inventory: str | None, insecure_host_keys: bool = False) -> None:
    from .gpu import GPU_FACT, choose_mxnet_build, gpu_table_rows
    from .hostfacts import gather

    session = app.Session.open(inventory)
    names = session.select(hosts)
    found = gather([session.inventory.hosts[n] for n in names], [GPU_FACT], app.connect_options(insecure_host_keys))
    from .compile import host_vars

    results, errors = {}, {}
    for name, result in found.items():
        if isinstance(result, str):
            errors[name] = result
            continue
        values = {k: v.value for k, v in host_vars(session.inventory, name, session.roleset, {}, session.secrets).items()}
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
def demo(count: int, keep: bool) -> None:
    from .demo import run_demo

    raise Exit(code=run_demo(count, keep))


@user_errors
def disconnect() -> None:
    from .keeper import stop
    from .state import state_dir

    closed = stop(state_dir())
    if closed is None:
        console.print("no SSH connections are kept for this state folder")
    else:
        console.print(f"closed {closed} kept SSH connection{'s' if closed != 1 else ''}")


def demo_down() -> None:
    from .demo import stop_demo
    from .keeper import stop
    from .state import state_dir

    stop(state_dir())  # its connections led to the demo's hosts
    stop_demo()


def bench(counts: list[int], json_path: str, baked_only: bool = False) -> None:
    from bench.run import main  # type: ignore[import-not-found]

    raise Exit(code=main(counts, json_path, baked_only))
