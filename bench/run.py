"""The benchmark behind `invoke bench`: cold provision (from the bare base and from a baked
image of the workload), no-op re-runs and drift repair on local test hosts (root needed),
measured through the real CLI as a user runs it.

Workload (issue 7): apt python3-venv and git; a venv at /opt/jupyter with notebook and
ipyparallel; the Jupyter config and unit from templates with per-host values; the service
enabled, running and restarted on change; a git repo served from the controller cloned to
/home/student/course; /home/student/notebooks owned by the course user `student`, mode 0755.
"""
from __future__ import annotations

import compileall
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml
from rich.console import Console
from rich.table import Table

from fleet.course.imaging import imageprep
from fleet.testhosts import hosts as testhosts
from fleet.testhosts import layers

PROJECT = Path(__file__).resolve().parent.parent
# Piped output gets the whole table rather than rich's 80-column default.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (controller and every host), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def compile_bytecode() -> None:
    """Compile the project's modules, as installing a tool does: with PYTHONDONTWRITEBYTECODE
    set (some sandboxes set it) every run would otherwise compile ~30 modules from source,
    0.06 CPU-s that no installed copy pays."""
    for folder in ("fleet", "roles", "bench"):
        compileall.compile_dir(PROJECT / folder, quiet=1)
    compileall.compile_file(PROJECT / "tasks.py", quiet=1)


def wait_until_quiet(busy_below: float = 0.3, quiet_windows: int = 3, limit_s: float = 180) -> float:
    """Wait until the machine's busy cores stay under `busy_below` for `quiet_windows` seconds
    in a row (at most `limit_s`); returns the seconds waited. Freshly provisioned hosts keep
    working for a while (servers finishing their start, systemd jobs), and a re-run is
    measured against the fleet at rest, as a user re-running later meets it."""
    start, calm = time.perf_counter(), 0
    while calm < quiet_windows and time.perf_counter() - start < limit_s:
        before = machine_cpu_seconds()
        time.sleep(1)
        calm = calm + 1 if machine_cpu_seconds() - before < busy_below else 0
    return round(time.perf_counter() - start, 1)


def provision(state: Path, inventory: Path, *args: str, keep: bool = True) -> dict:
    """Run `invoke provision` once; wall time, machine CPU and the report. keep=False: without
    the SSH keeper (FLEET_SSH_PERSIST=0), one login per host."""
    report = state / "report.json"
    report.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "invoke", "provision", "--inventory", str(inventory), "--json", str(report),
            "--parallel", "30", *args]
    env = dict(os.environ, FLEET_STATE_DIR=str(state), **({} if keep else {"FLEET_SSH_PERSIST": "0"}))
    cpu0, t0 = machine_cpu_seconds(), time.perf_counter()
    proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate()[0]
    wall, cpu = time.perf_counter() - t0, machine_cpu_seconds() - cpu0
    data = json.loads(report.read_text()) if report.exists() else {}
    return {"rc": proc.returncode, "wall": wall, "cpu": cpu, "report": data, "output": output}


