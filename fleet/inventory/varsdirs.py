"""group_vars/ and host_vars/ beside the inventory file, found the way Ansible finds them:
`<name>`, `<name>.yml`, `<name>.yaml` or `<name>.json` (the first that exists), and where that
is a folder, every file in it (sorted, subfolders too, hidden files and backups~ skipped)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet import yamlfile
from fleet.errors import InputError

EXTENSIONS = ("", ".yml", ".yaml", ".json")


def files(base: Path, kind: str, name: str) -> list[Path]:
    folder = base / kind
    if not folder.is_dir() or name.startswith("/"):
        return []
    for ext in EXTENSIONS:
        path = folder / (name + ext)
        if path.is_dir():
            return _folder(path)
        if path.is_file():
            return [path]
    return []


def _folder(path: Path) -> list[Path]:
    found: list[Path] = []
    for child in sorted(path.iterdir(), key=lambda p: p.name):
        if child.name.startswith(".") or child.name.endswith("~"):
            continue
        if child.is_dir() and not child.suffix:
            found += _folder(child)
        elif child.is_file() and child.suffix in EXTENSIONS:
            found.append(child)
    return found


def load(path: Path) -> tuple[dict[str, Any], yamlfile.Lines]:
    if path.read_bytes().startswith(b"$ANSIBLE_VAULT"):
        raise InputError("an Ansible Vault file is not read: decrypt it (ansible-vault decrypt) or keep secrets "
                         "out of the inventory", file=str(path))
    data, lines = yamlfile.load(path)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of variables, got {type(data).__name__}", file=str(path))
    return data, lines
