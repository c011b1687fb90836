"""The one way a test skips: where what it needs is missing (root, a tool, a package), it
skips on a developer's machine and FAILS under CI=true, naming the test and the reason, so a
changed condition in CI cannot turn a test quietly green.

`FLEET_FORCE_SKIP=TEXT` forces the condition missing for every test whose id or reason
contains TEXT: that is how one shows that CI fails instead of skipping
(`CI=true FLEET_FORCE_SKIP=test_territory python3 -m pytest tests/engine/test_territory.py`).

At run time: `require(shutil.which("git") is not None, "git is not installed")`.
As a mark: `@requires(os.geteuid() == 0, "needs root")` (conftest.py applies it at setup).
"""
from __future__ import annotations

import os
from typing import NoReturn

import pytest

FORCE = "FLEET_FORCE_SKIP"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def current_test() -> str:
    """The id of the test being set up or run ('' outside one); pytest keeps it in the environment."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


def forced(reason: str, test: str | None = None) -> bool:
    text = os.environ.get(FORCE, "")
    return bool(text) and (text in reason or text in (test if test is not None else current_test()))


def unavailable(reason: str, test: str | None = None) -> NoReturn:
    """Skip, or under CI=true fail, naming the test and the reason."""
    test = test if test is not None else current_test()
    why = f"{reason} (forced by {FORCE})" if forced(reason, test) else reason
    if in_ci():
        pytest.fail(f"CI must run {test or 'this test'}, but it would be skipped: {why}", pytrace=False)
    pytest.skip(why)


def require(met: bool, reason: str, test: str | None = None) -> None:
    """Go on when `met` (and not forced); otherwise `unavailable(reason)`."""
    if met and not forced(reason, test):
        return
    unavailable(reason, test)


def requires(met: bool, reason: str) -> pytest.MarkDecorator:
    """The mark form of `require`, checked when each marked test is set up (tests/conftest.py)."""
    return pytest.mark.requires(met=met, reason=reason)
