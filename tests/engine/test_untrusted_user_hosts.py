"""The course user as an attacker, on a real host: `student` has a shell and no sudo, and tries
to make the commands Fleet runs as root do something else: planted git configuration that
runs commands; links, a hard link and FIFOs where Fleet manages files, planted before a run;
a FIFO swapped in while the probe hashes; links swapped in a loop during runs. After check,
provision and repair runs: nothing ran as root on the student's behalf, no file outside the
student's territory changed, and each run ended with the exit code and the refusal its case
expects.

Every case checks, right before each run, that what it planted is there: a planting the
kernel or a typo prevented fails the test instead of passing it unattacked."""
from __future__ import annotations

import shlex

import pytest

from fleet.testhosts import hosts as testhosts
from tests.fixtures import fleet, git_server, sh, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.hosts

HOME = "/home/student"
PROFILE = f"{HOME}/.ipython/profile_default"
CONFIG = f"{PROFILE}/ipcluster_config.py"
CHECKOUT = f"{HOME}/notebooks/course"
EVIDENCE = "/tmp/fleet-evidence"        # the student's commands record here which uid ran them
# Root's files the attacks aim at; their owner, mode and content must never change.
# /etc/fleet-victim-shared is root's, group `student`, 0660: a file the student may write, as a course's
# shared file could be, and so (fs.protected_hardlinks=1 allows it) may hard-link into their home.
SHARED = "/etc/fleet-victim-shared"
VICTIMS = f"/etc/fleet-victim /etc/fleet-victim-dir /etc/fleet-victim-dir/jupyter_server_config.json {SHARED}"
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
             f"mkdir -p -m 1777 {EVIDENCE} && "
             # The shared file holds what the config should hold: only its owner and mode differ, so a
             # step that would fix them in place (chown/chmod follow a hard link) is what the attack invites.
             f"cat {CONFIG} > {SHARED} && chown root:student {SHARED} && chmod 0660 {SHARED}")
    assert sh(host, "sysctl -n fs.protected_hardlinks").stdout.strip() == "1"   # the kernel the cases are written for
    assert sh(host, "sudo -l -U student", check=False).stdout.count("may run") == 0   # no sudo: a real attacker
    yield host, state, inventory
    testhosts.teardown([host])


def run_and_snapshot(course, *args: str, planted: str | None = None):
    """Run Fleet; root's files must be as they were. `planted`: a shell test that what the case
    planted is still there, checked right before the run."""
    host, state, inventory = course
    victims = f"stat -c '%n %u %G %a %s' {VICTIMS} 2>&1; true"    # a removed victim shows as a difference
    before = sh(host, SNAPSHOT).stdout, sh(host, victims).stdout
    if planted:
        assert sh(host, planted, check=False).returncode == 0, f"not planted before {args}: {planted}"
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
    planted = (f"[ \"$(runuser -u student -- git -C {CHECKOUT} config core.fsmonitor)\" = {HOME}/evil ] && "
               f"[ \"$(runuser -u student -- git -C {CHECKOUT} config core.hooksPath)\" = {HOME}/hooks ]")
    for args, rc in ((("check",), 4), (("provision",), 0), (("provision",), 0)):   # drift (week 2), then converged
        run = run_and_snapshot(course, *args, planted=planted)
        assert run.rc == rc, run.output
    ran = evidence(host)
    student = sh(host, "id -u student").stdout.strip()
    assert ran == [student], f"planted commands ran as uids {ran}; only the student ({student}) may run them"
    assert sh(host, f"runuser -u student -- git -C {CHECKOUT} log -1 --format=%s").stdout.strip() == "week 2"
    as_student(host, f"cd {CHECKOUT} && git config --unset core.fsmonitor && git config --unset core.hooksPath && "
                     "git config --global --unset core.fsmonitor")


def is_regular_file_of_the_student(path: str) -> str:
    return f"[ -f {path} ] && [ ! -L {path} ] && [ \"$(stat -c %U {path})\" = student ]"


