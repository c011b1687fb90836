"""Student work, on the controller alone: the host-side reader run here on a planted folder, the
controller unpacking a hostile stream, incremental collects, restore's rules, the teardown
verdict. The same code runs on real hosts in test_coursework_hosts.py."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from fleet.course.coursework import guard, hostside, store, wire
from fleet.course.coursework.targets import Target
from fleet.course.coursework.unpack import name_problem, unpack

NOTEBOOK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


def tree(root: Path) -> dict[str, tuple]:
    """Everything under root (links not followed): path -> (kind, size)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_mode >> 12, info.st_size if path.is_file() else 0)
    return found


def run_host(home: Path, params: dict, stdin: bytes = b"") -> tuple[dict, bytes]:
    """hostside.main as a host runs it (parameters on stdin, framed output), here in-process."""
    mark = "FLEET-WORK-test"
    hostside.HOME = str(home)
    out = io.BytesIO()
    try:
        if params["mode"] == "collect":
            body = hostside.collect(params, out)
        elif params["mode"] == "fingerprint":
            files, skipped = hostside.walk(os.open(home, os.O_RDONLY), params["roots"])
            body = {"fingerprint": hostside.fingerprint(files), "files": len(files)}
        else:
            body = hostside.restore(params, io.BytesIO(stdin))
    finally:
        hostside.HOME = None
    text = f"{mark}-BEGIN\n" + out.getvalue().decode() + f"\n{mark}-TRAILER " + json.dumps(body) + "\n"
    return wire.parse(text, mark)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A student's home with work, and everything a student might plant in it."""
    home = tmp_path / "home" / "alice"
    nb = home / "notebooks"
    (nb / "course" / "week1").mkdir(parents=True)
    (nb / "mine.ipynb").write_bytes(NOTEBOOK)
    (nb / "course" / "week1" / "hello.ipynb").write_bytes(NOTEBOOK + b"\n# edited\n")
    (nb / "shadow").symlink_to("/etc/shadow")
    (nb / "bob").symlink_to(tmp_path / "home" / "bob")
    os.mkfifo(nb / "pipe")
    (nb / "two\nlines.txt").write_text("newline in the name\n")
    (nb / os.fsdecode(b"caf\xe9.txt")).write_text("not UTF-8\n")
    with open(nb / "huge.bin", "wb") as handle:   # sparse: over the limit, costs no disk
        handle.truncate(50_000_000)
    (tmp_path / "home" / "bob").mkdir()
    (tmp_path / "home" / "bob" / "secret.ipynb").write_text("bob's")
    (home / "projects").mkdir()
    (home / "projects" / "p.py").write_text("print(1)\n")
    (home / "notes.txt").write_text("a root that is one file\n")
    (home / "linked").symlink_to("/etc")   # a root that is itself a link
    return home


def collect_params(known: dict | None = None, limit: int = 10_000_000) -> dict:
    return {"mode": "collect", "roots": [], "max_bytes": limit, "known": known or {}}


