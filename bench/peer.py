"""`invoke bench --peer pyinfra`: Fleet and pyinfra side by side on the benchmark's workload.

For each host count, 2N fresh hosts are booted at once; Fleet provisions the first N cold and
pyinfra the other N (bench/pyinfra_deploy.py, the same workload), then both re-run on the hosts
they provisioned, alternating, for the no-op medians. Each tool's no-op meets the state it made
itself: on one shared set, each would find the other's files (another token in the config) and
change them back. pyinfra comes from the `bench` extra, or from its own venv (`--peer-bin`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import pprint
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import run as bench
from fleet.testhosts import hosts as testhosts
from fleet.testhosts.offline import without_internet

DEPLOY = bench.PROJECT / "bench" / "pyinfra_deploy.py"
PEERS = ("pyinfra",)
# At most this long waiting for a quiet machine before each timed phase: the machine may be
# shared (other test runs), and never going quiet must not add minutes per host count.
SETTLE_S = 60
# Where scripts/install-deps puts pyinfra: a venv of its own, since pyinfra 3 needs paramiko < 5
# and Fabric here runs on paramiko 5.
PROJECT_VENV = bench.PROJECT / ".venv-bench" / "bin" / "pyinfra"
MISSING = ("`--peer pyinfra` needs pyinfra, which is not installed: run scripts/install-deps (it makes "
           ".venv-bench), install the `bench` extra (pip install -e '.[bench]'), or pass --peer-bin with the "
           "pyinfra command of another venv")


class PeerError(Exception):
    """The comparison cannot run: the message says what to install or fix (exit 1, no host booted)."""


def pyinfra_command(peer_bin: str | None = None) -> list[str]:
    """How to run pyinfra: the given executable, else the module in this Python (the extra), else
    the project's .venv-bench."""
    if peer_bin:
        path = Path(peer_bin)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PeerError(f"--peer-bin {peer_bin}: not an executable file (expected the `pyinfra` command of a venv)")
        return [str(path)]
    if importlib.util.find_spec("pyinfra") is not None:
        return [sys.executable, "-m", "pyinfra"]
    if os.access(PROJECT_VENV, os.X_OK):
        return [str(PROJECT_VENV)]
    raise PeerError(MISSING)


def check_peer(peer: str, peer_bin: str | None) -> list[str]:
    if peer not in PEERS:
        raise PeerError(f"--peer {peer}: unknown peer (expected one of: {', '.join(PEERS)})")
    return pyinfra_command(peer_bin)


def workload(url: str, packages: list[str] | None = None, with_service: bool = True) -> dict[str, Any]:
    """The workload's values for pyinfra, taken from Fleet's role defaults and bench.workload_vars,
    so both tools install the same pinned packages. `packages` replaces the pip list (the host
    test's small workload)."""
    defaults = yaml.safe_load((bench.PROJECT / "roles/jupyter/defaults.yml").read_text())
    wanted = bench.workload_vars(url)
    if packages is None:
        packages = [f"notebook=={defaults['jupyter_notebook_version']}", f"jupyterlab=={defaults['jupyter_lab_version']}",
                    *defaults["jupyter_fast_start_packages"], *wanted["jupyter_extra_packages"]]
    user = "student"   # fleet/engine/defaults.yml course_user
    return {
        "course": "bench", "course_user": user, "jupyter_venv": defaults["jupyter_venv"],
        "jupyter_notebook_dir": f"/home/{user}/notebooks", "pip_packages": packages,
        "lab_overrides": json.dumps(defaults["jupyter_lab_settings"], indent=2, sort_keys=True) + "\n",
        "repos_base": wanted["repos_base"], "repos": wanted["repos_list"], "with_service": with_service,
    }


def student_key() -> str:
    """A fresh ed25519 public key, standing in for the student's key Fleet writes per host."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def authorized_key(port: int, key: str, host: str) -> str:
    """The line roles/jupyter/login.py writes for a tunnel-only student (student_ssh: tunnel)."""
    return (f"# Managed by the benchmark's pyinfra deploy: the student's key for student on {host} only.\n"
            f'restrict,port-forwarding,permitopen="localhost:{port}",command="echo tunnel only; exit 1" '
            f"{key} jupyter-fleet:bench:student\n")


def write_inventory(hosts, path: Path, work: dict[str, Any], known_hosts: Path) -> Path:
    """A pyinfra inventory (a Python file) for booted hosts: connection data, then the workload
    and the per-host values (port 8800 + index as in bench.write_inventory, a token, a key)."""
    entries = []
    for index, h in enumerate(hosts):
        port = 8800 + index
        entries.append((h.name, {
            "ssh_hostname": h.address, "ssh_port": h.port, "ssh_user": h.user, "ssh_key": str(h.key),
            # Test hosts reuse addresses with new host keys: a file of this run's own, keys accepted on first use.
            "ssh_known_hosts_file": str(known_hosts), "ssh_strict_host_key_checking": "accept-new",
            "ssh_allow_agent": False, "ssh_look_for_keys": False,
            **work, "jupyter_port": port, "jupyter_token": secrets.token_hex(24),
            "authorized_key": authorized_key(port, student_key(), h.name),
        }))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by bench/peer.py for booted test hosts.\nbench = " + pprint.pformat(entries, width=120) + "\n")
    return path


def totals(stdout: str) -> dict[str, Any]:
    """pyinfra's `--json` results: counts of changed ('success'), failed and unchanged operations."""
    try:
        results = json.loads(stdout)["results"]
    except (ValueError, KeyError, TypeError):
        return {"success": None, "error": None, "no_change": None, "failed_hosts": None}
    return {**results["totals"], "failed_hosts": results["failed_hosts"],
            "changed_ops": sorted({(op.get("names") or [op["name"]])[0] for op in results["operations"] if op["success"]})}


