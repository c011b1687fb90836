"""The course lock: resolved for real by uv against the package index, refused when stale, and
the locked Pip step's plan for each state a venv can be in (cases as data)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.engine import pylock
from fleet.engine.compile import attach_lock
from fleet.engine.steps import Pip
from fleet.engine.steps.packages import UvInstall, venv_fact
from fleet.errors import InputError
from tests.fixtures import fleet

LOCK = pylock.LockedVenv("/opt/v", ("requests==2.32.3",), (
    "certifi==2024.8.30 \\\n    --hash=sha256:aaa\n"
    "idna==3.10 \\\n    --hash=sha256:bbb \\\n    --hash=sha256:ccc\n"
    "requests==2.32.3 \\\n    --hash=sha256:ddd\n"))

CASES = [
    # (what the venv holds (None: no venv), covered, changed, message, lines the commands hold)
    ({"certifi": "2024.8.30", "idna": "3.10", "requests": "2.32.3", "pip": "24.0", "setuptools": "70.0"}, False,
     False, f"/opt/v matches the course lock {LOCK.fingerprint} (3 packages)", []),
    (None, False, True, "create venv, install 3 locked packages (certifi 2024.8.30, idna 3.10, requests 2.32.3)",
     ["python3 -m venv /opt/v", "--no-deps --require-hashes", "--hash=sha256:ddd"]),
    ({"certifi": "2024.8.30", "idna": "3.7", "requests": "2.32.3"}, False, True,
     "install 1 locked package (idna 3.10)", ["idna==3.10 \\", "--hash=sha256:ccc"]),
    ({"certifi": "2024.8.30", "idna": "3.10", "requests": "2.32.3", "six": "1.16.0"}, False, True,
     "remove 1 not in the lock (six)", ["/opt/v/bin/pip uninstall -y -q six"]),
    ({}, True, False, "requests==2.32.3 come with the course lock of /opt/v", []),
]


@pytest.mark.parametrize("installed,covered,changed,message,lines", CASES, ids=[c[3][:40] for c in CASES])
def test_a_locked_pip_step_makes_the_venv_exactly_the_lock(installed, covered, changed, message, lines):
    step = Pip("/opt/v", ["requests==2.32.3"])
    step.lock, step.covered = LOCK, covered
    outcome = step.plan({venv_fact("/opt/v").key: installed})
    assert (outcome.changed, outcome.message) == (changed, message + (f" (lock {LOCK.fingerprint})" if changed else ""))
    script = "\n".join(outcome.commands)
    for line in lines:
        assert line in script
    if "idna 3.10" in message and "certifi" not in message:
        assert "certifi==" not in script and "requests==" not in script   # only what changed is installed


def test_the_lines_of_some_packages_keep_their_hashes():
    assert LOCK.blocks(["idna"]) == "idna==3.10 \\\n    --hash=sha256:bbb \\\n    --hash=sha256:ccc\n"
    assert LOCK.pins() == {"certifi": "2024.8.30", "idna": "3.10", "requests": "2.32.3"}


def course(tmp_path: Path, extra: list[str]) -> Path:
    path = tmp_path / "course.yml"
    path.write_text(yaml.safe_dump({"name": "course", "vars": {"roles": ["jupyter"], "jupyter_extra_packages": extra,
                                                               "jupyter_fast_start_packages": []},
                                    "hosts": {"h1": {"address": "10.0.0.1", "user": "ubuntu"}}}))
    return path


def test_lock_resolves_with_hashes_and_a_stale_lock_is_refused(tmp_path):
    inventory = course(tmp_path, ["six==1.16.0"])
    state = tmp_path / "state"
    made = fleet("lock", state=state, inventory=inventory)
    assert made.rc == 0, made.output
    lock = pylock.load(tmp_path / "course.lock.yml")
    jupyter = lock["/opt/jupyter"]
    assert "six==1.16.0" in jupyter.wants and jupyter.pins()["six"] == "1.16.0"
    assert "notebook" in jupyter.pins() and "jupyter-server" in jupyter.pins()   # resolved, dependencies too
    # Every pin carries hashes, and pip itself accepts the lock as a hash-checked requirements file.
    assert all("--hash=sha256:" in jupyter.blocks([name]) for name in jupyter.pins())
    req = tmp_path / "req.txt"
    req.write_text(jupyter.blocks(["six"]))
    dry = subprocess.run(["python3", "-m", "pip", "install", "--dry-run", "--no-deps", "--require-hashes",
                          "--ignore-installed", "-q", "-r", str(req)], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr

    check = fleet("check", state=state, inventory=course(tmp_path, ["six==1.16.0", "idna==3.10"]))
    assert check.rc == 1, check.output
    text = " ".join(check.output.split())
    assert "course.lock.yml: venvs./opt/jupyter: the lock is stale for /opt/jupyter: the roles now want idna==3.10" in text
    assert "run `invoke lock` to update it" in text
    assert not (state / "known_hosts").exists()   # refused before any host was touched

    again = fleet("lock", state=state, inventory=course(tmp_path, ["six==1.16.0"]))   # today's pins are kept
    assert again.rc == 0 and "│ -" in again.output, again.output


def test_a_lock_file_that_is_not_a_lock_is_refused(tmp_path):
    inventory = course(tmp_path, [])
    (tmp_path / "course.lock.yml").write_text("python: '3.11'\nvenvs: []\n")
    run = fleet("check", state=tmp_path / "state", inventory=inventory)
    assert run.rc == 1 and "course.lock.yml" in run.output and "platform" in run.output, run.output


def test_attach_refuses_a_lock_whose_wants_the_roles_dropped(tmp_path):
    from fleet.engine.roles import HostPlan

    step = Pip("/opt/v", ["requests==2.32.3"])
    plans = {"h": HostPlan(host=None, vars={}, roles=["r"])}
    plans["h"].steps.append(("r", step))
    bigger = {"/opt/v": pylock.LockedVenv("/opt/v", ("requests==2.32.3", "six==1.16.0"), LOCK.requirements)}
    attach_lock(plans, bigger, tmp_path / "c.lock.yml", every_host=False)   # a subset of hosts: fine
    assert step.lock is bigger["/opt/v"] and not step.covered
    with pytest.raises(InputError, match="no longer want six==1.16.0"):
        attach_lock(plans, bigger, tmp_path / "c.lock.yml", every_host=True)


@pytest.mark.parametrize("installer,install,uninstall", [
    ("pip", "/opt/v/bin/pip install --disable-pip-version-check -q --no-deps --require-hashes -r",
     "/opt/v/bin/pip uninstall -y -q six"),
    ("uv", "env UV_NO_CONFIG=1 UV_NATIVE_TLS=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never "
           "/var/lib/jupyter-fleet/uv/bin/uv pip install -q --python /opt/v/bin/python --no-deps --require-hashes -r",
     "/var/lib/jupyter-fleet/uv/bin/uv pip uninstall -q --python /opt/v/bin/python six"),
])
def test_the_course_installer_runs_the_locked_install(installer, install, uninstall):
    step = Pip("/opt/v", ["requests==2.32.3"], installer=installer)
    step.lock = LOCK
    outcome = step.plan({venv_fact("/opt/v").key: {"idna": "3.7", "certifi": "2024.8.30", "requests": "2.32.3",
                                                    "six": "1.16.0"}})
    script = "\n".join(outcome.commands)
    assert install in script and uninstall in script


def test_with_uv_each_host_gets_uv_first_then_every_pip_step_uses_it(tmp_path):
    from fleet import app

    path = tmp_path / "course.yml"
    path.write_text(yaml.safe_dump({"name": "c", "vars": {"roles": ["jupyter", "clusters"]},
                                    "hosts": {"h1": {"address": "10.0.0.1", "user": "ubuntu"}}}))
    import os
    os.environ["FLEET_STATE_DIR"] = str(tmp_path / "state")
    try:
        for installer, expected in (("uv", ["pip", "uv", "uv"]), ("pip", ["pip", "pip"])):
            session = app.Session.open(str(path))
            from fleet.engine.compile import compile_plans
            plans = compile_plans(session.inventory, ["h1"], roleset=session.roleset,
                                  overrides={"python_installer": installer}, only_roles=None,
                                  secrets=session.secrets, masker=session.masker)
            pips = [s for _, s in plans["h1"].steps if isinstance(s, Pip)]
            assert [s.installer for s in pips] == expected
            if installer == "uv":
                assert isinstance(pips[0], UvInstall) and pips[0].packages == ["uv==0.13.9"]
    finally:
        del os.environ["FLEET_STATE_DIR"]