ATTACKS = [
    # (id, what the student does before the run, a test that it is planted, check's exit code,
    #  what the one failed step's message says: provision exits 2 with it)
    ("config is a link to root's file", f"rm -f {CONFIG} && ln -s /etc/fleet-victim {CONFIG}",
     f"[ \"$(readlink {CONFIG})\" = /etc/fleet-victim ]", 2, f"{CONFIG} exists and is a symbolic link, not a file"),
    # Not a root file the student cannot write (the kernel refuses that link): root's file the student
    # may write through their group. Root must not take it over (chown/chmod in place would change
    # root's file), and the student's run must not chown it either.
    ("config is a hard link to root's shared file", f"rm -f {CONFIG} && ln {SHARED} {CONFIG}",
     f"[ {CONFIG} -ef {SHARED} ] && [ \"$(stat -c %h {SHARED})\" = 2 ]", 2,
     f"refused: {CONFIG} belongs to root, not student"),
    ("config is a FIFO", f"rm -f {CONFIG} && mkfifo {CONFIG}", f"[ -p {CONFIG} ]", 2,
     f"{CONFIG} exists and is a fifo, not a file"),
    ("profile folder is a link into /etc",
     f"mv {PROFILE} {PROFILE}.mine && ln -s /etc/fleet-victim-dir {PROFILE}",
     f"[ \"$(readlink {PROFILE})\" = /etc/fleet-victim-dir ]", 2,
     f"{PROFILE} exists and is a symbolic link, not a directory"),
    # Check plans the removal (the probe, as the student, sees root's file through the link); the
    # removal, as the student, is refused by the kernel.
    ("~/.jupyter is a link to a root folder", "rm -rf ~/.jupyter && ln -s /etc/fleet-victim-dir ~/.jupyter",
     f"[ \"$(readlink {HOME}/.jupyter)\" = /etc/fleet-victim-dir ]", 4,
     f"remove {HOME}/.jupyter/jupyter_server_config.json (it would override the managed config): failed (exit 1): "
     f"rm: cannot remove '{HOME}/.jupyter/jupyter_server_config.json': Permission denied"),
]
UNDO = (f"rm -rf {CONFIG} ~/.jupyter; [ -L {PROFILE} ] && rm {PROFILE} && mv {PROFILE}.mine {PROFILE}; "
        f"mkdir -p ~/.jupyter; true")


