"""Facts read as a user have a time limit, run for real on this machine as `nobody`: what the user
planted costs the host seconds and is reported; a process it leaves behind cannot hold the probe."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fleet.engine.facts import Fact
from fleet.engine.remote import Probe
from fleet.engine.steps import read_as
from tests.skips import requires

pytestmark = requires(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser")

LIMIT = 3   # seconds: the limit is a probe's setting (45 s in runs), short here to keep the suite quick
CASES = [
    # (what the read does as the user, what the fact becomes)
    ("echo hello", ("fact", "hello")),
    ("sleep 600", ("error", f"fleet: reading as nobody took over {LIMIT} s and was stopped")),
    # A child that leaves the group and keeps the output open: the probe still ends at the limit.
    ("setsid sleep 600 & sleep 600", ("error", f"fleet: reading as nobody took over {LIMIT} s and was stopped")),
    ("setsid sleep 600 & echo quick", ("fact", "quick")),
]


@pytest.mark.parametrize("command,expected", CASES, ids=[c[0] for c in CASES])
def test_a_read_as_a_user_is_bounded_and_reported(command, expected):
    fact = Fact("f", read_as("nobody", command), lambda text: text.strip())
    probe = Probe([fact], [], user_read_s=LIMIT)
    try:
        out = subprocess.run(["bash", "-s"], input=probe.script(), capture_output=True, text=True,
                             timeout=60).stdout
    finally:
        subprocess.run(["pkill", "-u", "nobody", "-x", "sleep"], check=False)
    facts, _, _, errors = probe.parse(out)
    kind, text = expected
    if kind == "fact":
        assert facts == {"f": text} and errors == {}
    else:
        assert "f" not in facts and errors["f"].startswith(text), (facts, errors)
