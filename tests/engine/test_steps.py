"""Each step's plan for "absent", "different" and "already right", on recorded facts (tests as
data), plus fact commands run for real against this machine's filesystem."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from fleet.errors import InputError
from fleet.engine.git import Git, RefResolver
from fleet.engine.steps import (APT_AGE, Absent, Apt, Command, Directory, File, Line, Pip, Service, User,
                         dpkg_fact, path_fact, unit_fact, venv_fact)


class StrictFacts(dict):
    """Like a host that answers only what the step asked for: any other key is a bug."""

    def __init__(self, step, values):
        wanted = {f.key for f in step.facts(diff=True)}
        assert set(values) == wanted, f"facts given {sorted(values)} but the step asks for {sorted(wanted)}"
        super().__init__(values)


def stat(kind="regular file", mode="0644", owner="root", group="root", content=None):
    return {"kind": kind, "mode": mode, "owner": owner, "group": group,
            "sha256": hashlib.sha256(content).hexdigest() if content is not None else None, "content": content}


class FakeResolver(RefResolver):
    def resolve(self, url, ref):
        if "unreachable" in url:
            return None, None, f"cannot reach repository {url}: Could not resolve host"
        return "a" * 40, ref, ""


def git(**kw):
    return Git("git://srv/course.git", "/home/u/course", "main", user="u", resolver=FakeResolver(), **kw)


GIT_KEY = "git@u:/home/u/course"
CASES = [
    # (id, step factory, facts, changed, message fragment, command fragment or None, failed)
    ("apt absent", lambda: Apt(("git", "curl")),
     {dpkg_fact(("git", "curl")).key: {"curl": "7.88"}, APT_AGE.key: 10}, True, "install git", "install -y --no-install-recommends git", False),
    ("apt absent, stale cache", lambda: Apt(("git",), cache_max_age=60),
     {dpkg_fact(("git",)).key: {}, APT_AGE.key: 3600}, True, "install git", "__apt 300 update", False),
    ("apt right", lambda: Apt(("git",)), {dpkg_fact(("git",)).key: {"git": "1:2.39"}, APT_AGE.key: 10**9},
     False, "git already installed", None, False),
    ("pip no venv", lambda: Pip("/opt/j", ["notebook==7.6.5"]), {venv_fact("/opt/j").key: None},
     True, "create venv", "python3 -m venv /opt/j", False),
    ("pip different version", lambda: Pip("/opt/j", ["notebook==7.6.5", "numpy<1.24"]),
     {venv_fact("/opt/j").key: {"notebook": "7.6.4", "numpy": "1.23.5"}}, True, "install notebook==7.6.5", "-q notebook==7.6.5", False),
    ("pip right", lambda: Pip("/opt/j", ["notebook==7.6.5", "numpy<1.24"]),
     {venv_fact("/opt/j").key: {"notebook": "7.6.5", "numpy": "1.23.5"}}, False, "already satisfied", None, False),
    ("dir absent", lambda: Directory("/srv/nb", owner="u", mode="0755"), {path_fact("/srv/nb").key: None},
     True, "create /srv/nb", "mkdir -p /srv/nb", False),
    ("dir different mode", lambda: Directory("/srv/nb", owner="u", mode="0755"),
     {path_fact("/srv/nb").key: stat("directory", "0700", "u")}, True, "fix owner/mode", "chmod 0755 /srv/nb", False),
    ("dir right", lambda: Directory("/srv/nb", owner="u", mode="0755"),
     {path_fact("/srv/nb").key: stat("directory", "0755", "u")}, False, "already present", None, False),
    ("dir is a file", lambda: Directory("/srv/nb"), {path_fact("/srv/nb").key: stat()}, False, "not a directory", None, True),
    ("file absent", lambda: File("/etc/x.conf", "a=1\n"), {path_fact("/etc/x.conf", True).key: None},
     True, "create /etc/x.conf", "__put /etc/x.conf 0644 root root", False),
    ("file different", lambda: File("/etc/x.conf", "a=1\n"), {path_fact("/etc/x.conf", True).key: stat(content=b"a=2\n")},
     True, "update /etc/x.conf", "__put", False),
    ("file mode only", lambda: File("/etc/x.conf", "a=1\n", mode="0600"),
     {path_fact("/etc/x.conf", True).key: stat(content=b"a=1\n")}, True, "fix owner/mode", "chmod 0600", False),
    ("file right", lambda: File("/etc/x.conf", "a=1\n"), {path_fact("/etc/x.conf", True).key: stat(content=b"a=1\n")},
     False, "already up to date", None, False),
    ("absent present", lambda: Absent("/etc/j.json"), {path_fact("/etc/j.json").key: stat()}, True, "remove /etc/j.json", "rm -rf -- /etc/j.json", False),
    ("absent right", lambda: Absent("/etc/j.json"), {path_fact("/etc/j.json").key: None}, False, "already absent", None, False),
    ("line absent file", lambda: Line("/etc/e", "X=1"), {path_fact("/etc/e", True).key: None}, True, "add line", "__put /etc/e", False),
    ("line replace", lambda: Line("/etc/e", "X=1", regexp=r"^X="), {path_fact("/etc/e", True).key: stat(content=b"A\nX=2\n")},
     True, "replace line", "__put", False),
    ("line right", lambda: Line("/etc/e", "X=1"), {path_fact("/etc/e", True).key: stat(content=b"A\nX=1\n")}, False, "already in", None, False),
    ("service absent", lambda: Service("jupyter"), {unit_fact("jupyter").key: {"LoadState": "not-found", "ActiveState": "inactive", "UnitFileState": ""}},
     True, "enable and start jupyter", "systemctl enable -q jupyter", False),
    ("service stopped", lambda: Service("jupyter"), {unit_fact("jupyter").key: {"LoadState": "loaded", "ActiveState": "inactive", "UnitFileState": "enabled"}},
     True, "start jupyter", "systemctl start jupyter", False),
    ("service right", lambda: Service("jupyter"), {unit_fact("jupyter").key: {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"}},
     False, "already enabled and running", None, False),
    ("user absent", lambda: User("student"), {"user:student": None}, True, "create user student", "useradd -m -s /bin/bash student", False),
    ("user different", lambda: User("student", groups=("docker",)), {"user:student": {"shell": "/bin/bash", "home": "/home/student", "groups": ["student"]}},
     True, "update user", "usermod -aG docker student", False),
    ("user right", lambda: User("student"), {"user:student": {"shell": "/bin/bash", "home": "/home/student", "groups": ["student"]}},
     False, "already present", None, False),
    ("command creates absent", lambda: Command("make", creates="/opt/x"), {path_fact("/opt/x").key: None}, True, "run make", "make", False),
    ("command creates right", lambda: Command("make", creates="/opt/x"), {path_fact("/opt/x").key: stat()}, False, "already exists", None, False),
    ("command unless fails", lambda: Command("make", unless="test -x /opt/y"), {"unless:None:test -x /opt/y": 1}, True, "run make", "make", False),
    ("command unless ok", lambda: Command("make", unless="test -x /opt/y"), {"unless:None:test -x /opt/y": 0}, False, "already done", None, False),
    ("command not idempotent", lambda: Command("date", idempotent=False), {}, True, "run date", "date", False),
    ("git absent", git, {GIT_KEY: None}, True, "clone git://srv/course.git", "git clone -q --no-checkout", False),
    ("git behind", git, {GIT_KEY: {"head": "b" * 40, "url": "git://srv/course.git", "dirty": 0}}, True, "update /home/u/course",
     "merge-base --is-ancestor HEAD", False),
    ("git right", git, {GIT_KEY: {"head": "a" * 40, "url": "git://srv/course.git", "dirty": 0}}, False, "already at main", None, False),
    ("git student changes", git, {GIT_KEY: {"head": "b" * 40, "url": "git://srv/course.git", "dirty": 2}}, False,
     "kept: local changes in /home/u/course (2 files)", None, False),
    ("git other repo", git, {GIT_KEY: {"head": "b" * 40, "url": "git://elsewhere/x.git", "dirty": 0}}, False, "left alone", None, True),
    ("git unreachable", lambda: Git("git://unreachable/x.git", "/home/u/x", "main", resolver=FakeResolver()),
     {"git@root:/home/u/x": None}, False, "cannot reach repository", None, True),
    ("git refuses the checkout", git, {GIT_KEY: {"head": "", "url": "", "dirty": 0, "error": "detected dubious ownership"}},
     False, "refused: git will not read /home/u/course as u (detected dubious ownership)", None, True),
    # Line never rewrites a file it could not read whole or as text: that would lose the rest of it.
    ("line file too big", lambda: Line("/etc/e", "X=1"), {path_fact("/etc/e", True).key: dict(stat(), too_big=True)},
     False, "over 256 KiB", None, True),
    ("line file not utf-8", lambda: Line("/etc/e", "X=1"), {path_fact("/etc/e", True).key: stat(content=b"A\xff\xfe\n")},
     False, "not UTF-8 text (byte 1); left intact", None, True),
    ("line on a fifo", lambda: Line("/etc/e", "X=1"), {path_fact("/etc/e", True).key: stat("fifo")},
     False, "is a fifo, not a file; left intact", None, True),
    # Inside a user's territory: facts are read as that user, what it writes is the user's,
    # and what the user does not own is refused rather than taken over by root.
    ("user file absent", lambda: File("/home/u/.x/c.py", "a=1\n", user="u"), {path_fact("/home/u/.x/c.py", True, user="u").key: None},
     True, "create /home/u/.x/c.py", "__put /home/u/.x/c.py 0644 u ''", False),
    ("user file owned by root", lambda: File("/home/u/.x/c.py", "a=1\n", user="u"),
     {path_fact("/home/u/.x/c.py", True, user="u").key: stat(content=b"a=2\n")}, False,
     "refused: /home/u/.x/c.py belongs to root, not u", None, True),
    ("user dir owned by root", lambda: Directory("/home/u/.x", mode="0755", user="u"),
     {path_fact("/home/u/.x", user="u").key: stat("directory", "0700")}, False, "refused: /home/u/.x belongs to root", None, True),
    ("user dir mode", lambda: Directory("/home/u/.x", mode="0755", user="u"),
     {path_fact("/home/u/.x", user="u").key: stat("directory", "0700", "u", "u")}, True, "fix owner/mode", "chmod 0755 /home/u/.x", False),
    ("user line file", lambda: Line("/home/u/.bashrc", "X=1", user="u"), {path_fact("/home/u/.bashrc", True, user="u").key: None},
     True, "add line", "__put /home/u/.bashrc 0644 u ''", False),
]


@pytest.mark.parametrize("case,factory,facts,changed,message,command,failed", CASES, ids=[c[0] for c in CASES])
def test_step_plan(case, factory, facts, changed, message, command, failed):
    step = factory()
    outcome = step.plan(StrictFacts(step, facts))
    assert outcome.changed is changed
    assert outcome.failed is failed
    assert message in outcome.message
    if command is None:
        assert outcome.commands == []
    else:
        assert any(command in c for c in outcome.commands), outcome.commands


def test_file_diff_is_unified_and_secret_files_hide_it():
    step = File("/etc/x.conf", "a=1\nb=2\n")
    step.facts(diff=True)
    outcome = step.plan({path_fact("/etc/x.conf", True).key: stat(content=b"a=1\nb=3\n")})
    assert "-b=3\n+b=2\n" in outcome.diff
    secret = File("/etc/s", "token=abc\n", secret=True)
    assert secret.facts(diff=True) == [path_fact("/etc/s")]  # its content is never even read back


@pytest.mark.parametrize("factory,message", [
    (lambda: Command("rm -rf /tmp/x"), "needs creates=, unless= or idempotent=False"),
    (lambda: File("etc/x", "a"), "expected an absolute path"),
    (lambda: Directory("/home/u/../../etc"), "without '..'"),
    (lambda: Pip("/opt/j", ["not a requirement!"]), "not a pip requirement"),
    (lambda: User("Bad User"), "not a valid user name"),
])
def test_steps_refuse_bad_definitions(factory, message):
    with pytest.raises(InputError, match=message):
        factory()


def run_fact(fact):
    out = subprocess.run(["bash", "-c", fact.command], capture_output=True, text=True, check=True).stdout
    return fact.parse(out)


def test_batched_path_facts_read_as_single_ones(tmp_path):
    """The probe's one stat + one sha256sum for many paths gives each fact what its own command gives."""
    from fleet.engine.remote import Probe

    (tmp_path / "file").write_text("x\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "with space|bar").write_text("odd name\n")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    names = ["file", "empty", "dir", "with space|bar", "link", "dangling", "absent"]
    facts = [path_fact(str(tmp_path / n)) for n in names]
    probe = Probe(facts, [])
    script = probe.script()
    assert script.count("stat -c") == 1 and script.count("sha256sum") == 1
    batched, _, _, errors = probe.parse(subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout)
    assert errors == {}
    assert batched == {f.key: run_fact(f) for f in facts}
    assert batched[facts[-1].key] is None and batched[facts[0].key]["sha256"] == hashlib.sha256(b"x\n").hexdigest()


def test_path_fact_reads_real_files(tmp_path):
    target = tmp_path / "f.txt"
    target.write_bytes(b"hello\n")
    target.chmod(0o640)
    info = run_fact(path_fact(str(target), content=True))
    assert info["kind"] == "regular file" and info["mode"] == "0640" and info["owner"] == "root"
    assert info["sha256"] == hashlib.sha256(b"hello\n").hexdigest() and info["content"] == b"hello\n"
    assert run_fact(path_fact(str(tmp_path / "missing"))) is None
    assert run_fact(path_fact(str(tmp_path)))["kind"] == "directory"
    weird = tmp_path / "it's a $(name)"
    weird.write_text("x")
    assert run_fact(path_fact(str(weird)))["kind"] == "regular file"  # quoted, never executed


def test_dpkg_fact_reads_real_package_database():
    installed = run_fact(dpkg_fact(("bash", "no-such-package-xyz")))
    assert "bash" in installed and "no-such-package-xyz" not in installed


def test_venv_fact_reads_real_venv(tmp_path):
    venv = tmp_path / "venv"
    assert run_fact(venv_fact(str(venv))) is None
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "Jupyter_Server-2.21.1.dist-info").mkdir()
    assert run_fact(venv_fact(str(venv))) == {"jupyter-server": "2.21.1"}


