"""The course user as an attacker, on a real host: `student` has a shell and no sudo, and tries
to make the commands Fleet runs as root do something else (planted git configuration that
runs commands, links, hard links and FIFOs where Fleet manages files, swapped in before and
during runs). After provision, check and repair runs: nothing ran as root on the student's
behalf, no file outside the student's territory changed, and each run either converged or
named the path it refused and why."""
from __future__ import annotations

import shlex
import time

import pytest

from fleet.testhosts import hosts as testhosts
from tests.fixtures import fleet, git_server, sh  # noqa: F401 (fixture)

pytestmark = pytest.mark.hosts

HOME = "/home/student"
PROFILE = f"{HOME}/.ipython/profile_default"
CONFIG = f"{PROFILE}/ipcluster_config.py"
CHECKOUT = f"{HOME}/notebooks/course"
EVIDENCE = "/tmp/fleet-evidence"        # the student's commands record here which uid ran them
# Root's files the attacks aim at; their owner, mode and content must never change.
VICTIMS = "/etc/fleet-victim /etc/fleet-victim-dir /etc/fleet-victim-dir/jupyter_server_config.json"
# Everything root owns that a redirected write or chown could reach, as a fingerprint.
SNAPSHOT = ("find /etc /root /usr/local /opt/jupyter/bin -xdev \\( -type f -o -type d -o -type l \\) "
            "-printf '%p %u %g %m %l\\n' | sort | sha256sum; "
            "find /etc /root /usr/local -xdev -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum")


def as_student(host, script: str, check: bool = True):
    return sh(host, f"runuser -u student -- bash -c {shlex.quote(script)}", check=check)


def evidence(host) -> list[str]:
    """uids that ran the student's planted commands ('0' would be root running them)."""
    out = sh(host, f"cat {EVIDENCE}/* 2>/dev/null; true").stdout
    return sorted(set(out.split()))


def failed_messages(run, host) -> list[str]:
    return [f"{s['name']}: {s['message']}" for s in run.report["hosts"][host]["steps"] if s["status"] == "failed"]


@pytest.fixture(scope="module")
def course(hosts_factory, git_server, tmp_path_factory):  # noqa: F811
    [host] = hosts_factory(1)
    state = tmp_path_factory.mktemp("state")
    inventory = state / "course.yml"
    testhosts.write_inventory([host], inventory, vars={
        "roles": ["jupyter", "repos", "clusters"], "course_user": "student",
        "repos_list": [{"url": git_server.url("course.git"), "dest": "course", "ref": "main"}],
    })
    first = fleet("provision", state=state, inventory=inventory)
    assert first.rc == 0, first.output
    sh(host, f"echo root-secret > /etc/fleet-victim && chmod 0600 /etc/fleet-victim && "
             f"mkdir -p /etc/fleet-victim-dir && echo '{{}}' > /etc/fleet-victim-dir/jupyter_server_config.json && "
             f"mkdir -p -m 1777 {EVIDENCE}")
    assert sh(host, "sudo -l -U student", check=False).stdout.count("may run") == 0   # no sudo: a real attacker
    yield host, state, inventory
    testhosts.teardown([host])


def run_and_snapshot(course, *args: str):
    host, state, inventory = course
    victims = f"stat -c '%n %u %a %s' {VICTIMS} 2>&1; true"    # a removed victim shows as a difference
    before = sh(host, SNAPSHOT).stdout, sh(host, victims).stdout
    run = fleet(*args, state=state, inventory=inventory)
    after = sh(host, SNAPSHOT).stdout, sh(host, victims).stdout
    assert after == before, f"root's files changed during {args}:\n{run.output}"
    assert sh(host, "cat /etc/fleet-victim").stdout == "root-secret\n"
    return run


def test_planted_git_configuration_runs_only_as_the_student(course, git_server):  # noqa: F811
    host, _, _ = course
    hook = f"#!/bin/sh\nid -u >> {EVIDENCE}/$$.uid\n"
    as_student(host, f"""
        printf '%s' {shlex.quote(hook)} > ~/evil && chmod +x ~/evil
        mkdir -p ~/hooks && cp ~/evil ~/hooks/post-checkout
        cd {CHECKOUT}
        git config core.fsmonitor ~/evil          # run by every `git status`
        git config core.hooksPath ~/hooks         # run by every checkout
        git config --global core.fsmonitor ~/evil
    """)
    git_server.commit("course.git", {"week2.md": "# Week 2\n"}, "week 2")   # so the repair checks out
    for args in (("check",), ("provision",), ("provision",)):
        run = run_and_snapshot(course, *args)
        assert run.rc in (0, 4), run.output
    ran = evidence(host)
    student = sh(host, "id -u student").stdout.strip()
    assert ran == [student], f"planted commands ran as uids {ran}; only the student ({student}) may run them"
    assert sh(host, f"runuser -u student -- git -C {CHECKOUT} log -1 --format=%s").stdout.strip() == "week 2"
    as_student(host, f"cd {CHECKOUT} && git config --unset core.fsmonitor && git config --unset core.hooksPath && "
                     "git config --global --unset core.fsmonitor")


