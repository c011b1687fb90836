"""Jupyter Fleet's command line: `invoke --list`, `invoke --help provision`.

Thin on purpose: each command (its summary, options, help and defaults) is described once in
fleet/commands/ (local.py, cloud.py); this file only turns those descriptions into invoke tasks.
"""
from __future__ import annotations

import sys

from fleet.engine import speculation

speculation.start(sys.argv)  # last run's probes leave for the hosts while the engine loads

from invoke import Collection  # noqa: E402

from fleet import commands  # noqa: E402

ns = Collection()
for command in commands.commands().values():
    ns.add_task(commands.task(command))
