"""tests/skips.py for real: pytest in a subprocess, with a skip condition forced true by
FLEET_FORCE_SKIP. On a developer's machine the test skips; under CI=true it fails, naming the
test and the reason. Nothing forced runs its test body, so these cost no host boots."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    # (the test, FLEET_FORCE_SKIP, what the reason says): one of each way a test can skip
    ("tests/engine/test_territory.py::test_user_facts_are_read_as_the_user", "test_user_facts_are_read",
     "needs root and runuser"),                                                   # a `requires` mark
    ("tests/inventory/test_ansible_inventory.py::test_corpus_agrees_with_ansible_inventory[all-vars]", "ansible-core",
     "ansible-inventory (ansible-core, a test dependency) is not installed"),     # `require` at run time
    ("tests/engine/test_untrusted_user_hosts.py::test_planted_git_configuration_runs_only_as_the_student",
     "booting test hosts", "booting test hosts"),                                  # the hosts fixture
]


def pytest_run(test: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("CI", "FLEET_FORCE_SKIP", "PYTEST_CURRENT_TEST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(environment, **env))


@pytest.mark.parametrize("test,force,reason", CASES, ids=["mark", "at run time", "hosts fixture"])
def test_a_forced_skip_fails_in_ci_naming_the_test(test, force, reason):
    done = pytest_run(test, CI="true", FLEET_FORCE_SKIP=force)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"CI must run {test}, but it would be skipped: {reason}" in done.stdout, done.stdout
    assert "1 passed" not in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout


@pytest.mark.parametrize("test,force,reason", CASES[:1], ids=["territory"])
def test_the_same_forced_skip_skips_outside_ci(test, force, reason):
    done = pytest_run(test, FLEET_FORCE_SKIP=force)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{reason} (forced by FLEET_FORCE_SKIP)" in done.stdout and "1 skipped" in done.stdout, done.stdout
