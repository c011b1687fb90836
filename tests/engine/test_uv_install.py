"""uv, the hosts' installer, put in place: from its locked wheel when the controller sends it (the
binary alone, no venv, no pip), with pip into a venv of its own otherwise (cases as data); and the
host script that takes the binary out of the wheel, run here on a wheel made for the test."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fleet.engine import hostscripts
from fleet.engine.pylock import LockedVenv
from fleet.engine.steps.packages import UV, UV_VENV, UvInstall, uv_version_fact, venv_fact

HASHES = ("a" * 64, "b" * 64)
LOCK = LockedVenv(UV_VENV, ("uv==0.13.9",), f"uv==0.13.9 \\\n    --hash=sha256:{HASHES[0]} \\\n    --hash=sha256:{HASHES[1]}\n")

CASES = [
    # (source, lock?, uv --version reports, venv fact, changed, message start, lines the command holds, wheels sent)
    ("controller", True, "0.13.9", None, False, f"uv 0.13.9 in place ({UV})", [], False),
    ("controller", True, None, None, True, "put in place uv 0.13.9 from its locked wheel",
     ["python3 - /var/lib/jupyter-fleet/wheels 0.13.9 /var/lib/jupyter-fleet/uv/bin/uv " + " ".join(HASHES),
      "os.replace(temporary, target)", '[ "$(/var/lib/jupyter-fleet/uv/bin/uv --version | cut -d\' \' -f1,2)" = \'uv 0.13.9\' ]'], True),
    ("controller", True, "0.12.0", {"uv": "0.12.0"}, True, "replace uv 0.12.0 with uv 0.13.9 from its locked wheel",
     ["zipfile"], True),
    ("index", True, None, None, True, "create venv, install 1 locked package (uv 0.13.9)",
     ["python3 -m venv /var/lib/jupyter-fleet/uv", "--require-hashes", f"--hash=sha256:{HASHES[0]}"], False),
    ("controller", False, None, None, True, "create venv, install uv==0.13.9",
     ["python3 -m venv /var/lib/jupyter-fleet/uv", "/var/lib/jupyter-fleet/uv/bin/pip install"], False),
    ("index", False, "0.13.9", {"uv": "0.13.9"}, False, f"uv 0.13.9 in place ({UV})", [], False),
]


@pytest.mark.parametrize("source,locked,reported,venv,changed,message,lines,sent", CASES,
                         ids=[f"{c[0]}-{'lock' if c[1] else 'nolock'}-{c[2]}" for c in CASES])
def test_uv_is_put_in_place_the_cheapest_way_the_course_allows(source, locked, reported, venv, changed, message,
                                                               lines, sent):
    step = UvInstall(UV_VENV, ["uv==0.13.9"], source=source)
    step.lock = LOCK if locked else None
    outcome = step.plan({uv_version_fact().key: reported, venv_fact(UV_VENV).key: venv})
    assert outcome.changed is changed and outcome.message.startswith(message), outcome.message
    script = "\n".join(outcome.commands)
    for line in lines:
        assert line in script
    assert outcome.wheels == ((LOCK, ("uv",)) if sent else None)


def test_the_lock_names_the_digests_it_allows_for_a_package():
    assert LOCK.hashes("UV") == list(HASHES)
    assert LOCK.hashes("six") == []


def test_the_version_fact_reads_only_a_uv_that_answers():
    parse = uv_version_fact().parse
    assert parse("uv 0.13.9 (x86_64-unknown-linux-gnu)\n") == "0.13.9"
    assert parse("") is None and parse("bash: uv: Permission denied") is None


def fake_wheel(folder: Path, version: str, program: bytes) -> tuple[Path, str]:
    path = folder / f"uv-{version}-py3-none-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"uv-{version}.data/scripts/uv", program)
        wheel.writestr(f"uv-{version}.dist-info/METADATA", "Name: uv\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def run_script(*args: str) -> subprocess.CompletedProcess:
    script = hostscripts.HERE / "uv_from_wheel.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)


def test_the_binary_comes_out_of_the_allowed_wheel_whole_and_executable(tmp_path):
    folder, dest = tmp_path / "wheels", tmp_path / "uv" / "bin" / "uv"
    folder.mkdir()
    _, digest = fake_wheel(folder, "0.13.9", b"#!/bin/sh\necho uv 0.13.9\n")
    done = run_script(str(folder), "0.13.9", str(dest), "f" * 64, digest)
    assert done.returncode == 0, done.stderr
    assert os.stat(dest).st_mode & 0o777 == 0o755
    assert subprocess.run([dest], capture_output=True, text=True).stdout == "uv 0.13.9\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["uv"]   # no temporary file left


@pytest.mark.parametrize("version,allowed", [("0.13.9", "wrong"), ("0.14.0", "right")], ids=["hash", "version"])
def test_a_wheel_the_lock_does_not_allow_is_refused_and_nothing_is_written(tmp_path, version, allowed):
    folder, dest = tmp_path / "wheels", tmp_path / "uv" / "bin" / "uv"
    folder.mkdir()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"the old uv")
    _, digest = fake_wheel(folder, "0.13.9", b"#!/bin/sh\necho planted\n")
    done = run_script(str(folder), version, str(dest), digest if allowed == "right" else "0" * 64)
    assert done.returncode == 3 and "has a hash the course lock allows" in done.stderr
    assert dest.read_bytes() == b"the old uv" and sorted(p.name for p in dest.parent.iterdir()) == ["uv"]
