"""What a course costs: a dated on-demand price table and the cost of each running instance."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import yaml

from fleet.aws.common import PRICES_FILE, Instance
from fleet.aws.instances import course_instances


@dataclass(frozen=True)
class PriceTable:
    date: str
    source: str
    region: str
    hourly: dict[str, float]


@dataclass(frozen=True)
class StatusRow:
    instance_id: str
    name: str
    state: str
    type: str
    uptime: timedelta | None  # since the last start (EC2 resets LaunchTime on start)
    hourly_usd: float | None  # None: type not in the price table
    cost_usd: float | None  # cost of the current run; None when price unknown


# ------------------------------------------------------------------ costs


@lru_cache(maxsize=4)
def _load_prices(path: str) -> PriceTable:
    data = yaml.safe_load(Path(path).read_text())
    return PriceTable(
        date=str(data.get("date", "unknown")),
        source=str(data.get("source", "")).strip(),
        region=str(data.get("region", "")),
        hourly={str(k): float(v) for k, v in (data.get("hourly") or {}).items()},
    )


def load_prices(path: Path | str = PRICES_FILE) -> PriceTable:
    return _load_prices(str(path))


def status_rows(
    instances: Iterable[Instance], prices: PriceTable, now: datetime | None = None
) -> list[StatusRow]:
    """Uptime and cost of each instance's current run; pure, so it is testable offline.

    EC2 bills Linux per second with a 60 s minimum. Only running/pending instances
    cost per hour; stopped ones cost 0/h (their EBS volumes still cost, not shown).
    """
    now = now or datetime.now(timezone.utc)
    rows = []
    for inst in instances:
        price = prices.hourly.get(inst.type)
        running = inst.state in ("pending", "running")
        uptime = (now - inst.launch_time) if (running and inst.launch_time) else None
        if uptime is not None and uptime.total_seconds() < 0:
            uptime = timedelta(0)
        hourly = price if running else 0.0
        if not running:
            cost: float | None = 0.0
        elif price is None or uptime is None:
            cost = None
        else:
            cost = price * max(uptime.total_seconds(), 60.0) / 3600.0
        rows.append(StatusRow(inst.id, inst.name, inst.state, inst.type, uptime, hourly, cost))
    return rows


def status(course: str, region: str | None = None, *, now: datetime | None = None) -> list[StatusRow]:
    """One row per non-terminated instance: state, type, uptime, $/hour and cost so far."""
    return status_rows(course_instances(course, region), load_prices(), now)
