"""The sudo command a script is sent to when a sudo password is known: the password (stdin's
first line) is read by sudo where it asks, and dropped where it does not (NOPASSWD), so it is
never run as a command. Checked with bash and dash as the login shell and a stand-in sudo that
behaves as sudo does: `-n` fails when a password is needed, `-S` reads one line only if it asks."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fleet.transport.ssh import SUDO_WITH_PASSWORD
from tests.skips import require

FAKE_SUDO = """#!/bin/bash
# sudo's observable behaviour here: NEEDS_PASSWORD=1 is a login whose sudo asks.
if [ "$1" = -n ]; then
  shift; [ "$NEEDS_PASSWORD" = 1 ] && { echo "sudo: a password is required" >&2; exit 1; }
  exec "$@"
fi
if [ "$1" = -S ]; then
  shift 3   # -S -p ''
  if [ "$NEEDS_PASSWORD" = 1 ]; then
    IFS= read -r given; [ "$given" = pw-1234 ] || { echo "sudo: wrong password" >&2; exit 1; }
  fi
  exec "$@"
fi
exit 2
"""


@pytest.mark.parametrize("shell", ["bash", "dash"])
@pytest.mark.parametrize("needs_password", ["1", "0"], ids=["sudo asks", "NOPASSWD"])
def test_the_password_line_never_reaches_bash(tmp_path, shell, needs_password):
    require(shutil.which(shell) is not None, f"{shell} is not installed")
    (tmp_path / "sudo").write_text(FAKE_SUDO)
    (tmp_path / "sudo").chmod(0o755)
    script = "echo first-line-of-the-script\necho second\n"
    proc = subprocess.run([shell, "-c", SUDO_WITH_PASSWORD], input="pw-1234\n" + script, capture_output=True,
                          text=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin", "NEEDS_PASSWORD": needs_password})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "first-line-of-the-script\nsecond\n"
    assert "pw-1234" not in proc.stdout + proc.stderr
