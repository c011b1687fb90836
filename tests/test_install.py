"""A `pip install .` (not editable) into a fresh virtual environment, then a command run from
another folder: the copy has no roles/ or templates/ beside it, and says so with how to install
instead (fleet/__init__.py), rather than failing later on a missing file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skips import require

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's python after `pip install .` of this checkout's package (its pyproject and fleet/,
    copied first so that the build writes nothing into the checkout)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    shutil.copy(PROJECT / "pyproject.toml", source)
    shutil.copytree(PROJECT / "fleet", source / "fleet", ignore=shutil.ignore_patterns("__pycache__"))
    # The dependencies are this interpreter's (--system-site-packages); only the build reaches pip's index.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    built = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                            str(source)], capture_output=True, text=True, timeout=600, check=False)
    require(built.returncode == 0, f"pip could not build the package (no index reachable?): {built.stderr[-500:]}")
    return python


@pytest.mark.parametrize("command", [
    "import fleet.cli",
    "from fleet import app; app.provision('all', inventory='course.yml', check=True)",
])
def test_a_copy_without_its_checkout_is_refused_with_how_to_install(installed, tmp_path, command):
    (tmp_path / "course.yml").write_text("name: lab\nhosts:\n  h1: {address: 127.0.0.1}\n")   # a course of its own
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(installed), "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: jupyter-fleet runs from its source checkout"), done.stderr
    assert str(installed.parent.parent / "lib") in last and "pip install -e '.[test]'" in last


def test_the_checkout_itself_imports(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import fleet.cli"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