def test_the_reader_sends_the_work_and_reports_what_it_skips(planted: Path, tmp_path: Path):
    roots = [str(planted / "notebooks"), "projects", "notes.txt", "linked", "never-made"]
    result, payload = run_host(planted, collect_params() | {"roots": roots})
    sent = {f["path"] for f in result["files"] if f["sent"]}
    assert sent == {"notebooks/mine.ipynb", "notebooks/course/week1/hello.ipynb", "notebooks/two\nlines.txt",
                    os.fsdecode(b"notebooks/caf\xe9.txt"), "projects/p.py", "notes.txt"}
    skipped = {s["path"]: s["why"] for s in result["skipped"]}
    assert skipped["linked"] == "link to /etc: not followed"
    assert "never-made" not in skipped   # a folder a student never made is no loss
    assert skipped["notebooks/shadow"] == "link to /etc/shadow: not followed"
    assert skipped["notebooks/bob"].endswith("not followed")
    assert skipped["notebooks/pipe"] == "FIFO: not collected"
    assert "over collect_max_mb" in skipped["notebooks/huge.bin"]

    before = tree(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack(payload, result["files"], dest, 10_000_000) == []
    assert (dest / "notebooks/course/week1/hello.ipynb").read_bytes() == NOTEBOOK + b"\n# edited\n"
    assert (dest / os.fsdecode(b"notebooks/caf\xe9.txt")).read_text() == "not UTF-8\n"
    assert (dest / "notebooks/two\nlines.txt").exists()
    mtime = (planted / "notebooks/mine.ipynb").stat().st_mtime_ns
    assert (dest / "notebooks/mine.ipynb").stat().st_mtime_ns == mtime
    assert not any("secret" in p or "shadow" in p for p in tree(dest))
    after = tree(tmp_path)
    assert {p for p in after if p not in before} == {"dest"} | {f"dest/{p}" for p in tree(dest)}


def test_work_over_the_limit_is_refused_whole(planted: Path):
    result, payload = run_host(planted, collect_params(limit=150) | {"roots": ["notebooks"]})
    assert "over collect_max_mb" in result["error"] and payload == b""


def test_a_second_collect_sends_only_what_changed(planted: Path, tmp_path: Path):
    params = collect_params() | {"roots": ["notebooks"]}
    first, payload = run_host(planted, params)
    old = tmp_path / "c1"
    old.mkdir()
    assert unpack(payload, first["files"], old, 10_000_000) == []
    known = {f["path"]: f["sha256"] for f in first["files"]}
    (planted / "notebooks" / "mine.ipynb").write_bytes(NOTEBOOK + b" ")
    second, payload = run_host(planted, params | {"known": known})
    assert [f["path"] for f in second["files"] if f["sent"]] == ["notebooks/mine.ipynb"]
    assert second["fingerprint"] != first["fingerprint"]
    new = tmp_path / "c2"
    new.mkdir()
    assert unpack(payload, second["files"], new, 10_000_000, previous=old) == []
    assert (new / "notebooks/mine.ipynb").read_bytes() == NOTEBOOK + b" "
    same = "notebooks/course/week1/hello.ipynb"
    assert (new / same).stat().st_ino == (old / same).stat().st_ino   # hard-linked, not copied
    assert (old / "notebooks/mine.ipynb").read_bytes() == NOTEBOOK      # the earlier collect is kept


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kw.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


HOSTILE = [
    ("/etc/cron.d/evil", {}, "an absolute path"),
    ("../outside.txt", {}, "'..'"),
    ("a/../../outside2.txt", {}, "'..'"),
    ("link-out", {"type": tarfile.SYMTYPE, "linkname": "/etc"}, "symbolic link"),
    ("hard-out", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, "hard link"),
    ("fifo", {"type": tarfile.FIFOTYPE}, "FIFO"),
    ("dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device"),
    ("unannounced.txt", {}, "not announced"),
]


def test_a_hostile_stream_writes_nothing_outside_the_destination(tmp_path: Path):
    scratch = tmp_path / "scratch"
    dest = scratch / "collected" / "alice" / "incoming"
    dest.mkdir(parents=True)
    buffer = io.BytesIO()
    good = b"a good notebook"
    manifest = [{"path": "ok.ipynb", "size": len(good), "sha256": __import__("hashlib").sha256(good).hexdigest(),
                 "mtime_ns": 0, "sent": True},
                {"path": "huge.bin", "size": 2_000_000, "sha256": "0" * 64, "mtime_ns": 0, "sent": True}]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "ok.ipynb", good)
        for name, kw, _ in HOSTILE:
            _member(tar, name, **kw)
        _member(tar, "huge.bin", b"\0" * 2_000_000)
    before = tree(scratch)
    problems = unpack(buffer.getvalue(), manifest, dest, max_bytes=1_000_000)
    after = tree(scratch)
    for name, _, why in HOSTILE:
        assert any(p.startswith(name) and why in p for p in problems), (name, problems)
    assert any(p.startswith("huge.bin") and "limit" in p for p in problems)
    assert set(after) - set(before) <= {"collected/alice/incoming/ok.ipynb"}
    assert not (tmp_path / "outside.txt").exists() and not (scratch / "outside.txt").exists()


