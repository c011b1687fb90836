"""Jupyter Fleet's command line: `invoke --list`, `invoke --help provision`.

Thin on purpose: arguments and help live here, the work in the `fleet` package.
"""
from __future__ import annotations

import sys

from fleet.engine import speculation

speculation.start(sys.argv)  # last run's probes leave for the hosts while the engine loads

from invoke import Collection, Exit, task  # noqa: E402

from fleet import cli  # noqa: E402
from fleet.transport.base import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, PARALLEL  # noqa: E402

HOSTS = "host pattern: names, groups, globs (gpu-*), comma lists, !exclusions, @failed"
INVENTORY = "inventory file, or aws:COURSE (default: $FLEET_INVENTORY, inventory/local.yml, inventory/aws-lab.yml)"


@task(help={"hosts": HOSTS, "inventory": INVENTORY, "roles": "only these roles, comma separated",
            "check": "report what would change, change nothing", "diff": "show unified diffs of files",
            "set": "KEY=VALUE overriding every inventory level (repeatable)", "json": "write the full result here",
            "parallel": f"hosts at once (default {PARALLEL})", "max-fail": "stop starting hosts after this many failures (N or N%)",
            "verify": "run every role's verification, not only the cheap ones",
            "insecure-host-keys": "accept any host key and record none (throwaway hosts only)",
            "sudo-password": "read a sudo password from the terminal (prompted, never echoed)",
            "verbose": "show every step, not only changes",
            "connect-timeout": f"seconds to wait for a host's SSH (default {CONNECT_TIMEOUT_S})",
            "command-timeout": f"seconds a host's script may run (default {COMMAND_TIMEOUT_S})"},
      iterable=["set"])
def provision(c, hosts="all", inventory=None, roles=None, check=False, diff=False, set=None, json=None,
              parallel=PARALLEL, max_fail=None, verify=False, insecure_host_keys=False, sudo_password=False,
              verbose=False, connect_timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S):
    """Converge hosts to their roles; re-run any time to repair drift."""
    cli.provision(hosts=hosts, inventory=inventory, roles=roles, check=check, diff=diff, set_=set, json_path=json,
                  parallel=int(parallel), max_fail=max_fail, verify=verify, insecure_host_keys=insecure_host_keys,
                  ask_sudo_password=sudo_password, verbose=verbose, connect_timeout=int(connect_timeout),
                  command_timeout=int(command_timeout))


@task(help={"hosts": HOSTS, "inventory": INVENTORY, "roles": "only these roles", "diff": "show unified diffs",
            "json": "write the drift report here", "insecure-host-keys": "accept any host key (throwaway hosts)"})
def check(c, hosts="all", inventory=None, roles=None, diff=True, json=None, insecure_host_keys=False):
    """Drift report: what provision would change, with diffs. Exit 4 when drift is found."""
    cli.provision(hosts=hosts, inventory=inventory, roles=roles, check=True, diff=diff, json_path=json,
                  insecure_host_keys=insecure_host_keys)


@task(help={"hosts": HOSTS, "inventory": INVENTORY, "insecure-host-keys": "accept any host key"})
def facts(c, hosts="all", inventory=None, insecure_host_keys=False):
    """Show each host's facts (OS, CPUs, memory, disk, Python, GPUs): one probe per host."""
    cli.facts(hosts=hosts, inventory=inventory, insecure_host_keys=insecure_host_keys)


@task(help={"host": "the host to show", "inventory": INVENTORY, "set": "KEY=VALUE overrides (repeatable)"},
      iterable=["set"])
def vars(c, host, inventory=None, set=None):
    """Every variable of a host with the level it came from (secrets masked)."""
    cli.show_vars(host=host, inventory=inventory, set_=set)


@task(help={"host": "the host to reach", "inventory": INVENTORY, "local-port": "local end of the tunnel",
            "open": "run the tunnel now instead of printing the command"})
def tunnel(c, host, inventory=None, local_port=None, open=False):
    """Print (or open) the SSH tunnel to a host's Jupyter, and its URL with the token."""
    cli.tunnel(host=host, inventory=inventory, local_port=local_port, run=open)


@task(help={"hosts": HOSTS, "inventory": INVENTORY, "format": "csv or md", "output": "file to write (default: stdout)",
            "bundle": "write one folder per student here instead: their key, tunnel commands, URL, how-to"})
def handout(c, hosts="all", inventory=None, format="md", output=None, bundle=None):
    """The instructor's class list (student, host, tunnel, URL with token), or --bundle DIR: one folder per student."""
    cli.handout(hosts=hosts, inventory=inventory, fmt=format, output=output, bundle=bundle)


@task(help={"inventory": INVENTORY, "upgrade": "move every package to the newest version the roles allow",
            "python": "the hosts' Python version to resolve for (default 3.11, Debian 12)"})
def lock(c, inventory=None, upgrade=False, python=None):
    """Resolve the course's Python packages once, with hashes, into <inventory>.lock.yml (commit it)."""
    cli.lock(inventory=inventory, upgrade=upgrade, python=python)


@task(help={"inventory": INVENTORY})
def students(c, inventory=None):
    """Who has which machine (the roster), how they log in, and what their key opens."""
    cli.students(inventory=inventory)


@task(help={"hosts": HOSTS, "inventory": INVENTORY, "insecure-host-keys": "accept any host key"})
def gpus(c, hosts="all", inventory=None, insecure_host_keys=False):
    """Fleet GPU table: model, count, memory, driver, CUDA, compute capability, can it run the course's MXNet."""
    cli.gpus(hosts=hosts, inventory=inventory, insecure_host_keys=insecure_host_keys)


