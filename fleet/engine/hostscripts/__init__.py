"""The shell and Python that run on hosts, kept as files so that shellcheck, ruff and mypy read
them; fleet.engine.remote puts them into the probe and apply scripts (still one round trip each).

The .sh files are bash fragments (functions and settings), not programs: each starts with a
shellcheck directive, which is not sent. `@NAME@` on a line of its own or in a word marks where
the engine puts a value in (`load(name, NAME=value)`)."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DIRECTIVE = "# shellcheck shell=bash\n"


def load(name: str, **values: str) -> str:
    """The text of one of the engine's host scripts (a file in this folder): see `read`."""
    return read(HERE / name, **values)


def read(path: Path, **values: str) -> str:
    """The text of a host script (the engine's, or a role's under roles/NAME/files), its
    shellcheck directive dropped and each @NAME@ replaced by values[NAME]."""
    text = path.read_text().removeprefix(DIRECTIVE)
    for key, value in values.items():
        marker = f"@{key}@"
        if marker not in text:
            raise KeyError(f"{path.name} has no {marker}")
        text = text.replace(marker, value)
    return text