def run_pyinfra(command: list[str], inventory: Path) -> dict[str, Any]:
    """One `pyinfra -y` run as a user runs it: wall time, machine CPU and its result counts."""
    argv = [*command, "-y", "--sudo", "--json", str(inventory), str(DEPLOY)]
    env = dict(os.environ, PYINFRA_PROGRESS="off")
    cpu0, t0 = bench.machine_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(argv, cwd=bench.PROJECT, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - t0, bench.machine_cpu_seconds() - cpu0
    return {"rc": proc.returncode, "wall": wall, "cpu": cpu, "totals": totals(proc.stdout),
            "output": (proc.stderr + proc.stdout)[-4000:]}


def fleet_ok(run: dict, changed: bool) -> bool:
    statuses = {r["status"] for r in run["report"].get("hosts", {}).values()}
    return run["rc"] == 0 and statuses == ({"changed"} if changed else {"ok"})


def pyinfra_ok(run: dict, changed: bool) -> bool:
    t = run["totals"]
    return run["rc"] == 0 and t["error"] == 0 and not t["failed_hosts"] and (t["success"] > 0) == changed


def ratio(fleet_s: float, peer_s: float) -> float | None:
    return round(fleet_s / peer_s, 2) if peer_s else None


def alternate(rounds: int, first: str = "fleet") -> list[str]:
    """Which tool runs when, in rounds of one each: A B, B A, A B, ... (neither always goes first)."""
    other = "pyinfra" if first == "fleet" else "fleet"
    order = []
    for i in range(rounds):
        order += [first, other] if i % 2 == 0 else [other, first]
    return order


def compare(n: int, command: list[str], url: str, workdir: Path, noops: int = 5, fleet_first: bool = True,
            offline: bool = False) -> dict:
    """Cold and no-op runs of both tools on n hosts each (2n booted at once, torn down after).
    With `offline`, n more hosts with no route to the internet get a cold Fleet run of their own,
    from a controller that starts with an empty cache as the first one did."""
    from fleet.transport import keeper

    state = workdir / f"state-peer-{n}"
    state.mkdir()
    fleet_inventory, peer_inventory = state / "bench.yml", state / "pyinfra_inventory.py"
    hosts = testhosts.boot(3 * n if offline else 2 * n)
    cut_state = workdir / f"state-offline-{n}"
    try:
        mine, theirs, cut = hosts[:n], hosts[n:2 * n], hosts[2 * n:]
        bench.write_inventory(mine, fleet_inventory, url)
        write_inventory(theirs, peer_inventory, workload(url), state / "known_hosts")
        settled = [bench.wait_until_quiet(limit_s=SETTLE_S)]
        cold: dict[str, dict] = {}
        for tool in (["fleet", "pyinfra"] if fleet_first else ["pyinfra", "fleet"]):
            run = bench.provision(state, fleet_inventory) if tool == "fleet" else run_pyinfra(command, peer_inventory)
            if not (fleet_ok if tool == "fleet" else pyinfra_ok)(run, changed=True):
                raise SystemExit(f"cold run of {tool} on {n} hosts failed:\n{run['output'][-3000:]}")
            cold[tool] = run
            settled.append(bench.wait_until_quiet(limit_s=SETTLE_S))
        if cut:
            cold["offline"] = offline_cold(cut, cut_state, url)
            settled.append(bench.wait_until_quiet(limit_s=SETTLE_S))
        runs: dict[str, list[dict]] = {"fleet": [], "pyinfra": []}
        for tool in alternate(noops, "fleet" if fleet_first else "pyinfra"):
            run = bench.provision(state, fleet_inventory) if tool == "fleet" else run_pyinfra(command, peer_inventory)
            if not (fleet_ok if tool == "fleet" else pyinfra_ok)(run, changed=False):
                detail = run.get("totals", {}).get("changed_ops") if tool == "pyinfra" else ""
                raise SystemExit(f"a no-op run of {tool} on {n} hosts changed something {detail}:\n{run['output'][-3000:]}")
            runs[tool].append(run)
        fleet_slowest = max(cold["fleet"]["report"]["hosts"].values(), key=lambda h: h["seconds"])
        result: dict[str, Any] = {"hosts": n, "order": "fleet first" if fleet_first else "pyinfra first", "settle_s": settled}
        for tool in ("fleet", "pyinfra"):
            result[tool] = {"cold_s": round(cold[tool]["wall"], 1), "cold_cpu_s": round(cold[tool]["cpu"], 1),
                            "noop_s": [round(r["wall"], 2) for r in runs[tool]],
                            "noop_median_s": round(statistics.median(r["wall"] for r in runs[tool]), 2),
                            "noop_cpu_s_median": round(statistics.median(r["cpu"] for r in runs[tool]), 2)}
        result["fleet"]["cold_slowest_host_steps"] = bench.slowest_steps(fleet_slowest)
        result["cold_ratio"] = ratio(result["fleet"]["cold_s"], result["pyinfra"]["cold_s"])
        result["noop_ratio"] = ratio(result["fleet"]["noop_median_s"], result["pyinfra"]["noop_median_s"])
        if "offline" in cold:
            result["fleet_offline"] = {"cold_s": round(cold["offline"]["wall"], 1),
                                       "cold_cpu_s": round(cold["offline"]["cpu"], 1)}
            result["offline_vs_online"] = ratio(result["fleet_offline"]["cold_s"], result["fleet"]["cold_s"])
        return result
    finally:
        keeper.stop(state)
        if offline:
            keeper.stop(cut_state)
        testhosts.teardown(hosts)


def offline_cold(hosts: list, state: Path, url: str) -> dict:
    """Fleet's cold run on hosts that reach only the controller (the course repository is served by
    the controller too): the wheels and .debs come over SSH. Refused if a host can still get out."""
    state.mkdir()
    inventory = state / "bench.yml"
    bench.write_inventory(hosts, inventory, url)
    with without_internet(hosts):
        probe = hosts[0].run("python3 -c \"import urllib.request as u; u.urlopen('https://pypi.org/simple/', timeout=5)\"",
                             check=False)
        if probe.returncode == 0:
            raise SystemExit("offline bench: a host still reaches the internet; the cut did not take")
        run = bench.provision(state, inventory)
    if not fleet_ok(run, changed=True):
        raise SystemExit(f"offline cold run of Fleet on {len(hosts)} hosts failed:\n{run['output'][-3000:]}")
    return run


COLUMNS = ("hosts", "Fleet cold s", "pyinfra cold s", "cold Fleet/pyinfra", "Fleet no-op s", "pyinfra no-op s",
           "no-op Fleet/pyinfra")


def rows(results: list[dict]) -> list[list[str]]:
    """The table's rows: each tool's wall times and the ratio Fleet/pyinfra (under 1: Fleet faster)."""
    out = []
    for r in results:
        f, p = r["fleet"], r["pyinfra"]
        row = [str(r["hosts"]), f"{f['cold_s']}", f"{p['cold_s']}", f"{r['cold_ratio']}",
               f"{f['noop_median_s']}", f"{p['noop_median_s']}", f"{r['noop_ratio']}"]
        if "fleet_offline" in r:
            row.append(f"{r['fleet_offline']['cold_s']} ({r['offline_vs_online']} of online)")
        out.append(row)
    return out


def pyinfra_version(command: list[str]) -> str:
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip()


def main(counts: list[int], json_path: str, peer: str, peer_bin: str | None = None, noops: int = 5,
         offline: bool = False) -> int:
    import tempfile

    from rich.table import Table

    try:
        command = check_peer(peer, peer_bin)
    except PeerError as exc:
        bench.console.print(str(exc), markup=False)   # "[bench]" is not rich markup
        return 1
    if os.geteuid() != 0:
        bench.console.print("the benchmark boots local test hosts: run it as root")
        return 1
    testhosts.controller_setup()
    testhosts.ensure_base()
    bench.compile_bytecode()
    version = pyinfra_version(command)
    results = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-peer-") as tmp:
        workdir = Path(tmp)
        (workdir / "git").mkdir()
        git, url = bench.serve_repo(workdir / "git")
        try:
            for index, n in enumerate(counts):
                bench.console.print(f"[bold]{n} hosts[/]: Fleet and {version} cold on {n} fresh hosts each, "
                                    f"then {noops} alternated no-op runs each")
                if offline:
                    bench.console.print(f"  and Fleet cold on {n} more hosts that reach only the controller")
                results.append(compare(n, command, url, workdir, noops=noops, fleet_first=index % 2 == 0,
                                       offline=offline))
                bench.console.print(results[-1])
                write_json(json_path, version, noops, results)   # after each count: a later one may not finish
        finally:
            git.terminate()
    table = Table(title=f"Jupyter Fleet and {version}, same workload and host count "
                        f"(no-op: median of {noops} alternated runs)")
    for column in COLUMNS + (("Fleet cold, hosts offline",) if offline else ()):
        table.add_column(column, justify="right")
    for row in rows(results):
        table.add_row(*row)
    bench.console.print(table)
    bench.console.print(f"wrote {json_path}")
    return 0


def write_json(json_path: str, version: str, noops: int, results: list[dict]) -> None:
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {"cpus": os.cpu_count()}, "peer": version,
           "noop_runs": noops, "results": results}
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(out, indent=2))
