"""`invoke bench` (described in fleet/commands/local.py): the flags turned into bench.run's or bench.peer's
arguments; returns the exit code."""
from __future__ import annotations


def bench(hosts: str, json_path: str, baked_only: bool, peer: str, peer_bin: str, offline: bool = False) -> int:
    counts = [int(n) for n in str(hosts).split(",") if n.strip()]
    if peer:   # the side-by-side run with another tool (bench/peer.py); pyinfra is imported only there
        from bench.peer import main as compare

        return compare(counts, json_path, peer, peer_bin or None, offline=offline)
    if offline:
        print("--offline compares Fleet's cold run with and without internet beside a peer: give --peer pyinfra")
        return 1
    from bench.run import main

    return main(counts, json_path, baked_only)