@pytest.mark.parametrize("case,attack,planted,check_rc,refusal", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_links_and_fifos_planted_before_a_run(course, case, attack, planted, check_rc, refusal):
    host, _, _ = course
    as_student(host, attack)                 # check=True: a planting the kernel refuses fails the test
    try:
        check = run_and_snapshot(course, "check", planted=planted)
        assert check.rc == check_rc, check.output
        run = run_and_snapshot(course, "provision", planted=planted)
        failed = [s["message"] for s in run.report["hosts"][host.name]["steps"] if s["status"] == "failed"]
        assert run.rc == 2 and len(failed) == 1 and failed[0].startswith(refusal), (failed, run.output)
        assert sh(host, planted, check=False).returncode == 0, "the run took over what the student planted"
    finally:
        as_student(host, UNDO)               # a failing case leaves the next one a clean start
    repair = run_and_snapshot(course, "provision")
    assert repair.rc == 0, repair.output
    assert sh(host, is_regular_file_of_the_student(CONFIG), check=False).returncode == 0


FIFO_LOG = "/tmp/fleet-fifo.log"
# As the student: wait until the probe's hasher (run as the student) is busy with a big file of
# theirs that comes before the config, swap the config for a FIFO (the probe has already seen a
# regular file there), then wait until a reader has opened the FIFO and keep it waiting for data.
FIFO_WATCH = f"""
import os, time
def log(text):
    with open({FIFO_LOG!r}, "a") as f: f.write(text + "\\n")
me = str(os.getuid())
def hashing():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{{pid}}/comm").read().strip()
            uid = open(f"/proc/{{pid}}/status").read().split("Uid:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if comm == "sha256sum" and uid == me:
            return True
    return False
log("fleet-fifo-watch started")
while not hashing():
    time.sleep(0.01)
os.unlink({CONFIG!r}); os.mkfifo({CONFIG!r})
log("swapped")
while True:
    try:
        fd = os.open({CONFIG!r}, os.O_WRONLY | os.O_NONBLOCK)   # succeeds once a reader has it open
        break
    except OSError:
        time.sleep(0.01)
log("met")
time.sleep(3600)
"""


def test_a_fifo_swapped_in_while_the_probe_hashes_cannot_hold_the_run(course):
    """The probe tests that the config is a regular file, then hashes it. The student swaps a FIFO in
    between: the hasher opens it and waits for data that never comes. Only the probe's time limit
    on the hash (fleet/engine/remote.py, stat_batch) ends that wait; without it, the run is held
    until --command-timeout cuts the host off (exit 3)."""
    host, _, _ = course
    big = f"{HOME}/.jupyter/jupyter_server_config.json"   # managed (absent), probed before the config
    as_student(host, f"mkdir -p ~/.jupyter && truncate -s 1G {big} && rm -f {FIFO_LOG}")
    sh(host, f"setsid -f runuser -u student -- python3 -c {shlex.quote(FIFO_WATCH)} >/dev/null 2>&1 < /dev/null")
    try:
        fleet_wait(host, FIFO_LOG, "fleet-fifo-watch started")
        planted = f"{is_regular_file_of_the_student(CONFIG)} && [ -f {big} ] && [ $(stat -c %s {big}) -gt 100000000 ]"
        run = run_and_snapshot(course, "provision", "--command-timeout", "150", planted=planted)
        log = sh(host, f"cat {FIFO_LOG}").stdout.split()
        assert log == ["fleet-fifo-watch", "started", "swapped", "met"], (log, run.output)   # the hasher met the FIFO
        assert run.rc == 0, run.output
        # The probe saw a regular file with no hash: the config is written again (as the student,
        # over the FIFO), and the big file is removed.
        assert {s["name"] for s in run.report["hosts"][host.name]["steps"] if s["status"] == "changed"} >= \
            {f"template ipcluster_config.py.j2 -> {CONFIG}", f"absent {big}"}, run.output
        assert sh(host, is_regular_file_of_the_student(CONFIG), check=False).returncode == 0
    finally:
        sh(host, "pkill -u student -f fleet-fifo-watch; true")
    again = run_and_snapshot(course, "provision")
    assert again.rc == 0 and again.report["hosts"][host.name]["status"] == "ok", again.output


def fleet_wait(host, path: str, text: str) -> None:
    wait_for(lambda: text in sh(host, f"cat {path} 2>/dev/null; true").stdout, timeout=30)


RACE_COUNT = "/tmp/fleet-race.count"
# What a run racing the loop may report for a step it did not finish: the probe met a link, or the
# step, run as the student, failed on what the loop had just moved (the student's own rights).
STUDENT_ERRORS = ("No such file", "Permission denied", "Not a directory", "Operation not permitted")
RACED = (f"{CONFIG} exists and is a symbolic link, not a file", f"{PROFILE} exists and is a symbolic link, not a directory")


def vanished(message: str) -> bool:
    """A fact read (as the student) while the loop removed the file between its test and its stat."""
    return (message.startswith(("could not read fact content@student:", "could not read fact stat@student:"))
            and (CONFIG in message or PROFILE in message) and "No such file or directory" in message)


def race_outcome(run, host: str) -> tuple[int, bool, bool]:
    """The exit code a run's report calls for (provision or check), whether its probe met a link,
    and whether it applied a change to the config or its folder while the loop ran."""
    result = run.report["hosts"][host]
    applied = any((CONFIG in s["name"] or PROFILE in s["name"]) and
                  (s["status"] == "changed" or (s["status"] == "failed" and ": failed (exit " in s["message"]))
                  for s in result["steps"])
    messages = [s["message"] for s in result["steps"] if s["status"] == "failed"]
    for message in messages:   # a refusal, or an error of the student's own rights: never root's guard
        assert message in RACED or (": failed (exit " in message and "root does not write" not in message
                                    and any(e in message for e in STUDENT_ERRORS)) or vanished(message), message
    broken = any(not v["ok"] for v in result["verifies"])     # the student broke their own profile
    if run.report["check"]:      # check: a failing check is drift, as a step that would change is
        drift = broken or any(s["status"] == "would change" for s in result["steps"])
        rc = 2 if messages else 4 if drift else 0
    else:
        rc = 2 if messages or broken else 0
    return rc, any(m in RACED for m in messages), applied


def test_links_swapped_in_a_loop_during_runs(course):
    """The student races the runs: between the probe and the apply, the config and its folder
    flip between a drifted file and links to root's files. The loop counts its rounds; each run
    must have raced it, and the runs go on until one met a link in the probe and one applied a
    change while the loop ran (at most 8 runs)."""
    host, _, _ = course
    loop = (f"n=0; while :; do rm -f {CONFIG}; echo 'c = 0' > {CONFIG}; rm -f {CONFIG}; ln -s /etc/fleet-victim {CONFIG}; "
            f"mv -T {PROFILE} {PROFILE}.away 2>/dev/null && ln -sfn /etc/fleet-victim-dir {PROFILE} && "
            f"rm -f {PROFILE} && mv -T {PROFILE}.away {PROFILE}; n=$((n+1)); echo $n > {RACE_COUNT}; done")
    sh(host, f"rm -f {RACE_COUNT}; setsid -f runuser -u student -- bash -c {shlex.quote(loop)} >/dev/null 2>&1 < /dev/null")
    rounds = lambda: int(sh(host, f"cat {RACE_COUNT} 2>/dev/null || echo 0").stdout.strip() or 0)  # noqa: E731
    met, applied = [], []
    try:
        wait_for(lambda: rounds() > 0, timeout=30)
        for args in (("check",), *[("provision",)] * 7):
            before = rounds()
            run = run_and_snapshot(course, *args)
            assert rounds() > before, f"the loop did not swap during {args}"
            rc, met_link, changed = race_outcome(run, host.name)
            print(f"race: {args[0]}: {rounds() - before} rounds, exit {run.rc}, met a link: {met_link}, "
                  f"applied: {changed}")
            assert run.rc == rc, (rc, run.output)
            met.append(met_link)
            applied.append(changed)
            if any(met) and any(applied):
                break
    finally:
        sh(host, "pkill -u student -f fleet-race.count; true")
        wait_for(lambda: sh(host, "pgrep -u student -f fleet-race.count", check=False).returncode == 1, timeout=10)
    assert any(met), "no run met a link: the race was never run"
    assert any(applied), "no run applied a change while the loop ran"
    # The loop may have been stopped with the profile moved away and a link in its place: put the
    # folder back first, so that UNDO removes the link to root's file inside it.
    as_student(host, f"[ -L {PROFILE} ] && rm {PROFILE}; [ -d {PROFILE} ] || mv -T {PROFILE}.away {PROFILE}; "
                     f"rm -rf {PROFILE}.away; " + UNDO)
    repair = run_and_snapshot(course, "provision")
    assert repair.rc == 0, repair.output
    again = run_and_snapshot(course, "provision")
    assert again.rc == 0 and again.report["hosts"][host.name]["status"] == "ok", again.output