ATTACKS = [
    # (id, what the student does before the run, the path the run must name)
    ("config is a link to root's file", f"rm -f {CONFIG} && ln -s /etc/fleet-victim {CONFIG}", CONFIG),
    ("config is a hard link to root's file", f"rm -f {CONFIG} && ln /etc/fleet-victim {CONFIG}", CONFIG),
    ("config is a FIFO", f"rm -f {CONFIG} && mkfifo {CONFIG}", CONFIG),
    ("profile folder is a link into /etc", f"mv {PROFILE} {PROFILE}.mine && ln -s /etc/fleet-victim-dir {PROFILE}", PROFILE),
    ("~/.jupyter is a link to a root folder", f"rm -rf ~/.jupyter && ln -s /etc/fleet-victim-dir ~/.jupyter",
     f"{HOME}/.jupyter/jupyter_server_config.json"),
]
UNDO = (f"rm -rf {CONFIG} ~/.jupyter; [ -L {PROFILE} ] && rm {PROFILE} && mv {PROFILE}.mine {PROFILE}; "
        f"mkdir -p ~/.jupyter; true")


@pytest.mark.parametrize("case,attack,path", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_links_and_fifos_planted_before_a_run(course, case, attack, path):
    host, _, _ = course
    planted = as_student(host, attack, check=False)
    if planted.returncode != 0:
        # The kernel itself refuses this one (fs.protected_hardlinks=1): the attack cannot be made.
        assert "ln " in attack and "Operation not permitted" in planted.stderr, planted.stderr
        return
    check = run_and_snapshot(course, "check")
    assert check.rc in (2, 4), check.output      # refused, or (as the student may) planned as the student
    run = run_and_snapshot(course, "provision")
    messages = failed_messages(run, host.name)
    assert run.rc == 2 and any(path in m for m in messages), (messages, run.output)
    as_student(host, UNDO)
    repair = run_and_snapshot(course, "provision")
    assert repair.rc == 0, repair.output
    assert as_student(host, f"stat -c '%U %F' {CONFIG}").stdout.strip() == "student regular file"


def test_links_swapped_in_a_loop_during_runs(course):
    """The student races the runs: between the probe and the apply, the config and its folder
    flip between a drifted file and links to root's files."""
    host, _, _ = course
    loop = (f"while :; do rm -f {CONFIG}; echo 'c = 0' > {CONFIG}; rm -f {CONFIG}; ln -s /etc/fleet-victim {CONFIG}; "
            f"mv -T {PROFILE} {PROFILE}.away 2>/dev/null && ln -sfn /etc/fleet-victim-dir {PROFILE} && "
            f"rm -f {PROFILE} && mv -T {PROFILE}.away {PROFILE}; done")
    pid = sh(host, f"setsid -f runuser -u student -- bash -c {shlex.quote(loop)} >/dev/null 2>&1 < /dev/null; "
                   "sleep 0.5; pgrep -u student -f 'fleet-victim-dir' | head -1").stdout.strip()
    assert pid, "the attack loop did not start"
    try:
        for args in (("check",), ("provision",), ("provision",), ("provision",)):
            run = run_and_snapshot(course, *args)
            assert run.rc in (0, 2, 4), run.output      # converged, refused or drift: never a crash
            for message in failed_messages(run, host.name):
                assert PROFILE in message, message       # a refusal names the path it refused
    finally:
        sh(host, "pkill -u student -f fleet-victim-dir; sleep 0.3; true")
    time.sleep(0.5)
    as_student(host, UNDO + f"; rm -rf {PROFILE}.away")
    repair = run_and_snapshot(course, "provision")
    assert repair.rc == 0, repair.output
    again = run_and_snapshot(course, "provision")
    assert again.rc == 0 and again.report["hosts"][host.name]["status"] == "ok", again.output
