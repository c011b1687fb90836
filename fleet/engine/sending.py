"""What the controller sends a host before its apply (`package_source: controller`): the course
lock's wheels (fleet.engine.wheels) and the .debs its apt would fetch (fleet.engine.debs), in one
tar stream on the host's SSH channel, received by hostscripts/receive-packages.sh. Sent only when a
change installs something: a no-op sends nothing and costs no round trip."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fleet.engine.debs import DebCache, DebUnavailable
from fleet.engine.steps.base import Outcome
from fleet.engine.wheels import WheelCache

RECEIVE = (Path(__file__).parent / "hostscripts" / "receive-packages.sh").read_text()


@dataclass
class PackageCaches:
    wheels: WheelCache
    debs: DebCache

    @classmethod
    def under(cls, root: Path) -> PackageCaches:
        return cls(WheelCache(root / "wheels"), DebCache(root / "debs"))


@dataclass
class Shipment:
    files: list[tuple[Path, str]] = field(default_factory=list)   # (controller path, name in the stream)
    notes: dict[int, str] = field(default_factory=dict)           # step index -> what the host fetches itself


def shipment(outcomes: dict[int, Outcome], caches: PackageCaches) -> Shipment:
    """The files these changes need (step index -> its outcome). A wheel the controller cannot get
    fails the host (WheelsUnavailable: the lock's hashes leave no other source that is the same); a
    .deb it cannot get is left to the host's apt, and said in that step's message."""
    sent, notes = set(), {}
    for index, outcome in outcomes.items():
        if outcome.wheels:
            sent |= {(path, f"wheels/{name}") for path, name in caches.wheels.files(*outcome.wheels)}
        missed = []
        for deb in outcome.debs:
            try:
                sent.add((caches.debs.file(deb), f"debs/{deb.file}"))
            except DebUnavailable as exc:
                missed.append(str(exc))
        if missed:
            notes[index] = f"the host fetches what the controller could not get ({'; '.join(missed)[:300]})"
    return Shipment(sorted(sent), notes)
