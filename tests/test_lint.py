"""The static checks `invoke test` runs (fleet/lint.py): which files are shell scripts, and that a
finding of any of the three tools fails the run, while a clean tree passes."""
from __future__ import annotations

import shutil

import pytest

from fleet import lint
from tests.skips import require

CLEAN = {
    "pyproject.toml": '[tool.mypy]\nfiles = ["ok.py"]\n[tool.ruff.lint]\nselect = ["F"]\n',
    "ok.py": "def double(n: int) -> int:\n    return 2 * n\n",
    "run.sh": '#!/bin/sh\necho "$1"\n',
    "tool.sh.j2": '#!/bin/bash\nname={{ name }}\necho "$name"\n',
}


@pytest.mark.parametrize("first_line, name, expected", [
    ("#!/bin/bash", "x", True),
    ("#!/bin/sh", "x", True),
    ("#!/usr/bin/env bash", "x", True),
    ("#!/usr/bin/env python3", "x", False),
    ("#!/usr/bin/python3", "x", False),
    ("# a comment", "x", False),
    ("echo hi", "x.sh", True),
])
def test_which_files_are_shell_scripts(tmp_path, first_line, name, expected):
    (tmp_path / name).write_text(first_line + "\n")
    assert lint.is_shell_script(tmp_path / name) is expected


def test_the_shipped_shell_scripts_are_found():
    found = {str(p.relative_to(lint.ROOT)) for p in lint.shell_scripts()}
    assert {"scripts/install-deps", ".ci/run", "templates/ipengines.sh.j2"} <= found
    assert "roles/autostop/files/fleet-idle-check" not in found   # Python: ruff and mypy read it


@pytest.mark.parametrize("tool, path, text", [
    ("ruff", "ok.py", "import os\n\n\ndef double(n: int) -> int:\n    return 2 * n\n"),
    ("mypy", "ok.py", "def double(n: int) -> int:\n    return str(n)\n"),
    ("shellcheck", "run.sh", "#!/bin/sh\necho $1\n"),
    ("shellcheck", "tool.sh.j2", "#!/bin/bash\nname={{ name }}\necho $1\n"),
])
def test_a_finding_of_any_tool_fails(tmp_path, capsys, tool, path, text):
    require(shutil.which("shellcheck") is not None, "needs shellcheck (scripts/install-deps installs it)")
    for name, content in CLEAN.items():
        (tmp_path / name).write_text(content)
    (tmp_path / path).write_text(text)
    assert lint.main(tmp_path) == 1
    assert capsys.readouterr().err.endswith(f"lint: findings from {tool}\n")


def test_a_clean_tree_passes(tmp_path, capsys):
    require(shutil.which("shellcheck") is not None, "needs shellcheck (scripts/install-deps installs it)")
    for name, content in CLEAN.items():
        (tmp_path / name).write_text(content)
    assert lint.main(tmp_path) == 0, capsys.readouterr()