def keeper_peak_mib(state: Path) -> float:
    """The SSH keeper's peak resident memory (VmHWM), or 0 when none runs."""
    from fleet.transport import keeper

    pid = (keeper.hello(state) or {}).get("pid")
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(state: Path, inventory: Path) -> float:
    """The controller's peak resident memory during a no-op run (ru_maxrss of the child)."""
    argv = [sys.executable, "-m", "invoke", "provision", "--inventory", str(inventory), "--parallel", "30"]
    proc = subprocess.Popen(argv, cwd=PROJECT, env=dict(os.environ, FLEET_STATE_DIR=str(state)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def serve_repo(root: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    work, bare = root / "course", root / "course.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "README.md").write_text("# bench course\n")
    for cmd in (["add", "-A"], ["commit", "-q", "-m", "bench"], ["push", "-q", str(bare), "main"]):
        subprocess.run(["git", "-C", str(work), *cmd], check=True, env=env)
    import socket
    with socket.socket() as s:
        s.bind((testhosts.CONTROLLER_ALIAS, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                             f"--listen={testhosts.CONTROLLER_ALIAS}", f"--port={port}", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"git://{testhosts.CONTROLLER_ALIAS}:{port}/course.git"


def workload_vars(url: str) -> dict:
    return {"roles": ["jupyter", "repos"], "jupyter_extra_packages": ["ipyparallel==9.2.0"],
            "repos_base": "/home/student", "repos_list": [{"url": url, "dest": "course", "ref": "main"}]}


def write_inventory(hosts, path: Path, url: str) -> None:
    testhosts.write_inventory(hosts, path, vars={"name": None, **workload_vars(url)})
    data = yaml.safe_load(path.read_text())
    del data["vars"]["name"]
    data["name"] = "bench"
    for index, name in enumerate(data["hosts"]):
        data["hosts"][name]["vars"] = {"jupyter_port": 8800 + index}  # a per-host value in the templates
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    lock(path)


def lock(inventory: Path) -> None:
    """The course's lock, as a course commits it before a class (`invoke lock`; not timed): the
    cold run then gets one download per class (fleet.engine.sending)."""
    argv = [sys.executable, "-m", "invoke", "lock", "--inventory", str(inventory)]
    env = dict(os.environ, FLEET_STATE_DIR=str(inventory.parent))
    done = subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"invoke lock failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def slowest_steps(host_report: dict, count: int = 6) -> list[dict]:
    """Where a cold run's time went on a host: its slowest steps, as the host timed them."""
    timed = [step for step in host_report["steps"] if step.get("seconds") is not None]
    timed.sort(key=lambda step: step["seconds"], reverse=True)
    return [{"step": step["name"], "seconds": step["seconds"]} for step in timed[:count]]


def per_host(report: dict, key: str) -> float:
    values = [h[key] for h in report["hosts"].values()]
    return max(values) if values else 0


@contextlib.contextmanager
def provisioned(n: int, url: str, workdir: Path, label: str, layer: Path | None = None) -> Iterator[tuple]:
    """n hosts booted (from `layer`, if given) and provisioned cold: (hosts, state, inventory,
    boot seconds, the cold run); torn down, their keeper stopped, afterwards."""
    state = workdir / f"state-{label}"
    state.mkdir()
    inventory = state / "bench.yml"
    t0 = time.perf_counter()
    hosts = testhosts.boot(n, layer=layer)
    boot_s = time.perf_counter() - t0
    try:
        write_inventory(hosts, inventory, url)
        cold = provision(state, inventory)
        if cold["rc"] != 0:
            raise SystemExit(f"cold provision ({label}) failed:\n{cold['output'][-3000:]}")
        yield hosts, state, inventory, boot_s, cold
    finally:
        from fleet.transport import keeper
        keeper.stop(state)
        testhosts.teardown(hosts)


def measure(n: int, url: str, workdir: Path) -> dict:
    with provisioned(n, url, workdir, str(n)) as (hosts, state, inventory, boot_s, cold):
        slowest = max(cold["report"]["hosts"].values(), key=lambda h: h["seconds"])
        settle_s = wait_until_quiet()
        noops = [provision(state, inventory) for _ in range(3)]
        cold_noops = [provision(state, inventory, keep=False) for _ in range(3)]
        for run in noops + cold_noops:
            changed = [h for h, r in run["report"]["hosts"].items() if r["status"] != "ok"]
            if run["rc"] != 0 or changed:
                raise SystemExit(f"a no-op run changed {changed}:\n{run['output'][-3000:]}")
        result = {
            "hosts": n, "boot_s": round(boot_s, 2), "cold_s": round(cold["wall"], 1),
            "cold_slowest_host_s": slowest["seconds"],
            "cold_slowest_host_steps": slowest_steps(slowest),
            "settle_s": settle_s,  # waited after the cold run for the machine to go quiet
            "noop_median_s": round(statistics.median(r["wall"] for r in noops), 2),
            "noop_cpu_s_per_host": round(statistics.median(r["cpu"] for r in noops) / n, 3),
            "new_logins_per_host": per_host(noops[-1]["report"], "connections"),
            "commands_per_host": per_host(noops[-1]["report"], "commands"),
            # the same without the SSH keeper: every run logs in to every host
            "noop_without_keeper_s": round(statistics.median(r["wall"] for r in cold_noops), 2),
            "noop_without_keeper_cpu_s_per_host": round(statistics.median(r["cpu"] for r in cold_noops) / n, 3),
            "logins_per_host_without_keeper": per_host(cold_noops[-1]["report"], "connections"),
        }
        if n >= 10:
            wait_until_quiet()
            result["drift"] = drift(hosts, state, inventory)
        if n >= 30 or n == max(COUNTS):
            result["controller_peak_mib"] = round(peak_rss_mib(state, inventory), 1)
            result["keeper_peak_mib"] = round(keeper_peak_mib(state), 1)
        return result


def bake(url: str, workdir: Path) -> tuple[Path, dict]:
    """Provision one host with the workload and bake it into a layer (fleet.testhosts.layers.bake_layer)."""
    state = workdir / "state-bake"
    state.mkdir()
    inventory = state / "bench.yml"
    t0 = time.perf_counter()
    [host] = testhosts.boot(1)
    try:
        write_inventory([host], inventory, url)
        cold = provision(state, inventory, "--verify")
        if cold["rc"] != 0:
            raise SystemExit(f"provisioning the host to bake failed:\n{cold['output'][-3000:]}")
        from fleet.transport import keeper
        keeper.stop(state)
        layer = layers.bake_layer(host, f"bench-{os.getpid()}", imageprep.script(workload_vars(url)))
    except BaseException:
        testhosts.teardown([host])
        raise
    return layer, {"provision_s": round(cold["wall"], 1), "bake_total_s": round(time.perf_counter() - t0, 1)}


def measure_baked(n: int, url: str, workdir: Path, layer: Path) -> dict:
    """Cold provision of n hosts booted from the baked layer: only per-host values are left to do."""
    with provisioned(n, url, workdir, f"baked-{n}", layer) as (hosts, state, inventory, boot_s, cold):
        reports = cold["report"]["hosts"].values()
        changed = {step["name"] for r in reports for step in r["steps"] if step["status"] == "changed"}
        slowest = max(reports, key=lambda h: h["seconds"])
        return {"hosts": n, "boot_s": round(boot_s, 2), "cold_s": round(cold["wall"], 1),
                "ready_s": round(boot_s + cold["wall"], 1), "cpu_s": round(cold["cpu"], 1),
                "changed_steps": sorted(changed), "slowest_host_steps": slowest_steps(slowest, 3)}


def drift(hosts, state: Path, inventory: Path) -> dict:
    victims = hosts[1:4]
    for h in victims:
        h.run("sudo -n bash -c 'echo \"# drift\" >> /etc/jupyter/jupyter_server_config.py && "
              "systemctl stop jupyter && rm -rf /home/student/course'")
    run = provision(state, inventory)
    changed = sorted(h for h, r in run["report"]["hosts"].items() if r["status"] == "changed")
    api_ok = all(all(v["ok"] for v in r["verifies"]) and r["verifies"] for r in run["report"]["hosts"].values())
    repaired = all(h.run("test -d /home/student/course/.git && systemctl is-active -q jupyter && "
                         "! grep -q drift /etc/jupyter/jupyter_server_config.py", check=False).returncode == 0
                   for h in victims)
    return {"hosts": len(hosts), "drifted": [h.name for h in victims], "seconds": round(run["wall"], 2),
            "reported_changed": changed, "exact": changed == sorted(h.name for h in victims),
            "api_verified_all": bool(api_ok), "repaired": repaired}


COUNTS: list[int] = []


def main(counts: list[int], json_path: str, baked_only: bool = False) -> int:
    COUNTS[:] = counts
    if os.geteuid() != 0:
        console.print("the benchmark boots local test hosts: run it as root")
        return 1
    testhosts.controller_setup()
    testhosts.ensure_base()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "git").mkdir()
        git, url = serve_repo(workdir / "git")
        layer = None
        try:
            console.print("[bold]baking[/]: one host provisioned with the workload, prepared, baked into a layer")
            layer, baked = bake(url, workdir)
            console.print(baked)
            results: list[dict[str, Any]] = []
            for n in counts:
                if baked_only:   # the bare runs are the long part (12 minutes at N=30): skipped on request
                    console.print(f"[bold]{n} hosts[/]: cold from the baked image only")
                    results.append({"hosts": n, "cold_from_baked": measure_baked(n, url, workdir, layer)})
                    console.print(results[-1])
                    continue
                console.print(f"[bold]{n} hosts[/]: boot, cold provision, 3 no-op runs" + (", drift repair" if n >= 10 else "")
                              + "; then cold from the baked image")
                results.append(measure(n, url, workdir))
                wait_until_quiet()
                results[-1]["cold_from_baked"] = measure_baked(n, url, workdir, layer)
                console.print(results[-1])
        finally:
            git.terminate()
            if layer is not None:
                layers.remove_layer(layer)
    table = Table(title="Jupyter Fleet benchmark (2 cores shared by the controller and the hosts)")
    for column in ("hosts", "cold s", "cold from baked image", "no-op s (median of 3)", "CPU s/host", "logins/host", "commands/host",
                   "no-op without keeper", "drift repair", "controller peak"):
        table.add_column(column, justify="right")
    for r in results:
        d = r.get("drift")
        b = r["cold_from_baked"]
        baked_cell = f"{b['cold_s']} s + boot {b['boot_s']} s"
        if "cold_s" not in r:
            table.add_row(str(r["hosts"]), "(not run)", baked_cell, *[""] * 7)
            continue
        table.add_row(str(r["hosts"]), f"{r['cold_s']}", f"{baked_cell} ({100 * b['cold_s'] / r['cold_s']:.0f} % of bare)",
                      f"{r['noop_median_s']}", f"{r['noop_cpu_s_per_host']}",
                      str(r["new_logins_per_host"]), str(r["commands_per_host"]),
                      f"{r['noop_without_keeper_s']} s, {r['noop_without_keeper_cpu_s_per_host']} CPU s/host",
                      f"{d['seconds']} s, exact={d['exact']}, repaired={d['repaired']}" if d else "",
                      f"{r['controller_peak_mib']} + keeper {r['keeper_peak_mib']} MiB" if "controller_peak_mib" in r else "")
    console.print(table)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {"cpus": os.cpu_count()}, "bake": baked,
           "results": results}
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(out, indent=2))
    console.print(f"wrote {json_path}")
    return 0
