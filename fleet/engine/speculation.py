"""Speculative probes: the hosts work while the controller starts.

A no-op's controller spends most of its time importing and compiling before the first probe
leaves; the hosts wait. Facts are read-only, so `provision` and `check` send each host last run's
probe (the same command line, the same inventory file unchanged) through the SSH keeper first,
before the engine is imported (tasks.py calls `start`), with a fresh nonce. The runner uses that
answer only when the freshly compiled probe is the same script byte for byte, apart from the
nonce (`claim`); otherwise it probes as always, and the early answer is dropped. Output and exit
codes are the same either way.

Never speculated: runs without the keeper (`FLEET_SSH_PERSIST=0`), with `--insecure-host-keys` or
`--sudo-password`, hosts that need a sudo password, and AWS inventories (their addresses come from the API at run
time). The store (`<state>/speculative-probes.json`, 0600 like the course secrets) holds the
probe scripts, which carry the Jupyter token the health check sends to the host's own Jupyter.

This module imports nothing of the engine: it must cost the command nothing before it starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

STORE = "speculative-probes.json"
COMMANDS = ("provision", "check")
ENV = ("FLEET_INVENTORY", "FLEET_ROLES_PATH", "FLEET_STATE_DIR", "FLEET_SSH_PERSIST")
# tasks.py's flags for accepting any host key and for a sudo password, long and short.
NOT_SPECULATED = frozenset({"--insecure-host-keys", "-n", "--sudo-password", "-u"})
MAX_RUNS = 20           # command lines remembered per state folder


def run_key(argv: Sequence[str], cwd: str, environ: dict[str, str]) -> str:
    """The command line as typed (less where its JSON report goes), where, and the settings that
    choose inventory and roles."""
    args, skip = [], False
    for arg in argv[1:]:
        if skip or arg.startswith("--json="):
            skip = False
            continue
        skip = arg == "--json"
        if not skip:
            args.append(arg)
    basis = [args, cwd, {name: environ.get(name) for name in ENV}]
    return hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:32]


def _file_stamp(path: str) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_mtime_ns, info.st_size]


@dataclass
class _Early:
    template: str                   # the probe script after its nonce line
    nonce: str
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[int, str] | None = None
    logins: int = 0                 # new SSH logins it made (a kept connection had died)
    sent: float = field(default_factory=time.monotonic)   # when it left: the host's run counts from here


@dataclass
class Speculation:
    key: str
    state_dir: Path
    started: dict[str, _Early] = field(default_factory=dict)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)   # this run's probes, to store

    def claim(self, host: Any, options: Any, script: str) -> tuple[str, int, str, int, float] | None:
        """The early answer to this probe script, as (nonce, exit status, output, logins, when it was
        sent: time.monotonic()), if one was sent
        and the script is the same; None: probe now. Records the script for the next run."""
        nonce_line, _, template = script.partition("\n")
        if _can_speculate(host, options):
            from fleet.transport.keeper import host_fields, option_fields   # loaded by the run by now

            self.seen[host.name] = {"host": host_fields(host), "options": option_fields(options),
                                    "template": template}
        early = self.started.pop(host.name, None)   # once: a second task in the same command probes anew
        if early is None or early.template != template or not nonce_line.startswith("__N="):
            return None
        early.done.wait()
        if early.answer is None:
            return None
        return early.nonce, *early.answer, early.logins, early.sent

    def save(self, inventory_source: str, ok_hosts: Sequence[str]) -> None:
        """Remember this run's probes of the hosts that answered, for the same command next time."""
        if inventory_source.startswith("aws:"):
            return
        from fleet import atomic

        path = self.state_dir / STORE
        store = _load(path)
        hosts = {name: entry for name, entry in self.seen.items() if name in ok_hosts}
        store.pop(self.key, None)
        if hosts:
            store[self.key] = {"inventory": inventory_source, "stamp": _file_stamp(inventory_source), "hosts": hosts}
        while len(store) > MAX_RUNS:
            store.pop(next(iter(store)))
        atomic.replace(path, json.dumps(store), mode=0o600)


current: Speculation | None = None


def start(argv: Sequence[str]) -> None:
    """Send last run's probes for this command line, in the background (called by tasks.py)."""
    global current
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
    if command not in COMMANDS or set(argv) & NOT_SPECULATED:
        return
    persist = os.environ.get("FLEET_SSH_PERSIST", "300").strip()
    if persist == "0" or not persist.isdigit():
        return
    state = Path(os.environ.get("FLEET_STATE_DIR") or Path(__file__).resolve().parents[2] / ".fleet")
    current = Speculation(run_key(argv, os.getcwd(), dict(os.environ)), state)
    entry = _load(state / STORE).get(current.key)
    if not entry or _file_stamp(entry["inventory"]) != entry["stamp"]:
        return
    for name, host in entry["hosts"].items():
        early = _Early(host["template"], secrets.token_hex(8))
        current.started[name] = early
        threading.Thread(target=_probe, args=(early, host, state, int(persist)), daemon=True).start()


def _probe(early: _Early, entry: dict[str, Any], state: Path, persist: int) -> None:
    try:
        from fleet.inventory.model import Host
        from fleet.transport.base import ConnectOptions
        from fleet.transport.keeper import KeptConnection

        options = dict(entry["options"], known_hosts=Path(entry["options"]["known_hosts"]))
        conn = KeptConnection(Host(**entry["host"]), ConnectOptions(**options), state, persist)
        try:
            conn.open()
            early.answer = conn.run_script(f"__N={early.nonce}\n{early.template}")
            early.logins = conn.connections
        finally:
            conn.close()
    except Exception:   # any failure: the run probes this host itself, as always
        early.answer = None
    finally:
        early.done.set()


def _can_speculate(host: Any, options: Any) -> bool:
    return bool(options.strict_host_keys and not options.sudo_password and not getattr(host, "sudo_password", None))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
