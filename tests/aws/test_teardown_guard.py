"""`terminate` refuses to destroy uncollected student work, against a moto server (the fixtures of
tests/aws/test_cloud.py). moto's instances cannot be logged into, so here the host's part, the
fingerprint of its work folder (fleet.course.coursework.guard.fingerprint), is replaced at that function's
boundary; tests/coursework/test_coursework_hosts.py runs the same terminate with the fingerprint
read from a real host."""
from __future__ import annotations

import pytest
from invoke import Exit

from fleet.aws import cloud
from fleet import commands
from fleet.course.coursework import collect as collecting
from fleet.course.coursework import guard, store
from tests.aws.test_cloud import ami, aws, moto_url, up  # noqa: F401 (fixtures)

COURSE = "chem"


@pytest.fixture
def course(aws, ami, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLEET_SSH_PERSIST", "0")
    launched = up(COURSE, 2, tmp_path, ami, instance_type="t3.micro")
    work = {i.name: {"fingerprint": f"fp-{i.name}", "files": 3, "bytes": 4_500_000} for i in launched.instances}
    monkeypatch.setattr(guard, "fingerprint", lambda target, options: dict(work[target.name]))
    return work


def terminate(**kw) -> None:
    commands.run("terminate", course=COURSE, yes=True, **kw)


def alive() -> int:
    return len(cloud.course_instances(COURSE))


def test_refused_while_work_is_uncollected_then_allowed_after_collect(course, capsys):
    with pytest.raises(Exit) as refused:
        terminate()
    out = capsys.readouterr().out
    assert refused.value.code == 1 and alive() == 2
    assert "refused: terminate would destroy student work that was not collected (2 students, 9.0 MB in 6 files)" in out
    assert "chem-1 on chem-1 (3 files, 4.5 MB): never collected" in out

    # what `invoke collect` records, for one machine only: the other still holds uncollected work
    store.remember(COURSE, "chem-1", {"student": "chem-1", "time": "T", "fingerprint": "fp-chem-1"})
    with pytest.raises(Exit):
        terminate()
    out = capsys.readouterr().out
    assert "chem-2 on chem-2" in out and "chem-1 on chem-1" not in out and alive() == 2

    course["chem-1"]["fingerprint"] = "fp-chem-1-edited"     # a student edits after the collect
    store.remember(COURSE, "chem-2", {"student": "chem-2", "time": "T", "fingerprint": "fp-chem-2"})
    with pytest.raises(Exit):
        terminate()
    assert "chem-1 on chem-1 (3 files, 4.5 MB): changed since its last collect (T)" in capsys.readouterr().out

    course["chem-1"]["fingerprint"] = "fp-chem-1"
    terminate()
    assert alive() == 0


def test_collect_flag_collects_first(course, capsys, monkeypatch):
    collected = []

    def fake_collect_one(target, options, dest, course_name, now):
        # the recording half of a collect (the host half needs a machine moto cannot give)
        collected.append(target.name)
        store.remember(course_name, target.name, {"student": target.student, "time": "T",
                                                  "fingerprint": course[target.name]["fingerprint"]})
        return collecting.Collected(target.name, target.student, files=3, bytes=4_500_000)

    monkeypatch.setattr(collecting, "collect_one", fake_collect_one)
    terminate(collect=True)
    assert sorted(collected) == ["chem-1", "chem-2"] and alive() == 0


def test_discard_student_work_proceeds_with_a_warning(course, capsys):
    terminate(discard_student_work=True)
    out = capsys.readouterr().out
    assert "warning: --discard-student-work: terminate destroys the work of 2 students" in out
    assert alive() == 0


def test_a_stopped_machine_cannot_be_read_and_is_refused(course, aws, capsys):  # noqa: F811
    for name in ("chem-1", "chem-2"):
        store.remember(COURSE, name, {"student": name, "time": "T", "fingerprint": f"fp-{name}"})
    stopped = cloud.course_instances(COURSE)[0]
    aws.stop_instances(InstanceIds=[stopped.id])
    with pytest.raises(Exit):
        terminate()
    out = capsys.readouterr().out
    state = cloud.course_instances(COURSE)[0].state          # moto: stopping or stopped
    assert f"{stopped.name} on {stopped.name}: {state}, not reachable: its work cannot be read" in out
    assert alive() == 2
