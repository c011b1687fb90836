"""Shared fixtures: real Debian 12 test hosts (see fleet/testhosts/).

Integration fixtures skip where hosts cannot be booted (not root, tools missing), except
in CI (CI=true), where integration tests must run: there they fail loudly instead. Every
skip goes through tests/skips.py, which does that.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Iterator

import pytest

from fleet.testhosts import hosts as testhosts
from fleet.testhosts.hosts import TestHost
from tests.skips import require


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hosts: integration tests that boot real Debian 12 hosts (need root)")
    config.addinivalue_line("markers", "requires(met, reason): skip, or fail under CI=true, unless met (tests/skips.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require(mark.kwargs["met"], mark.kwargs["reason"], test=item.nodeid)


def _why_no_hosts() -> str | None:
    if os.geteuid() != 0:
        return "booting test hosts needs root"
    missing = [t for t in testhosts.REQUIRED_TOOLS if not shutil.which(t)]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install debootstrap systemd-container iptables openssh-client)"
    return None


def _require_hosts() -> None:
    reason = _why_no_hosts()
    require(reason is None, reason or "booting test hosts")


@pytest.fixture(scope="session", autouse=True)
def no_ssh_keeper_outlives_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs keep SSH connections open in a keeper per state folder; the tests' keepers end with them."""
    yield
    from fleet.transport import keeper

    keeper.stop_all_under(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def hosts_factory() -> Iterator[Callable[[int], list[TestHost]]]:
    """boot(n) -> n fresh hosts; every host booted through it is torn down at session end."""
    _require_hosts()
    booted: list[TestHost] = []

    def boot(n: int) -> list[TestHost]:
        hosts = testhosts.boot(n)
        booted.extend(hosts)
        return hosts

    try:
        yield boot
    finally:
        testhosts.teardown(booted)   # skips hosts a narrower fixture already tore down


@pytest.fixture(scope="module")
def three_hosts(hosts_factory: Callable[[int], list[TestHost]]) -> Iterator[list[TestHost]]:
    hosts = hosts_factory(3)
    yield hosts
    testhosts.teardown(hosts)        # free them for the next module rather than at session end
