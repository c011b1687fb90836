"""Facts: read-only probes of a host, each a shell command and a parser.

All facts a host's plan needs are batched into one probe script (see fleet.probe),
so a fact never opens its own channel. The command runs as root under bash and must
not change anything; the parser turns its stdout into plain data and decides nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Fact:
    """A read-only probe. Facts with the same key are probed once per host."""

    key: str
    command: str
    parse: Callable[[str], Any] = field(compare=False)
    # Set for a path's type, mode, owner and hash: the probe asks for all such paths with one
    # `stat` and one `sha256sum` (see fleet.engine.remote.stat_batch) instead of two processes each.
    stat_path: str | None = field(default=None, compare=False)
    # Whose territory the path is: its batched stat runs as that user (None: root).
    user: str | None = field(default=None, compare=False)
