"""What the Invoke tasks call: load and check everything, run, report, pick an exit code.
tasks.py stays a thin layer of arguments and docstrings over these functions."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from rich.console import Console
from rich.table import Table

from fleet.engine import history, speculation, state
from fleet.engine.compile import compile_plans, host_vars, mask_secrets, wanted_packages
from fleet.engine.git import RefResolver
from fleet.engine.report import Reporter, console_width, write_json
from fleet.engine.results import RunResult
from fleet.engine.roles import PROJECT, RoleSet
from fleet.engine.runner import RunOptions, Stop, parse_max_fail, run_fleet
from fleet.engine.sending import PackageCaches
from fleet.engine.secrets import CourseSecrets, Masker
from fleet.errors import InputError
from fleet.inventory import files as inventory_mod
from fleet.inventory import patterns, roster
from fleet.inventory.model import Inventory
from fleet.inventory.variables import parse_set
from fleet.transport.base import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, PARALLEL, ConnectOptions

console = Console(highlight=False, width=console_width())


def default_inventory() -> str:
    if os.environ.get("FLEET_INVENTORY"):
        return os.environ["FLEET_INVENTORY"]
    local = PROJECT / "inventory" / "local.yml"  # written by `invoke demo`
    return str(local if local.exists() else PROJECT / "inventory" / "aws-lab.yml")


def load_inventory(source: str | None) -> Inventory:
    source = source or default_inventory()
    if source.startswith("aws:"):
        from fleet.aws.cloud import inventory_hosts  # boto3 only when asked for

        course = source[4:]
        data = inventory_hosts(course)
        data.setdefault("name", course)
        beside = roster.find(PROJECT / "inventory" / f"{course}.yml")  # the course's roster, as for a file
        if beside and "roster" not in data:
            data["roster"] = str(beside)
        return inventory_mod.from_data(data, source)
    return inventory_mod.load(source)


@dataclass
class Session:
    """Everything one command needs, built before any host is touched."""

    inventory: Inventory
    roleset: RoleSet
    masker: Masker
    secrets: CourseSecrets

    @classmethod
    def open(cls, inventory: str | None) -> "Session":
        inv = load_inventory(inventory)
        masker = Masker()
        return cls(inv, RoleSet(), masker, CourseSecrets(state.state_dir() / "secrets", inv.name, masker))

    def values(self, host: str) -> dict:
        """A host's variables, plain values (no provenance)."""
        merged = host_vars(self.inventory, host, self.roleset, {}, self.secrets)
        return {k: v.value for k, v in merged.items()}

    def select(self, pattern: str) -> list[str]:
        return patterns.select(self.inventory, pattern, state.last_failed(self.inventory.source))


def connect_options(insecure_host_keys: bool = False, sudo_password: str | None = None,
                    connect_timeout: int = CONNECT_TIMEOUT_S, command_timeout: int = COMMAND_TIMEOUT_S) -> ConnectOptions:
    return ConnectOptions(known_hosts=state.state_dir() / "known_hosts", strict_host_keys=not insecure_host_keys,
                          sudo_password=sudo_password, connect_timeout=connect_timeout, command_timeout=command_timeout)


