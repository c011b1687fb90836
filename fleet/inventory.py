"""YAML inventories: hosts, groups with children, and vars at all / group / host level.

Two shapes are read: the native one (top-level `vars`, `groups`, `hosts`) and Ansible's
YAML inventory (`all: {hosts, children, vars}` with `ansible_host` and friends), both
validated before any host is touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import yamlfile
from .errors import InputError

NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"}
VARS = {"type": "object"}
HOST_SCHEMA = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string"},
        "user": {"type": "string"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "key": {"type": "string"},
        "vars": VARS,
    },
}
NATIVE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "vars": VARS,
        "hosts": {"type": "object", "propertyNames": NAME, "additionalProperties": HOST_SCHEMA},
        "groups": {
            "type": "object",
            "propertyNames": NAME,
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "hosts": {"type": "array", "items": NAME},
                    "children": {"type": "array", "items": NAME},
                    "vars": VARS,
                },
            },
        },
    },
}
ANSIBLE_GROUP: dict = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "hosts": {"type": ["object", "null"], "propertyNames": NAME,
                  "additionalProperties": {"type": ["object", "null"]}},
        "children": {"type": ["object", "null"], "propertyNames": NAME,
                     "additionalProperties": {"$ref": "#/$defs/group"}},
        "vars": VARS,
    },
}
ANSIBLE_SCHEMA = {
    "$defs": {"group": ANSIBLE_GROUP},
    "type": "object",
    "additionalProperties": False,
    "properties": {"all": {"$ref": "#/$defs/group"}},
    "required": ["all"],
}
ANSIBLE_CONNECTION = {"ansible_host": "address", "ansible_user": "user", "ansible_port": "port",
                      "ansible_ssh_private_key_file": "key"}
RESERVED_GROUPS = {"all", "ungrouped"}
# The course name becomes a file name (.fleet/secrets/<name>.key) and goes into generated config.
COURSE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class Host:
    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)  # every group it belongs to, parents first


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    name: str
    source: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def group_hosts(self, group: str) -> list[str]:
        """Every host in a group, its children included."""
        seen: list[str] = []
        for name in self._closure(group):
            for host in self.groups[name].hosts:
                if host not in seen:
                    seen.append(host)
        return seen

    def _closure(self, group: str) -> list[str]:
        order, stack = [], [group]
        while stack:
            name = stack.pop()
            if name not in order:
                order.append(name)
                stack.extend(reversed(self.groups[name].children))
        return order


def load(path: str | Path) -> Inventory:
    path = Path(path)
    data, lines = yamlfile.load(path)
    if data is None:
        raise InputError("the inventory is empty (expected `hosts:` or Ansible's `all:`)", file=str(path))
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping at the top level, got {type(data).__name__}", file=str(path))
    if "all" in data:
        yamlfile.validate(data, ANSIBLE_SCHEMA, path, lines)
        inventory = _from_ansible(data["all"] or {}, path, lines)
    else:
        yamlfile.validate(data, NATIVE_SCHEMA, path, lines)
        inventory = _from_native(data, path, lines)
    _link(inventory, lines, path)
    return inventory


def from_data(data: dict, source: str) -> Inventory:
    """An inventory built in memory (e.g. from EC2 tags), validated like a file."""
    yamlfile.validate(data, NATIVE_SCHEMA, source, {})
    inventory = _from_native(data, Path(source), {})
    _link(inventory, {}, Path(source))
    return inventory


def _from_native(data: dict, path: Path, lines: yamlfile.Lines) -> Inventory:
    inventory = Inventory(name=data.get("name") or path.stem, source=str(path), vars=data.get("vars") or {})
    for name, spec in (data.get("hosts") or {}).items():
        spec = spec or {}
        inventory.hosts[name] = Host(name=name, address=spec.get("address", name), user=spec.get("user"),
                                     port=spec.get("port"), key=spec.get("key"), vars=spec.get("vars") or {})
    for name, spec in (data.get("groups") or {}).items():
        if name in RESERVED_GROUPS:
            raise InputError(f"'{name}' is a reserved group name", file=yamlfile.where(path, lines, ("groups", name)),
                             key=f"groups.{name}")
        spec = spec or {}
        inventory.groups[name] = Group(name, list(spec.get("hosts") or []), list(spec.get("children") or []),
                                       spec.get("vars") or {})
    return inventory


def _from_ansible(root: dict, path: Path, lines: yamlfile.Lines) -> Inventory:
    inventory = Inventory(name=path.stem, source=str(path), vars=root.get("vars") or {})

    def add_hosts(hosts: dict | None, keypath: tuple) -> list[str]:
        for name, spec in (hosts or {}).items():
            spec = dict(spec or {})
            connection = {field_: spec.pop(var) for var, field_ in ANSIBLE_CONNECTION.items() if var in spec}
            if "port" in connection and not isinstance(connection["port"], int):
                raise InputError(f"expected an integer, got {connection['port']!r}",
                                 file=yamlfile.where(path, lines, keypath + (name, "ansible_port")),
                                 key=yamlfile.dotted(keypath + (name, "ansible_port")))
            host = inventory.hosts.setdefault(name, Host(name=name, address=name))
            for field_, value in connection.items():
                setattr(host, field_, str(value) if field_ != "port" else value)
            host.vars.update(spec)
        return list(hosts or {})

    def add_group(name: str, spec: dict | None, keypath: tuple) -> None:
        spec = spec or {}
        if name in inventory.groups:
            raise InputError("group defined twice", file=yamlfile.where(path, lines, keypath), key=yamlfile.dotted(keypath))
        group = Group(name, add_hosts(spec.get("hosts"), keypath + ("hosts",)), list(spec.get("children") or {}),
                      spec.get("vars") or {})
        inventory.groups[name] = group
        for child, child_spec in (spec.get("children") or {}).items():
            if child not in inventory.groups or child_spec:
                add_group(child, child_spec, keypath + ("children", child))

    add_hosts(root.get("hosts"), ("all", "hosts"))
    for name, spec in (root.get("children") or {}).items():
        add_group(name, spec, ("all", "children", name))
    return inventory


def _link(inventory: Inventory, lines: yamlfile.Lines, path: Path) -> None:
    """Check references and cycles, then record each host's groups, parents first."""
    def fail(message: str, key: tuple) -> None:
        raise InputError(message, file=yamlfile.where(path, lines, key), key=yamlfile.dotted(key))

    _check_course_name(inventory, path, lines)
    for group in inventory.groups.values():
        for host in group.hosts:
            if host not in inventory.hosts:
                fail(f"unknown host '{host}' (define it under `hosts:`)", ("groups", group.name, "hosts"))
        for child in group.children:
            if child not in inventory.groups:
                fail(f"unknown group '{child}'", ("groups", group.name, "children"))
    for name in inventory.groups:
        _check_cycle(inventory, name, [], fail)
    for host in inventory.hosts.values():
        host.groups = [g for g in _ordered_groups(inventory) if host.name in inventory.group_hosts(g)]


