"""The territory rule, run for real on this machine: root refuses to write where another user
can move things, and a step in a user's territory runs as that user (here `nobody`).

The adversarial version, with a student attacking a real host during runs, is
tests/engine/test_untrusted_user_hosts.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fleet.engine.remote import Apply, Change, Probe
from fleet.engine.steps import Absent, Command, Directory, File, Step, path_fact
from tests.skips import requires

NOBODY = 65534
needs_root = requires(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser")


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder every user can enter (pytest's own tmp folders are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fleet-territory-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def apply(step: Step, facts: dict | None = None) -> tuple[int, str]:
    """Plan `step` on facts read for real, then run its apply script here with bash."""
    probe = Probe(step.facts(), [])
    out = subprocess.run(["bash", "-s"], input=probe.script(), capture_output=True, text=True, timeout=30).stdout
    outcome = step.plan(facts or probe.parse(out)[0])
    assert outcome.changed and not outcome.failed, outcome.message
    run = Apply([Change(0, step, outcome)], [], set(), [])
    script = run.script().replace("mkdir -p /var/lib/jupyter-fleet/pending", "true")
    out = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=30).stdout
    parsed = run.parse(out)
    assert parsed["done"] or parsed["aborted"], out
    return parsed["steps"][0], parsed["steps_output"][0]


def nobody_dir(place: Path, name: str = "home") -> Path:
    path = place / name
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


# (id, what to set up under `place` and the step to run, refused?) -- root's writes
ROOT_CASES: list[tuple[str, Callable[[Path], Step], bool]] = [
    ("root folder", lambda p: File(str(p / "ok.conf"), "x\n"), False),
    ("new folders under a root folder", lambda p: Directory(str(p / "a" / "b")), False),
    ("inside another user's folder", lambda p: File(str(nobody_dir(p) / "f"), "x\n"), True),
    ("deep inside another user's folder", lambda p: Directory(str(nobody_dir(p) / "x" / "y")), True),
    ("through a root link into a user's folder",
     lambda p: (p.joinpath("link").symlink_to(nobody_dir(p)), File(str(p / "link" / "f"), "x\n"))[1], True),
    ("removal inside a user's folder", lambda p: ((nobody_dir(p) / "gone").mkdir(), Absent(str(p / "home" / "gone")))[1], True),
    ("a command creating a file in a user's folder",
     lambda p: Command(f"touch {p}/home/made", creates=str(nobody_dir(p) / "made")), True),
    ("world-writable folder", lambda p: ((p / "open").mkdir(), (p / "open").chmod(0o777), File(str(p / "open" / "f"), "x\n"))[2],
     True),
    ("directly in a sticky world-writable folder (like /tmp/f)",
     lambda p: ((p / "tmp").mkdir(), (p / "tmp").chmod(0o1777), File(str(p / "tmp" / "f"), "x\n"))[2], True),
    ("a folder made by the guard in a sticky folder (like /tmp/new/sub/f)",
     lambda p: ((p / "tmp").mkdir(), (p / "tmp").chmod(0o1777), File(str(p / "tmp" / "new" / "sub" / "f"), "x\n"))[2],
     False),
    ("a folder another user made in a sticky folder",
     lambda p: ((p / "tmp").mkdir(), (p / "tmp").chmod(0o1777), nobody_dir(p / "tmp", "new"),
                File(str(p / "tmp" / "new" / "sub" / "f"), "x\n"))[3], True),
    ("through another user's link in a root folder",
     lambda p: (os.symlink(str(p), str(p / "ulink")), os.lchown(str(p / "ulink"), NOBODY, NOBODY),
                File(str(p / "ulink" / "f"), "x\n"))[2], True),
    ("a link in another user's folder pointing back to a root folder",
     lambda p: (os.symlink(str(p), str(nobody_dir(p) / "back")), File(str(p / "home" / "back" / "f"), "x\n"))[1],
     True),
]


@needs_root
@pytest.mark.parametrize("case,build,refused", ROOT_CASES, ids=[c[0] for c in ROOT_CASES])
def test_root_writes_only_where_no_other_user_can_move_things(place, case, build, refused):
    step = build(place)
    before = sorted(str(p) for p in place.rglob("*"))
    rc, out = apply(step)
    if refused:
        assert rc != 0 and f"refused: {step.paths()[0]}: " in out, out   # the refusal names the path
        assert sorted(str(p) for p in place.rglob("*")) == before  # nothing written
    else:
        assert rc == 0, out
        assert Path(step.paths()[0]).exists()


@needs_root
def test_a_user_step_runs_as_that_user_and_cannot_reach_roots_files(place):
    home = nobody_dir(place)
    victim = place / "victim"          # root's file, the target a planted link points at
    victim.write_text("root's\n")
    (home / "config.py").symlink_to(victim)
    step = File(str(home / "config.py"), "c.x = 1\n", user="nobody")
    # As if the link appeared between the probe (which would have seen it) and the apply.
    rc, out = apply(step, {path_fact(str(home / "config.py"), user="nobody").key: None})
    assert rc == 0, out
    written = home / "config.py"
    assert not written.is_symlink() and written.read_text() == "c.x = 1\n"   # the link was replaced, not followed
    assert (written.stat().st_uid, written.stat().st_gid) == (NOBODY, NOBODY)
    assert victim.read_text() == "root's\n" and victim.stat().st_uid == 0


@needs_root
def test_a_user_step_has_only_that_users_rights(place):
    step = File(str(place / "not-yours"), "x\n", user="nobody")   # place is root's: nobody cannot write there
    rc, out = apply(step)
    assert rc != 0 and "Permission denied" in out, out
    assert not (place / "not-yours").exists()


@needs_root
def test_user_facts_are_read_as_the_user(place):
    home = nobody_dir(place)
    secret = place / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (home / "peek").symlink_to(secret)
    facts = [path_fact(str(home / "peek"), user="nobody"), path_fact(str(home / "peek"), True, user="nobody")]
    probe = Probe(facts, [])
    assert "__read_as nobody" in probe.script()
    found, _, _, errors = probe.parse(subprocess.run(["bash", "-s"], input=probe.script(), capture_output=True,
                                                     text=True, timeout=30).stdout)
    assert errors == {}
    for fact in facts:   # a link is reported as a link; nothing of the file behind it is read
        assert found[fact.key]["kind"] == "symbolic link" and found[fact.key]["sha256"] is None
        assert found[fact.key]["content"] is None


@needs_root
def test_a_user_who_does_not_exist_yet_owns_nothing(place):
    """A first run creates the course user after the probe: their paths and checkouts read as absent."""
    from fleet.engine.git import Git
    from tests.engine.test_steps import FakeResolver

    facts = [path_fact(str(place), user="no-such-student"), path_fact(str(place), True, user="no-such-student"),
             *Git("git://srv/c.git", str(place), "main", user="no-such-student", resolver=FakeResolver()).facts()]
    probe = Probe(facts, [])
    found, _, _, errors = probe.parse(subprocess.run(["bash", "-s"], input=probe.script(), capture_output=True,
                                                     text=True, timeout=30).stdout)
    assert errors == {} and found == {f.key: None for f in facts}