@contextmanager
def sigint_stops(stop: Stop) -> Iterator[None]:
    """First Ctrl-C: start no new hosts, let running scripts finish. Second: abort."""
    def handler(signum, frame):
        if stop.event.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        console.print("[magenta]interrupted: no new hosts will start; waiting for running scripts "
                      "(Ctrl-C again to abort)[/]")
        stop.set("interrupted by Ctrl-C", interrupted=True)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def provision(hosts: str, inventory: str | None = None, roles: str | None = None, check: bool = False,
              diff: bool = False, set_: list[str] | None = None, json_path: str | None = None,
              parallel: int = PARALLEL, max_fail: str | None = None, verify: bool = False,
              insecure_host_keys: bool = False, sudo_password: str | None = None,
              connect_timeout: int = CONNECT_TIMEOUT_S, command_timeout: int = COMMAND_TIMEOUT_S, verbose: bool = False,
              out: Console | None = None) -> RunResult:
    if max_fail is not None:
        parse_max_fail(max_fail)  # bad input is refused before anything is loaded or resolved
    session = Session.open(inventory)
    names = session.select(hosts)
    only = [r.strip() for r in roles.split(",") if r.strip()] if roles else None
    resolver = RefResolver()
    plans = compile_plans(session.inventory, names, roleset=session.roleset, overrides=parse_set(set_ or []),
                          only_roles=only, secrets=session.secrets, masker=session.masker, resolver=resolver)
    if sudo_password:
        session.masker.add(sudo_password)
    options = RunOptions(connect=connect_options(insecure_host_keys, sudo_password, connect_timeout, command_timeout),
                         check=check, diff=diff, verify=verify, parallel=parallel, max_fail=max_fail,
                         masker=session.masker, packages=PackageCaches.under(state.state_dir()))
    stop = Stop()
    if verbose and session.inventory.unused:
        (out or console).print("inventory keys Fleet does not use: " + ", ".join(
            f"{name} ({source})" for name, source in sorted(session.inventory.unused.items())), highlight=False)
    reporter = Reporter(out or console, show_diff=diff, verbose=verbose, group=check)
    with reporter, sigint_stops(stop):
        reporter.start(len(plans), "checking" if check else "provisioning")
        run = run_fleet(plans, options, stop, on_start=reporter.host_started, on_done=reporter.host_done)
    reporter.recap(run)
    if speculation.current:
        speculation.current.save(session.inventory.source, [n for n, r in run.hosts.items() if r.status in ("ok", "changed", "drift")])
    if not check:
        state.remember_failed(session.inventory.source, run.failed)
        history.record(session.inventory.source, run)
    if json_path:
        write_json(run, json_path)
    return run


def lock(inventory: str | None = None, upgrade: bool = False, python: str | None = None) -> tuple[Path, list[tuple]]:
    """Resolve the course's Python packages into its lock beside the inventory (no host is touched).
    Returns the lock's path and, per venv, (venv, packages, pins changed since the last lock)."""
    from fleet.engine import pylock

    session = Session.open(inventory)
    plans = compile_plans(session.inventory, list(session.inventory.hosts), roleset=session.roleset, overrides={},
                          only_roles=None, secrets=session.secrets, masker=session.masker, use_lock=False)
    wants = wanted_packages(step for plan in plans.values() for _, step in plan.steps)
    if not wants:
        raise InputError("the course installs no Python packages (no pip step in its roles): nothing to lock",
                         file=session.inventory.source, key="vars.roles")
    path = pylock.path_for(session.inventory.source, PROJECT)
    before = pylock.load(path) or {}
    python = python or pylock.PYTHON
    locked = pylock.resolve(wants, path, python=python, upgrade=upgrade)
    pylock.save(path, locked, python=python)
    summary = []
    for venv, item in locked.items():
        old = before[venv].pins() if venv in before else {}
        moved = sorted(n for n, v in item.pins().items() if old.get(n) != v) if old else []
        summary.append((venv, len(item.pins()), moved))
    return path, summary


def show_vars(host: str, inventory: str | None = None, set_: list[str] | None = None) -> Table:
    session = Session.open(inventory)
    if host not in session.inventory.hosts:
        raise InputError(f"unknown host {host!r} in {session.inventory.source}", key="--host")
    merged = host_vars(session.inventory, host, session.roleset, parse_set(set_ or []), session.secrets)
    mask_secrets(session.masker, session.roleset, {key: var.value for key, var in merged.items()})
    table = Table(title=f"Variables for {host}", show_edge=False)
    for column in ("name", "value", "from"):
        table.add_column(column)
    for key in sorted(merged):
        var = merged[key]
        table.add_row(key, session.masker(repr(var.value)), var.source)
    _connection_rows(table, session.inventory.hosts[host], session.masker)
    return table


def _connection_rows(table: Table, host, masker) -> None:
    """How Fleet reaches the host, and where each setting came from (any level, either shape)."""
    from fleet.inventory.settings import unused

    if host.sudo_password:
        masker.add(host.sudo_password)
    table.add_section()
    defaults = {"address": (host.name, "the host's name"), "user": (None, "~/.ssh/config or your login name"),
                "port": (None, "~/.ssh/config or 22"), "key": (None, "~/.ssh/config or your SSH agent")}
    for name in ("address", "user", "port", "key", "sudo_password"):
        if name in host.origins:
            value, source = getattr(host, name), host.origins[name].source
        elif name in defaults:
            value, source = defaults[name]
        else:
            continue
        table.add_row(f"connection: {name}", masker(repr(value)) if value is not None else "-", source)
    for name, setting in sorted(unused(host.settings).items()):
        table.add_row(name, masker(repr(setting.value)), f"{setting.source} (not used by Fleet)")
