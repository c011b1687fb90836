"""Results are three-state per step (changed / unchanged / would change) plus failures,
rolled up per host and for the fleet; one JSON shape for reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Exit codes: distinct so scripts can tell what happened.
EXIT_OK, EXIT_INPUT, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_DRIFT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


@dataclass
class StepResult:
    role: str
    name: str
    status: str            # ok | changed | would change | failed | skipped
    message: str
    diff: str | None = None
    output: str | None = None
    seconds: float | None = None  # how long the change took on the host (None: nothing ran)
    # sha256 of the masked diff: tells two hosts' changes apart (drift groups) even where the
    # diff itself is hidden (secret files)
    digest: str | None = None


@dataclass
class HostResult:
    host: str
    status: str = "ok"     # ok | changed | drift | failed | unreachable | interrupted | skipped
    steps: list[StepResult] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    verifies: list[dict[str, Any]] = field(default_factory=list[Any])
    error: str | None = None
    seconds: float = 0.0
    connections: int = 0
    commands: int = 0
    early_probe: bool = False   # its probe was sent before the engine loaded (fleet.engine.speculation)
    early_probe_s: float = 0.0  # how long before its run started that probe left (counted in `seconds`)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)


@dataclass
class RunResult:
    hosts: dict[str, HostResult]
    check: bool = False
    stopped_reason: str | None = None
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [h for h, r in self.hosts.items() if r.status in ("failed", "unreachable", "interrupted", "skipped")]

    def exit_code(self) -> int:
        statuses = {r.status for r in self.hosts.values()}
        if self.interrupted:
            return EXIT_INTERRUPTED
        if "failed" in statuses or "skipped" in statuses:
            return EXIT_FAILED
        if "unreachable" in statuses:
            return EXIT_UNREACHABLE
        if self.check and "drift" in statuses:
            return EXIT_DRIFT
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        from fleet.engine.drift import groups

        hosts = {name: asdict(result) for name, result in self.hosts.items()}
        return {"check": self.check, "seconds": round(self.seconds, 3), "stopped_reason": self.stopped_reason,
                "interrupted": self.interrupted, "exit_code": self.exit_code(),
                "hosts": hosts, "drift_groups": groups(hosts)}
