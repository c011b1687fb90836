"""The shell and Python that run on hosts live in fleet/engine/hostscripts; the probe and apply
scripts are put together from them and stay valid bash, one script each."""
from __future__ import annotations

import re
import subprocess

import pytest

from fleet.engine import hostscripts, remote
from fleet.engine.remote import Apply, Change, Probe
from fleet.engine.steps import STATE_DIR, File, Handler, Outcome, Verify, path_fact


def test_load_drops_the_shellcheck_directive_and_fills_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(hostscripts, "HERE", tmp_path)
    (tmp_path / "x.sh").write_text(hostscripts.DIRECTIVE + "mkdir -p @DIR@/a\n")
    assert hostscripts.load("x.sh", DIR="/var/lib/x") == "mkdir -p /var/lib/x/a\n"
    with pytest.raises(KeyError, match="x.sh has no @OTHER@"):
        hostscripts.load("x.sh", OTHER="y")


def test_every_host_script_is_sent_whole_with_no_marker_left():
    applied = remote.APPLY_FUNCTIONS
    assert not re.search(r"@[A-Z_]+@", remote.PRELUDE + applied)
    assert remote.PRELUDE == hostscripts.load("prelude.sh")
    assert remote.STEP_FUNCTIONS == hostscripts.load("step-functions.sh") and remote.STEP_FUNCTIONS in applied
    assert hostscripts.load("dpkg_lock_holder.py") in applied   # the Python heredoc of __lock_holder
    assert f"mkdir -p {STATE_DIR}/pending\n" in applied


def _scripts() -> list[str]:
    root = File("/etc/x.conf", b"hi\n")
    user = File("/home/student/.x", b"hi\n", owner="student", group="student", user="student")
    handler, verify = Handler("restart x", "systemctl restart x", unit="x"), Verify("x answers", "true")
    probe = Probe([path_fact("/etc/x.conf", content=True), path_fact("/home/student/.x", user="student")], [verify])
    apply = Apply([Change(0, root, Outcome(True, "write", ["__put /etc/x.conf 0644 root root aGkK"])),
                   Change(1, user, Outcome(True, "write", ["echo as the user"]))],
                  [handler], {handler.marker}, [verify])
    return [probe.script(), apply.script()]


@pytest.mark.parametrize("index", [0, 1], ids=["probe", "apply"])
def test_the_probe_and_apply_scripts_are_valid_bash(index):
    result = subprocess.run(["bash", "-n"], input=_scripts()[index], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