def test_a_hostile_manifest_is_refused_before_anything_is_written(tmp_path: Path):
    dest = tmp_path / "d"
    dest.mkdir()
    for bad in ("/abs", "../up", "a//b", "", "x\0y"):
        assert unpack(b"", [{"path": bad, "size": 0, "sha256": "", "sent": False}], dest, 10) != []
    assert list(dest.iterdir()) == []
    assert name_problem("fine/two\nlines.txt") is None


def test_restore_keeps_newer_files_unless_overwrite(tmp_path: Path):
    home = tmp_path / "home"
    (home / "notebooks").mkdir(parents=True)
    newer = home / "notebooks" / "mine.ipynb"
    newer.write_text("edited on the new host")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "notebooks/mine.ipynb", b"collected", mtime=1_000_000)
        _member(tar, "notebooks/sub/new.ipynb", b"new", mtime=1_000_000)
        _member(tar, "../escape", b"no")
    import base64

    stream = base64.b64encode(buffer.getvalue())
    result, _ = run_host(home, {"mode": "restore"}, stream)
    assert result["restored"] == ["notebooks/sub/new.ipynb"]
    assert [k["path"] for k in result["kept"]] == ["notebooks/mine.ipynb", "../escape"]
    assert newer.read_text() == "edited on the new host"
    assert (home / "notebooks/sub/new.ipynb").stat().st_mtime == 1_000_000
    assert not (tmp_path / "escape").exists()
    result, _ = run_host(home, {"mode": "restore", "overwrite": True}, stream)
    assert newer.read_text() == "collected" and "notebooks/sub/new.ipynb" in result["unchanged"]


@pytest.mark.parametrize("recorded, found, refused", [
    (None, {"fingerprint": "f1", "files": 2, "bytes": 10}, "never collected"),
    ({"fingerprint": "f0", "student": "alice", "time": "T"}, {"fingerprint": "f1", "files": 2, "bytes": 10},
     "changed since its last collect (T)"),
    ({"fingerprint": "f1", "student": "alice", "time": "T"}, {"fingerprint": "f1", "files": 2, "bytes": 10}, None),
    (None, {"fingerprint": "f1", "files": 0, "bytes": 0}, None),                 # nothing to lose
    (None, {"nouser": True}, None),
    (None, "h1: cannot connect", "its work cannot be read (h1: cannot connect)"),
])
def test_the_teardown_verdict(monkeypatch, tmp_path, recorded, found, refused):
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    if recorded:
        store.remember("c", "h1", recorded)
    monkeypatch.setattr(guard, "fingerprint", lambda target, options: found)
    target = Target("h1", None, "alice", "student", ["notebooks"], 100)
    losses = guard.losses("c", [target], options=None)
    assert [loss.why for loss in losses] == ([refused] if refused else [])
    out = Console(file=io.StringIO(), width=200)
    assert guard.decide(losses, discard=False, what="terminate", out=out) is (refused is None)
    if refused:
        assert "alice on h1" in out.file.getvalue()
        assert guard.decide(losses, discard=True, what="terminate", out=out) is True
        assert "warning: --discard-student-work" in out.file.getvalue()


