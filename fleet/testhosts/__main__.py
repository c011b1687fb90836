"""`python -m fleet.testhosts up 3 [--inventory FILE] [--detach]` / `down`: test hosts by hand."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from fleet.testhosts.common import HostError, TestHost, alive
from fleet.testhosts.hosts import boot, down, mark_detached, teardown, write_inventory
from fleet.testhosts.registry import registered

log = logging.getLogger(__name__)


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt   # both signals tear down the same way


def _up(n: int, inventory: Path | None, detach: bool) -> int:
    # explicit for SIGINT too: a shell starts background jobs with SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_on_signal)
    hosts: list[TestHost] = []
    keep = False                     # only a completed --detach leaves hosts up
    try:
        t0 = time.monotonic()
        hosts = boot(n)
        log.info("booted %d hosts in %.1f s: %s", len(hosts), time.monotonic() - t0,
                 ", ".join(f"{h.name}={h.address}" for h in hosts))
        if inventory:
            write_inventory(hosts, inventory)
            log.info("inventory: %s", inventory)
        if detach:
            mark_detached(hosts)
            keep = True
            log.info("detached; `python -m fleet.testhosts down` tears them down")
            return 0
        log.info("up until Ctrl-C / SIGTERM")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    finally:
        if not keep:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut teardown short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            teardown(hosts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fleet.testhosts", description="Debian 12 test hosts")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot N hosts; stay up until SIGINT/SIGTERM (or --detach)")
    up.add_argument("n", type=int)
    up.add_argument("--inventory", type=Path, help="write a fleet inventory here")
    up.add_argument("--detach", action="store_true", help="return and leave the hosts up until `down`")
    sub.add_parser("down", help="tear down every registered host and stale leftovers")
    sub.add_parser("list", help="show registered hosts")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "up":
            return _up(args.n, args.inventory, args.detach)
        if args.cmd == "down":
            log.info("torn down: %s", ", ".join(down()) or "nothing")
            return 0
        for h in registered():
            state = "up" if alive(h.pid, h._start) else "down"
            print(f"{h.name}\t{h.address}\t{state}")
        return 0
    except HostError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
