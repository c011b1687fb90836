"""Test hosts without a route to the internet: each keeps its link to the controller (SSH, and the
wheels and .debs Fleet sends over it) and nothing it sends is forwarded beyond. Used by the course
lock's host tests and by `invoke bench --peer pyinfra --offline`."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from typing import Iterable, Iterator

from fleet.testhosts.common import TestHost


def rule(host: TestHost) -> list[str]:
    # Traffic from the host's veth to anything but another test host's veth is refused at once
    # (REJECT, not DROP: a download fails fast instead of timing out).
    return ["FORWARD", "-i", host.veth, "!", "-o", "vh-+", "-j", "REJECT"]


@contextmanager
def without_internet(hosts: Iterable[TestHost]) -> Iterator[None]:
    added: list[list[str]] = []
    try:
        for host in hosts:
            subprocess.run(["iptables", "-I", *rule(host)], check=True)
            added.append(rule(host))
        yield
    finally:
        for each in added:
            subprocess.run(["iptables", "-D", *each], check=False)
