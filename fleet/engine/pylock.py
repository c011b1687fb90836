"""A lock per course: every Python package a course installs, resolved once, with hashes.

`invoke lock` gathers what the course's Pip steps want, per venv, resolves it on the controller
for the hosts' Python and platform with uv (`uv pip compile --generate-hashes`), and writes
`<inventory>.lock.yml` beside the inventory, to be committed. While a lock exists every host
installs exactly it, hash-checked (fleet.engine.steps.packages.Pip), so two hosts provisioned a
month apart get the same packages. A lock that no longer matches what the roles want is refused,
naming the command that updates it.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml
from packaging.utils import canonicalize_name

from fleet import atomic, yamlfile
from fleet.errors import InputError

SUFFIX = ".lock.yml"
PYTHON = "3.11"                        # Debian 12's python3; `invoke lock --python` for others
PLATFORM = "x86_64-manylinux_2_28"     # what uv resolves wheels for
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_SHA256 = re.compile(r"--hash=sha256:([0-9a-f]{64})")
SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["python", "platform", "venvs"],
    "properties": {
        "python": {"type": "string"}, "platform": {"type": "string"},
        "venvs": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["wants", "requirements"],
            "properties": {"wants": {"type": "array", "items": {"type": "string"}},
                           "requirements": {"type": "string"}}}},
    },
}


@dataclass(frozen=True)
class LockedVenv:
    venv: str
    wants: tuple[str, ...]      # what the roles asked for when the lock was made
    requirements: str           # uv's output: `name==version \` and its `--hash=` lines
    python: str = PYTHON        # what it was resolved for (the file's `python` and `platform`)
    platform: str = PLATFORM

    @property
    def fingerprint(self) -> str:
        """Short and stable: hosts that report the same one hold the same lock."""
        return hashlib.sha256(self.requirements.encode()).hexdigest()[:12]

    def pins(self) -> dict[str, str]:
        """Canonical name -> pinned version."""
        found: dict[str, str] = {}
        for line in self.requirements.splitlines():
            match = _PIN.match(line)
            if match:
                found[canonicalize_name(match.group(1))] = match.group(2)
        return found

    def blocks(self, names: Iterable[str]) -> str:
        """The lock's requirement lines (with their hashes) for these canonical names only."""
        wanted, keep, out = set(names), False, []
        for line in self.requirements.splitlines():
            match = _PIN.match(line)
            if match:
                keep = canonicalize_name(match.group(1)) in wanted
            elif not line.startswith((" ", "\t")):
                keep = False
            if keep:
                out.append(line)
        return "\n".join(out) + "\n"

    def hashes(self, name: str) -> list[str]:
        """The sha256 digests the lock allows for one package's files (one per wheel it was locked with)."""
        return _SHA256.findall(self.blocks([canonicalize_name(name)]))


def path_for(inventory_source: str, project: Path) -> Path:
    """`inventory/course.yml` -> `inventory/course.lock.yml`; `aws:C` -> `<project>/inventory/C.lock.yml`."""
    if inventory_source.startswith("aws:"):
        return project / "inventory" / f"{inventory_source[4:]}{SUFFIX}"
    source = Path(inventory_source)
    return source.with_name(source.stem + SUFFIX)


def load(path: Path) -> dict[str, LockedVenv] | None:
    if not path.exists():
        return None
    data, lines = yamlfile.load(path)
    yamlfile.validate(data, SCHEMA, path, lines)
    return {venv: LockedVenv(venv, tuple(item["wants"]), item["requirements"], data["python"], data["platform"])
            for venv, item in data["venvs"].items()}


def resolve(wants: dict[str, list[str]], path: Path, python: str = PYTHON, platform: str = PLATFORM,
            upgrade: bool = False) -> dict[str, LockedVenv]:
    """Resolve each venv's wanted packages with uv, keeping today's pins where they still fit
    (uv reads the previous output as its preference) unless `upgrade`."""
    from uv import find_uv_bin

    previous = load(path) or {}
    resolved = {}
    for venv, packages in sorted(wants.items()):
        with tempfile.TemporaryDirectory() as scratch:
            requirements, output = Path(scratch, "in.txt"), Path(scratch, "out.txt")
            requirements.write_text("\n".join(packages) + "\n")
            if venv in previous and not upgrade:
                output.write_text(previous[venv].requirements)
            argv = [find_uv_bin(), "pip", "compile", str(requirements), "-o", str(output), "--generate-hashes",
                    "--python-version", python, "--python-platform", platform, "--no-header", "--no-annotate",
                    "--quiet"] + (["--upgrade"] if upgrade else [])
            done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, UV_NO_CONFIG="1"),
                                  stdin=subprocess.DEVNULL)
            if done.returncode:
                raise InputError(f"uv could not resolve {', '.join(packages)} for Python {python} on {platform}: "
                                 f"{done.stderr.strip()[-800:]}", key=f"venvs.{venv}")
            resolved[venv] = LockedVenv(venv, tuple(sorted(packages)), output.read_text(), python, platform)
    return resolved


def save(path: Path, locked: dict[str, LockedVenv], python: str = PYTHON, platform: str = PLATFORM) -> None:
    doc = {"python": python, "platform": platform,
           "venvs": {venv: {"wants": list(item.wants), "requirements": item.requirements}
                     for venv, item in sorted(locked.items())}}
    header = ("# Written by `invoke lock`: every Python package this course's hosts install, with hashes.\n"
              "# Commit it. `invoke lock --upgrade` moves to the newest versions the roles allow.\n")
    text = header + yaml.dump(doc, Dumper=_LiteralDumper, sort_keys=False, width=200)
    atomic.replace(path, text, mode=0o644)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as YAML literal blocks, so a lock reads (and diffs) as uv wrote it."""


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _literal)

