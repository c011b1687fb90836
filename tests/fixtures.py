"""Fixtures and helpers shared by the integration tests: a git server every test host can
reach, the CLI run as a user runs it, and a small Jupyter client over an SSH tunnel."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from fleet.testhosts import hosts as testhosts

PROJECT = Path(__file__).resolve().parent.parent
NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Week 1"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["total = sum(range(10))\n", "print('total', total)"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["import platform\n", "print('python', platform.python_version())"]},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def stop(proc: subprocess.Popen) -> None:
    """End a process the test started: SIGTERM, then SIGKILL if it has not gone in 10 s (an ssh
    client on a loaded machine can sit in its exit handshake; the test is not about that)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_port(address: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{address}:{port} did not open")


@dataclass
class GitServer:
    base: str
    root: Path

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def commit(self, name: str, files: dict[str, str], message: str) -> str:
        """Add a commit to the bare repository `name` (created on first use); returns its sha."""
        bare = self.root / name
        work = self.root / (name + ".work")
        env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@t")
        if not bare.exists():
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
            subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
            subprocess.run(["git", "-C", str(work), "remote", "add", "origin", str(bare)], check=True)
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", message], check=True, env=env)
        subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True)
        return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()


@pytest.fixture(scope="session")
def git_server(tmp_path_factory) -> Iterator[GitServer]:
    """git daemon on the controller alias address, which every test host routes to."""
    testhosts.controller_setup()
    root = tmp_path_factory.mktemp("git")
    port = free_port(testhosts.CONTROLLER_ALIAS)
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                             f"--listen={testhosts.CONTROLLER_ALIAS}", f"--port={port}", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(testhosts.CONTROLLER_ALIAS, port)
        server = GitServer(f"git://{testhosts.CONTROLLER_ALIAS}:{port}", root)
        server.commit("course.git", {"README.md": "# Course\n", "week1/hello.ipynb": json.dumps(NOTEBOOK, indent=1)},
                      "week 1")
        yield server
    finally:
        stop(proc)


@dataclass
class Run:
    rc: int
    output: str
    report: dict


def fleet(*args: str, state: Path, inventory: Path | None = None, roles_path: bool = False,
          timeout: int = 1200, env: dict | None = None) -> Run:
    """Run `invoke ...` as a user would, with a JSON report when the command writes one."""
    report = state / f"report-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "invoke", *args]
    if args and args[0] in ("provision", "check"):
        argv += ["--json", str(report)]
    if inventory is not None:
        argv += ["--inventory", str(inventory)]
    environment = dict(os.environ, FLEET_STATE_DIR=str(state), COLUMNS="200", **(env or {}))
    if roles_path:
        environment["FLEET_ROLES_PATH"] = str(PROJECT / "tests" / "site_roles")
    proc = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=timeout, env=environment,
                          stdin=subprocess.DEVNULL)
    data = json.loads(report.read_text()) if report.exists() else {}
    return Run(proc.returncode, proc.stdout + proc.stderr, data)


def start_fleet(*args: str, state: Path, inventory: Path, roles_path: bool = True) -> tuple[subprocess.Popen, Path]:
    """Start `invoke ...` in the background (for interrupting it); returns the process and its report path."""
    report = state / f"report-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "invoke", *args, "--json", str(report), "--inventory", str(inventory)]
    environment = dict(os.environ, FLEET_STATE_DIR=str(state), COLUMNS="200")
    if roles_path:
        environment["FLEET_ROLES_PATH"] = str(PROJECT / "tests" / "site_roles")
    proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=environment, stdin=subprocess.DEVNULL)
    return proc, report


def wait_for(predicate, timeout: float = 60, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def changed_steps(report: dict, host: str) -> list[str]:
    return [s["name"] for s in report["hosts"][host]["steps"] if s["status"] in ("changed", "would change")]


def sh(host, command: str, check: bool = True):
    """Run a shell command as root on a test host over real ssh."""
    import shlex

    return host.run("sudo -n bash -c " + shlex.quote(command), check=check)


def as_root(host, command: str) -> str:
    """Over a root login, so that killing or counting `ubuntu`'s sessions leaves this one alone."""
    argv = host.ssh_command(command)
    argv[-2] = f"root@{host.address}"
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def sshd_logins(host, user: str = "ubuntu") -> int:
    """Logins of `user` in the host's sshd log."""
    time.sleep(0.5)  # journald may lag behind sshd by a moment
    out = as_root(host, f"journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey for {user}' || true")
    return int(out.strip() or 0)
