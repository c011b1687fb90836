"""One description of each command: its name, summary, options (help, default, kind, required) and the
function that runs it (fleet/commands/spec.py says what a description is). The local commands are described
in local.py, the AWS ones in cloud.py. tasks.py builds the invoke Collection from them, `run` runs a command
from Python with the same defaults, and tests/test_commands.py checks the library faces (fleet.app,
fleet.aws, fleet.course) against them.

Cheap to import, as `invoke --list` does: each command's function is imported only when that command runs.
"""
from __future__ import annotations

from typing import Any

from fleet.commands import cloud, local
from fleet.commands.spec import KINDS, Command, DescriptionError, Option, call, function, task

__all__ = ["KINDS", "Command", "DescriptionError", "Option", "call", "function", "task", "commands", "run"]


def commands() -> dict[str, Command]:
    """Every command, local then cloud, by name."""
    found: dict[str, Command] = {}
    for command in (*local.COMMANDS, *cloud.COMMANDS):
        if command.name in found:
            raise DescriptionError(f"command {command.name!r} is described twice")
        found[command.name] = command
    return found


def run(name: str, **given: Any) -> Any:
    """Run a command from Python by name, e.g. run("terminate", course="ml", yes=True)."""
    return call(commands()[name], **given)