def test_unit_fact_parser():
    fact = unit_fact("jupyter")
    assert fact.parse("LoadState=loaded\nActiveState=active\nUnitFileState=enabled\n") == {
        "LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"}


def test_user_git_and_apt_age_fact_parsers(tmp_path):
    user = User("root").facts()[0]
    root = run_fact(user)
    assert root["home"] == "/root" and "root" in root["groups"] and root["shell"].startswith("/")
    assert User("no-such-user-xyz").plan({"user:no-such-user-xyz": run_fact(User("no-such-user-xyz").facts()[0])}).changed
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin", "git://srv/course.git"], check=True)
    (repo / "a.txt").write_text("a\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "x"], check=True, env=env)
    step = Git("git://srv/course.git", str(repo), "main", resolver=FakeResolver())
    info = run_fact(step.facts()[0])
    assert info["url"] == "git://srv/course.git" and len(info["head"]) == 40 and info["dirty"] == 0
    (repo / "a.txt").write_text("student edit\n")
    (repo / "new.ipynb").write_text("{}")  # untracked files are not "local changes": they survive a checkout
    assert run_fact(step.facts()[0])["dirty"] == 1
    assert run_fact(Git("git://srv/x.git", str(tmp_path / "none"), "main", resolver=FakeResolver()).facts()[0]) is None
    assert APT_AGE.parse("120\n") == 120 and APT_AGE.parse("") == 10**9


# --- step timing: the apply script reports how long each change took on the host -------------

def test_apply_times_each_change_with_bash_clock():
    from fleet.engine.remote import Apply, Change
    from fleet.engine.steps import Outcome

    quick = Command("true", idempotent=False)
    slow = Command("sleep 0.3", idempotent=False)
    changes = [Change(0, quick, Outcome(True, "quick", ["true"])), Change(1, slow, Outcome(True, "slow", ["sleep 0.3"]))]
    apply = Apply(changes, [], set(), [])
    script = apply.script().replace("mkdir -p /var/lib/jupyter-fleet/pending", "true")
    out = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=30).stdout
    parsed = apply.parse(out)
    assert parsed["steps"] == {0: 0, 1: 0} and parsed["done"], out
    seconds = parsed["steps_seconds"]
    assert seconds[0] >= 0 and seconds[1] >= 0.3, seconds  # sleep cannot finish early


@pytest.mark.parametrize("header, seconds", [
    ("rc 0 1764547200.250000 1764547201.750000", 1.5),
    ("rc 0 1764547200,250000 1764547200,500000", 0.25),   # a locale with a decimal comma
    ("rc 0", None),                                        # bash 4: no $EPOCHREALTIME
    ("rc 0  ", None),
])
def test_step_seconds_parsing(header, seconds):
    from fleet.engine.remote import Apply, Change
    from fleet.engine.steps import Outcome

    apply = Apply([Change(0, Command("true", idempotent=False), Outcome(True, "x", ["true"]))], [], set(), [])
    n = apply.nonce
    parsed = apply.parse(f"\n@@{n}@@ step 0\n\n@@{n}@@ {header}\n\n@@{n}@@ done\n")
    assert parsed["steps"] == {0: 0} and parsed["steps_seconds"] == {0: seconds}
