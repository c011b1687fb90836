"""`invoke demo`: local Debian test hosts provisioned with the embedded demo course.

Needs root (it boots systemd-nspawn containers, see fleet/testhosts/); no AWS account.
The hosts and a git daemon serving demo/course stay up until `invoke demo-down`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fleet import app
from fleet.engine.roles import PROJECT
from fleet.errors import FleetError
from fleet.testhosts import hosts as testhosts

DEMO_INVENTORY = PROJECT / "inventory" / "demo.yml"
LOCAL_INVENTORY = PROJECT / "inventory" / "local.yml"
COURSE = PROJECT / "demo" / "course"
GIT_PID = testhosts.RUN / "demo-git.pid"


def _git(*args: str, cwd: Path | None = None) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="Jupyter Fleet demo", GIT_AUTHOR_EMAIL="demo@localhost",
               GIT_COMMITTER_NAME="Jupyter Fleet demo", GIT_COMMITTER_EMAIL="demo@localhost")
    subprocess.run(["git", *args], cwd=cwd, check=True, env=env, capture_output=True)


def publish_course() -> str:
    """Commit demo/course into a bare repository and serve it with git daemon; return its URL."""
    root = testhosts.STATE / "demo-git"
    work, bare = root / "course", root / "course.git"
    if not bare.exists():
        root.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", "--bare", "-b", "main", str(bare))
        _git("init", "-q", "-b", "main", str(work))
        _git("remote", "add", "origin", str(bare), cwd=work)
    subprocess.run(["cp", "-a", f"{COURSE}/.", str(work)], check=True)
    _git("add", "-A", cwd=work)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=work).returncode:
        _git("commit", "-q", "-m", "demo course", cwd=work)
        _git("push", "-q", "origin", "main", cwd=work)
    _stop_git()
    testhosts.RUN.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                             f"--listen={testhosts.CONTROLLER_ALIAS}", "--port=9418", str(root)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    GIT_PID.write_text(str(proc.pid))
    time.sleep(0.5)
    return f"git://{testhosts.CONTROLLER_ALIAS}/course.git"


def _stop_git() -> None:
    if GIT_PID.exists():
        try:
            os.kill(int(GIT_PID.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        GIT_PID.unlink()


def run_demo(count: int, keep: bool = True) -> int:
    if os.geteuid() != 0:
        raise FleetError("the demo boots local test hosts (systemd-nspawn): run it as root")
    app.console.print(f"[bold]Jupyter Fleet demo[/]: booting {count} local Debian 12 hosts (first time: ~2 min to build the base image)")
    testhosts.controller_setup()
    testhosts.ensure_base()
    url = publish_course()
    previous = testhosts.registered(detached_only=True)
    if previous:
        app.console.print(f"tearing down the previous demo's {len(previous)} hosts")
        testhosts.teardown(previous)
    hosts = testhosts.boot(count)
    testhosts.detach(hosts)
    demo = yaml.safe_load(DEMO_INVENTORY.read_text())
    demo["vars"]["repos_list"] = [{"url": url, "dest": "course", "ref": "main"}]
    testhosts.write_inventory(hosts, LOCAL_INVENTORY, vars=demo["vars"])
    data = yaml.safe_load(LOCAL_INVENTORY.read_text())
    LOCAL_INVENTORY.write_text("# Written by `invoke demo` (local test hosts); removed by `invoke demo-down`.\n"
                               + yaml.safe_dump({"name": "demo", **data}, sort_keys=False))
    # The demo's hosts are throwaway containers that share one base image: no host-key pinning.
    run = app.provision(hosts="all", inventory=str(LOCAL_INVENTORY), insecure_host_keys=True)
    if run.exit_code() == 0:
        from fleet.course import access

        app.console.print("\n[bold]Reach each host's Jupyter[/] (run the ssh command, then open the URL):")
        sys.stdout.write(access.handout(app.Session.open(str(LOCAL_INVENTORY)), "all", "md")[0])
        app.console.print("\nRe-run `invoke provision --insecure-host-keys` any time (inventory/local.yml is the "
                          "default inventory now); `invoke demo-down` stops the hosts.")
    if not keep:
        stop_demo()
    return run.exit_code()


def stop_demo() -> None:
    hosts = testhosts.registered(detached_only=True)  # never the hosts of a test run in progress
    testhosts.teardown(hosts)
    _stop_git()
    LOCAL_INVENTORY.unlink(missing_ok=True)
    app.console.print(f"stopped {len(hosts)} demo hosts")
