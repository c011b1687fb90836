"""The inventory file a test, the demo or the benchmark hands the tool for its booted hosts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from fleet.testhosts.common import TestHost


def write_inventory(hosts: Iterable[TestHost], path: str | Path, vars: Mapping[str, Any] | None = None,
                    groups: Mapping[str, Any] | None = None) -> Path:
    """Write our tool's native YAML inventory: optional all-level vars and groups, then hosts.

    A group is a list of hosts (TestHost or name) or a mapping {hosts: [...], vars: {...}}.
    """
    doc: dict[str, Any] = {}
    if vars is not None:
        doc["vars"] = dict(vars)
    if groups is not None:
        doc["groups"] = {name: _group(spec) for name, spec in groups.items()}
    doc["hosts"] = {h.name: {"address": h.address, "user": h.user, "port": h.port, "key": str(h.key)}
                    for h in hosts}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    return path


def _group(spec: Any) -> dict[str, Any]:
    members, gvars = (spec.get("hosts", []), spec.get("vars", {})) if isinstance(spec, Mapping) else (spec, {})
    return {"hosts": [m.name if isinstance(m, TestHost) else str(m) for m in members], "vars": dict(gvars)}