def test_demo_down_refuses_while_work_is_uncollected(monkeypatch, tmp_path):
    """demo-down drops the demo hosts' disks: the same guard as terminate. The hosts' part (the
    fingerprint) is replaced at its function; the shutdown itself is recorded, not done."""
    from invoke import Exit

    from fleet import commands
    from fleet.testhosts import demo
    from fleet.transport import keeper

    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    local = tmp_path / "local.yml"
    local.write_text("name: demo\nvars: {roles: [jupyter], course_user: student}\n"
                     "hosts:\n  h1: {address: 10.211.1.2, vars: {student: ana}}\n")
    monkeypatch.setattr(demo, "LOCAL_INVENTORY", local)
    stopped = []
    monkeypatch.setattr(demo, "stop_demo", lambda: stopped.append("hosts"))
    monkeypatch.setattr(keeper, "stop", lambda state: None)
    monkeypatch.setattr(guard, "fingerprint", lambda target, options: {"fingerprint": "f", "files": 1, "bytes": 5})
    with pytest.raises(Exit) as refused:
        commands.run("demo-down")
    assert refused.value.code == 1 and stopped == []
    commands.run("demo-down", discard_student_work=True)
    assert stopped == ["hosts"]
    store.remember("demo", "h1", {"student": "ana", "time": "T", "fingerprint": "f"})
    commands.run("demo-down")
    assert stopped == ["hosts", "hosts"]


@pytest.mark.parametrize("call, expected", [
    (lambda cli, inv: cli.collect("nohost", inv, None), "nohost"),
    (lambda cli, inv: cli.restore("zed", None, None, inv, None), "no host of"),
    (lambda cli, inv: cli.restore("../etc", None, None, inv, None), "expected a student name"),
    (lambda cli, inv: cli.restore("ana", "h9", None, inv, None), "unknown host 'h9'"),
    (lambda cli, inv: cli.restore("ana", None, None, inv, "/nonexistent-collects"), "no collected work"),
])
def test_bad_input_touches_nothing(monkeypatch, tmp_path, capsys, call, expected):
    from invoke import Exit

    from fleet import cli

    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    inventory = tmp_path / "course.yml"
    inventory.write_text("name: c\nvars: {roles: [jupyter], course_user: student}\n"
                         "hosts:\n  h1: {address: 192.0.2.1, vars: {student: ana}}\n")
    with pytest.raises(Exit) as failed:
        call(cli, str(inventory))
    assert failed.value.code == 1 and expected in capsys.readouterr().out


@pytest.mark.parametrize("vars_, key", [
    ("{student: ana, collect_paths: [../../etc]}", "collect_paths"),
    ("{student: ana, collect_max_mb: 0}", "collect_max_mb"),
    ("{student: 'a b'}", "student"),
])
def test_bad_knobs_are_named(tmp_path, monkeypatch, vars_, key):
    from fleet import app
    from fleet.course.coursework import targets
    from fleet.errors import InputError

    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    inventory = tmp_path / "course.yml"
    inventory.write_text(f"vars: {{course_user: student}}\nhosts:\n  h1: {{address: 192.0.2.1, vars: {vars_}}}\n")
    with pytest.raises(InputError) as bad:
        targets.resolve(app.Session.open(str(inventory)), ["h1"])
    assert key in str(bad.value)


@pytest.mark.parametrize("output, expected", [
    ("sudo: a password is required\n", "no answer from the host's reader"),
    ("M-BEGIN\nnot base64!\n\nM-TRAILER {}\n", "not base64"),
    ("M-BEGIN\n\nM-TRAILER [1]\n", "not a JSON object"),
    ("M-BEGIN\n\nM-TRAILER {oops\n", "not JSON"),
])
def test_a_garbled_answer_is_an_error_not_a_guess(output, expected):
    with pytest.raises(wire.HostSideError, match=expected):
        wire.parse(output, "M")


def test_the_script_keeps_parameters_off_the_command_line():
    text, mark = wire.script("student", {"mode": "collect", "known": {"a": "secret-ish"}})
    command_line = text.split("<<'", 1)[0]
    assert "runuser -u student -- python3 -I -c" in command_line and "secret-ish" not in command_line
    assert wire.parse(f"{mark}-NOUSER\n", mark) == ({"nouser": True}, b"")
