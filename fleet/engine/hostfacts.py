"""Facts shown by `invoke facts` and used by `invoke gpus`: gathered with one probe per host."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fleet.engine.facts import Fact
from fleet.engine.remote import Probe
from fleet.engine.state import state_dir
from fleet.inventory.model import Host
from fleet.transport.base import PARALLEL, ConnectOptions, Unreachable
from fleet.transport.connection import connect


def _parse_system(text: str) -> dict[str, Any]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


SYSTEM = Fact(
    "system",
    ". /etc/os-release 2>/dev/null; echo \"os=$PRETTY_NAME\"; echo \"arch=$(uname -m)\"; echo \"cpus=$(nproc)\"; "
    "echo \"memory_gib=$(awk '/MemTotal/ {printf \"%.1f\", $2/1048576}' /proc/meminfo)\"; "
    "echo \"disk_free=$(df -h --output=avail / | tail -1 | tr -d ' ')\"; echo \"python=$(python3 -V 2>&1)\"; "
    "echo \"uptime_s=$(cut -d' ' -f1 /proc/uptime)\"",
    _parse_system,
)


def gather(hosts: list[Host], facts: list[Fact] | Callable[[Host], list[Fact]], options: ConnectOptions,
           parallel: int = PARALLEL) -> dict[str, dict[str, Any] | str]:
    """Facts per host, or an error message for a host that could not be read. `facts` may be a
    function of the host, for facts that carry per-host values (a port, a token)."""
    state = state_dir()
    def one(host: Host) -> dict[str, Any] | str:
        try:
            conn = connect(host, options, state)
            conn.open()
            try:
                probe = Probe(facts(host) if callable(facts) else facts, [])
                rc, output = conn.run_script(probe.script())
                parsed, _, _, errors = probe.parse(output)
                if not parsed and rc != 0:
                    return f"probe failed (exit {rc}): {output.strip()[-300:]}"
                return parsed | {f"error:{k}": v for k, v in errors.items()}
            finally:
                conn.close()
        except Unreachable as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        return dict(zip([h.name for h in hosts], pool.map(one, hosts), strict=True))