@task(help={"hosts": HOSTS, "inventory": INVENTORY, "output": "the page to write (default class.html)",
            "json": "take statuses and drift from this provision/check --json file instead of a fresh check",
            "with-urls": "add each host's tunnel command and URL with its token (page written 0600)",
            "insecure-host-keys": "accept any host key (throwaway hosts)"})
def report(c, hosts="all", inventory=None, output="class.html", json=None, with_urls=False, insecure_host_keys=False):
    """One self-contained HTML page of the class: status, last provision, kernels, GPUs, autostop, cost, drift."""
    cli.report(hosts=hosts, inventory=inventory, output=output, json_path=json, with_urls=with_urls,
               insecure_host_keys=insecure_host_keys)


@task(help={"hosts": "how many local test hosts to boot (default 2)", "keep": "leave the hosts running afterwards"})
def demo(c, hosts=2, keep=True):
    """Boot local Debian test hosts (root, no AWS) and provision the embedded demo course on them."""
    cli.demo(count=int(hosts), keep=keep)


@task
def disconnect(c):
    """Close the SSH connections kept open between runs (they also close after $FLEET_SSH_PERSIST s idle)."""
    cli.disconnect()


@task(help={"collect": "collect the students' work first, then shut down",
            "discard-student-work": "shut down even though student work was not collected (it is lost)"})
def demo_down(c, collect=False, discard_student_work=False):
    """Shut down the demo's local test hosts (refused while student work is uncollected)."""
    cli.demo_down(collect_first=collect, discard=discard_student_work)


@task(help={"hosts": HOSTS, "inventory": INVENTORY,
            "to": "where to put the work: DIR/<student>/<time>/ (default collected/<course>/)",
            "insecure-host-keys": "accept any host key (throwaway hosts)"})
def collect(c, hosts="all", inventory=None, to=None, insecure_host_keys=False):
    """Collect each student's work (Jupyter folder and collect_paths) into collected/<course>/<student>/."""
    cli.collect(hosts=hosts, inventory=inventory, to=to, insecure_host_keys=insecure_host_keys)


@task(help={"student": "whose work to put back", "host": "onto this host (default: the host of that student)",
            "from": "which collect (a folder name under <student>/; default the latest)", "inventory": INVENTORY,
            "to": "the collected folder the work was collected into (default collected/<course>/)",
            "overwrite": "replace files on the host even when they are newer than the collected copy",
            "insecure-host-keys": "accept any host key (throwaway hosts)"})
def restore(c, student=None, host=None, from_=None, inventory=None, to=None, overwrite=False,
            insecure_host_keys=False):
    """Put a student's collected work back onto a machine, as the course user."""
    if not student:
        raise Exit("--student is required", 1)
    cli.restore(student=student, host=host, from_=from_, inventory=inventory, to=to, overwrite=overwrite,
                insecure_host_keys=insecure_host_keys)


@task
def lint(c):
    """The static checks alone: ruff, mypy and shellcheck (settings in pyproject.toml)."""
    from fleet import lint as checks

    if checks.main():
        raise Exit(code=1)


@task(help={"k": "only tests matching this expression", "unit": "skip the tests that boot hosts",
            "lint": "run the static checks first (default; --no-lint skips them)"})
def test(c, k=None, unit=False, lint=True):
    """Run the static checks (ruff, mypy, shellcheck), then the whole test suite (integration tests boot real hosts and need root)."""
    from fleet import lint as checks

    if lint and checks.main():
        raise Exit("invoke test: the static checks found something (above); fix it, or see `invoke lint`", 1)
    args = ["-m", "not hosts"] if unit else []
    if k:
        args += ["-k", k]
    result = c.run("python3 -m pytest -q " + " ".join(f"'{a}'" for a in args), pty=False, warn=True)
    if result.exited:
        raise Exit(code=result.exited)


@task(help={"hosts": "host counts to measure, comma separated (default 1,10,30)", "json": "write results here",
            "baked-only": "only the cold run from a baked image (skips the bare runs, the long part)",
            "peer": "instead, Fleet side by side with this tool on the same workload: pyinfra (the `bench` extra)",
            "peer-bin": "the peer's command, when it lives in another venv (e.g. /opt/pyinfra/bin/pyinfra)"})
def bench(c, hosts="1,10,30", json="bench/results.json", baked_only=False, peer="", peer_bin=""):
    """Benchmark cold provision (bare and from a baked image), no-op re-runs and drift repair on local test hosts."""
    cli.bench(counts=[int(n) for n in str(hosts).split(",") if n.strip()], json_path=json, baked_only=baked_only,
              peer=peer or None, peer_bin=peer_bin or None)


ns = Collection(provision, check, facts, vars, tunnel, handout, students, lock, gpus, report, disconnect, demo,
                demo_down, lint, test, bench, collect, restore)
try:
    from fleet.aws import tasks as tasks_cloud  # launch, status, stop, start, terminate, snapshot, bake, images (boto3)

    for name in ("launch", "status", "stop", "start", "terminate", "snapshot", "bake", "images_", "cluster_network"):
        if hasattr(tasks_cloud, name):
            ns.add_task(getattr(tasks_cloud, name), name=name.rstrip("_"))
except ImportError as exc:  # keep the local commands usable while cloud parts are missing
    if "tasks_cloud" not in str(exc):
        raise