def _check_course_name(inventory: Inventory, path: Path, lines: yamlfile.Lines) -> None:
    if COURSE_NAME.fullmatch(inventory.name):
        return
    given = ("name",) in lines or not lines   # else it is the file's name (Ansible shape, no `name:`)
    raise InputError(f"expected a course name: a letter or digit, then letters, digits, '_', '.' or '-', "
                     f"at most 64 characters; got {inventory.name!r}",
                     file=yamlfile.where(path, lines, ("name",)) if given else str(path),
                     key="name" if given else "name (the file's name)")


def _check_cycle(inventory: Inventory, name: str, trail: list[str], fail) -> None:
    if name in trail:
        cycle = " -> ".join(trail[trail.index(name):] + [name])
        fail(f"groups form a cycle through `children`: {cycle}", ("groups", name, "children"))
    for child in inventory.groups[name].children:
        _check_cycle(inventory, child, trail + [name], fail)


def _ordered_groups(inventory: Inventory) -> list[str]:
    """Groups sorted so that parents come before their children (then by name)."""
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            parents = [g.name for g in inventory.groups.values() if name in g.children]
            depth[name] = 1 + max((depth_of(p) for p in parents), default=-1)
        return depth[name]

    return sorted(inventory.groups, key=lambda g: (depth_of(g), g))
