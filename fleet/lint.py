"""The project's static checks: ruff, mypy and shellcheck, as `invoke test` and CI run them.

Their settings live in pyproject.toml ([tool.ruff], [tool.mypy]); this module only finds the
shell scripts, runs the three tools and says which failed. `invoke lint` runs them alone.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parent.parent
# Folders that hold no shipped code of this project (virtual environments, caches, state).
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".fleet", ".mypy_cache", ".ruff_cache",
             ".pytest_cache", "build", "dist"}
SHELLS = ("sh", "bash", "dash")
# Python programs shipped without a .py name: ruff reads them through [tool.ruff] extend-include;
# mypy takes each alone (two files without a package are both `__main__` to it). Not
# scripts/gpu-check: it loads roles/mxnet/gpu.py by path, which mypy cannot follow.
MYPY_PROGRAMS = ("roles/autostop/files/fleet-idle-check",)


def is_shell_script(path: Path) -> bool:
    """A *.sh file, or a file whose #! line runs a POSIX shell or bash (directly or through env)."""
    if path.suffix == ".sh":
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    if not first.startswith(b"#!"):
        return False
    words = first[2:].decode(errors="replace").split()
    if words and words[0].endswith("/env"):
        words = words[1:]
    return bool(words) and os.path.basename(words[0]) in SHELLS


def shell_scripts(root: Path = ROOT) -> list[Path]:
    """Every shell script under root, sorted (scripts/, .ci/, roles/*/files/, the engine's host scripts)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        found += [Path(folder, name) for name in files if is_shell_script(Path(folder, name))]
    return sorted(found)


class _Placeholder(jinja2.ChainableUndefined):
    """Any template value, attributes included, renders as a plain word."""

    def __str__(self) -> str:
        return "PLACEHOLDER"


def rendered(template: Path, into: Path, root: Path = ROOT) -> Path:
    """A Jinja shell template (*.sh.j2) rendered with a placeholder word for every value, so that
    shellcheck reads the script a host gets, not the template's braces."""
    text = jinja2.Environment(undefined=_Placeholder, keep_trailing_newline=True).from_string(
        template.read_text()).render()
    out = into / template.relative_to(root).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def commands(root: Path, scratch: Path) -> list[tuple[str, list[str]]]:
    """(name, command line) of each check, run in root; rendered templates go to scratch."""
    scripts = [str(rendered(p, scratch, root)) if p.suffix == ".j2" else str(p.relative_to(root))
               for p in shell_scripts(root)]
    return [
        ("ruff", [sys.executable, "-m", "ruff", "check", "--no-cache", "."]),
        ("mypy", [sys.executable, "-m", "mypy"]),
        *[("mypy", [sys.executable, "-m", "mypy", program]) for program in MYPY_PROGRAMS if (root / program).is_file()],
        ("shellcheck", ["shellcheck", "--external-sources", *scripts]),
    ]


def main(root: Path = ROOT) -> int:
    """Run every check (all of them, so one run shows every finding); 0 when all pass, else 1."""
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fleet-lint-") as scratch:
        for name, argv in commands(root, Path(scratch)):
            _run(name, argv, root, failed)
    if failed:
        print(f"lint: findings from {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def lint_command() -> int:
    """`invoke lint` (described in fleet/commands/local.py)."""
    return main()


def test_command(c, k: str | None, unit: bool, lint: bool) -> int:
    """`invoke test`: the static checks, then pytest through invoke's Context; returns pytest's exit code."""
    from invoke import Exit

    if lint and main():
        raise Exit("invoke test: the static checks found something (above); fix it, or see `invoke lint`", 1)
    args = ["-m", "not hosts"] if unit else []
    if k:
        args += ["-k", k]
    result = c.run("python3 -m pytest -q " + " ".join(f"'{a}'" for a in args), pty=False, warn=True)
    return result.exited


def _run(name: str, argv: list[str], root: Path, failed: list[str]) -> None:
    if name == "shellcheck" and shutil.which("shellcheck") is None:
        print("lint: shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck; "
              "scripts/install-deps installs it)", file=sys.stderr)
        failed.append(name)
        return
    print(f"lint: {name}", flush=True)
    if subprocess.run(argv, cwd=root, check=False).returncode != 0 and name not in failed:
        failed.append(name)


if __name__ == "__main__":
    sys.exit(main())
