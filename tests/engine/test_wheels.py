"""One download per class, on the controller: the wheel cache downloads a lock's wheels once, for the
lock's Python and platform (pip is the oracle of what matches), and a Pip step with
`package_source: controller` installs from the host's folder of sent wheels only. The transfer
itself (a tar stream after the script, on the same channel) is shown on real hosts in
tests/engine/test_pylock_hosts.py; here the stream is read back by tar."""
from __future__ import annotations

import io
import subprocess
import tarfile
import threading

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from fleet.engine import pylock, wheels
from fleet.engine.pylock import LockedVenv
from fleet.engine.steps import Pip
from fleet.engine.steps.packages import venv_fact
from fleet.engine.wheels import HOST_DIR, WheelCache, WheelsUnavailable, pip_target
from fleet.transport.base import send_tar



@pytest.fixture(scope="module")
def lock(tmp_path_factory) -> LockedVenv:
    """A small real lock, made by uv as `invoke lock` makes it: idna, and markupsafe, whose
    compiled wheels are platform-specific, so the platform must be right."""
    where = tmp_path_factory.mktemp("lock") / "c.lock.yml"
    return pylock.resolve({"/opt/x": ["idna==3.10", "markupsafe==3.0.3"]}, where)["/opt/x"]


@pytest.mark.parametrize("python,platform,abi,first,last,count", [
    ("3.11", "x86_64-manylinux_2_28", "cp311", "manylinux_2_28_x86_64", "manylinux1_x86_64", 24 + 3),
    ("3.10", "aarch64-manylinux_2_35", "cp310", "manylinux_2_35_aarch64", "manylinux1_aarch64", 31 + 3),
])
def test_pip_is_asked_for_the_locks_python_and_every_older_glibc(python, platform, abi, first, last, count):
    target = pip_target(python, platform)
    platforms = [target[i + 1] for i, arg in enumerate(target) if arg == "--platform"]
    assert target[:6] == ["--python-version", python, "--implementation", "cp", "--abi", abi]
    assert (platforms[0], platforms[-1], len(platforms)) == (first, last, count)
    assert "manylinux2014_" + platform.split("-")[0] in platforms


def test_a_wheel_built_for_an_older_glibc_is_found(tmp_path):
    """uv's own wheel is manylinux2014 only; pip, told the platform, must still find it."""
    done = subprocess.run(["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d",
                           str(tmp_path), *pip_target("3.11", "x86_64-manylinux_2_28"), "uv==0.13.9"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.glob("uv-*.whl")] == ["uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return WheelCache(tmp_path_factory.mktemp("wheels"))


def test_the_lock_is_downloaded_once_for_every_host(cache, lock, monkeypatch):
    """Eight hosts ask at once: pip runs once, then every host reads the same files."""
    results, downloads = [], []
    real_run = wheels.subprocess.run

    def counting(argv, **kwargs):
        downloads.append(argv)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(wheels.subprocess, "run", counting)
    threads = [threading.Thread(target=lambda: results.append(cache.files(lock, ["idna", "markupsafe"])))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    assert len(downloads) == 1
    folder = cache.folder(lock)
    assert len(list(folder.glob("*.whl"))) == 2
    assert all(r == results[0] for r in results) and len(results) == 8
    names = {canonicalize_name(parse_wheel_filename(name)[0]): name for _, name in results[0]}
    assert set(names) == {"idna", "markupsafe"}
    assert "cp311" in names["markupsafe"] and "x86_64" in names["markupsafe"]
    # pip agrees the files are the locked ones: it installs them offline, hash-checked.
    reqs = folder / "reqs.txt"
    reqs.write_text(lock.requirements)
    check = subprocess.run(["python3", "-m", "pip", "download", "--no-index", "--find-links", str(folder), "--no-deps",
                            "--require-hashes", "--only-binary=:all:", *pip_target("3.11", "x86_64-manylinux_2_28"),
                            "-d", str(folder / "again"), "-r", str(reqs)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_only_the_asked_packages_are_returned(cache, lock):
    assert [name.split("-")[0] for _, name in cache.files(lock, ["idna"])] == ["idna"]


def test_a_hash_that_does_not_match_is_refused(tmp_path):
    bad = LockedVenv("/opt/x", ("idna",), "idna==3.10 \\\n    --hash=sha256:" + "0" * 64 + "\n", "3.11",
                     "x86_64-manylinux_2_28")
    with pytest.raises(WheelsUnavailable, match="package_source: index"):
        WheelCache(tmp_path).files(bad, ["idna"])


def test_the_stream_carries_the_files_whole(tmp_path):
    one, two = tmp_path / "a.whl", tmp_path / "b.whl"
    one.write_bytes(b"x" * 100_000)
    two.write_bytes(b"")
    sink = io.BytesIO()
    send_tar(sink.write, [(one, "a.whl"), (two, "b.whl")])
    sink.seek(0)
    archive = tarfile.open(fileobj=sink)
    assert [(m.name, m.size, m.uid, m.mode) for m in archive.getmembers()] == [
        ("a.whl", 100_000, 0, 0o644), ("b.whl", 0, 0, 0o644)]
    assert archive.extractfile("a.whl").read() == one.read_bytes()


def test_bash_leaves_the_stream_to_the_last_line(tmp_path):
    """What receive-wheels.sh relies on: bash reads a script from a pipe byte by byte, so the
    tar stream after it reaches tar whole, and nothing of it is run as a command."""
    (tmp_path / "w.whl").write_bytes(bytes(range(256)) * 400)
    script = f"set -u\ncd {tmp_path}\nmkdir out\nget() {{ tar -x -f - -C out; }}\nget; exit $?\n"
    stream = io.BytesIO()
    stream.write(script.encode())
    send_tar(stream.write, [(tmp_path / "w.whl", "w.whl")])
    done = subprocess.run(["bash", "-s"], input=stream.getvalue(), capture_output=True)
    assert done.returncode == 0 and done.stderr == b""
    assert (tmp_path / "out" / "w.whl").read_bytes() == (tmp_path / "w.whl").read_bytes()


@pytest.mark.parametrize("source,sent", [("controller", True), ("index", False)])
def test_a_locked_pip_step_installs_sent_wheels_only_from_the_host_folder(lock, source, sent):
    step = Pip("/opt/x", ["idna==3.10", "markupsafe==3.0.3"], installer="uv", lock=lock, source=source)
    outcome = step.plan({venv_fact("/opt/x").key: {"idna": "3.9"}})
    install = next(c for c in outcome.commands if "--require-hashes" in c)
    assert (f"--no-index --find-links {HOST_DIR}" in install) is sent
    assert outcome.wheels == ((lock, ("idna", "markupsafe")) if sent else None)
    nothing = step.plan({venv_fact("/opt/x").key: {"idna": "3.10", "markupsafe": "3.0.3"}})
    assert not nothing.changed and nothing.wheels is None


def test_a_cache_holding_every_pin_asks_no_index(cache, lock, monkeypatch):
    """A later class (a new command) finds every pinned wheel in the cache: pip is not run, so a
    controller offline since then still serves the class."""
    cache.files(lock, ["idna"])            # the lock is in the cache
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: pytest.fail("asked the index again"))
    again = WheelCache(cache.root).files(lock, ["idna", "markupsafe"])
    assert [name.split("-")[0] for _, name in again] == ["idna", "markupsafe"]
