"""YAML inventories: hosts, groups with children, and vars at all / group / host level.

Two shapes are read: the native one (top-level `vars`, `groups`, `hosts`) and Ansible's
YAML inventory (`all: {hosts, children, vars}` with `ansible_host` and friends), both
validated before any host is touched. Host ranges (`lab[01:30]`), group_vars/ and host_vars/
beside the file and connection settings at every level are read as Ansible reads them
(fleet/inventory/hostrange.py, fleet/inventory/varsdirs.py, fleet/inventory/settings.py); an INI inventory is recognised
and refused with the command that converts it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from fleet import yamlfile
from fleet.errors import InputError
from fleet.inventory import hostrange, roster, settings, varsdirs
from fleet.inventory.model import Group, Host, Inventory, Level
from fleet.inventory.settings import Setting

NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"}
HOST_NAME = re.compile(NAME["pattern"])
HOST_PATTERN = {"type": "string", "pattern": r"^[A-Za-z0-9_\[][A-Za-z0-9_.\-\[\]:]*$"}  # ranges, host:port
VARS = {"type": "object"}
CONNECTION = {"user": {"type": "string"}, "port": {"type": "integer"}, "key": {"type": "string"}}
HOST_SCHEMA = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string"},
        **CONNECTION,
        "vars": VARS,
    },
}
NATIVE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "roster": {"type": ["string", "array"]},   # fleet/inventory/roster.py
        "vars": VARS,
        **CONNECTION,
        "hosts": {"type": "object", "propertyNames": HOST_PATTERN, "additionalProperties": HOST_SCHEMA},
        "groups": {
            "type": "object",
            "propertyNames": NAME,
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "hosts": {"type": "array", "items": HOST_PATTERN},
                    "children": {"type": "array", "items": NAME},
                    "vars": VARS,
                    **CONNECTION,
                },
            },
        },
    },
}
ANSIBLE_GROUP: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "hosts": {"type": ["object", "null"], "propertyNames": HOST_PATTERN,
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
RESERVED_GROUPS = {"all", "ungrouped"}
# The course name becomes a file name (.fleet/secrets/<name>.key) and goes into generated config.
COURSE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
INI_SECTION = re.compile(r"^\s*\[[^\]\s]+\]\s*([#;].*)?$", re.M)
INI_HOST_LINE = re.compile(r"^\S+(\s+\w+=\S*)+\s*$", re.M)


def load(path: str | Path) -> Inventory:
    path = Path(path)
    if path.suffix.lower() == ".ini":
        raise _ini(path)
    try:
        data, lines = yamlfile.load(path)
    except InputError as exc:
        if "invalid YAML" in exc.detail and _looks_ini(path):
            raise _ini(path) from None
        raise
    if data is None:
        raise InputError("the inventory is empty (expected `hosts:` or Ansible's `all:`)", file=str(path))
    if not isinstance(data, dict):
        if _looks_ini(path):
            raise _ini(path)
        raise InputError(f"expected a mapping at the top level, got {type(data).__name__}", file=str(path))
    if "all" in data:
        yamlfile.validate(data, ANSIBLE_SCHEMA, path, lines)
        inventory = _from_ansible(data["all"] or {}, path, lines)
    else:
        yamlfile.validate(data, NATIVE_SCHEMA, path, lines)
        inventory = _from_native(data, path, lines)
    _read_vars_dirs(inventory, path.parent)
    _link(inventory, lines, path)
    inventory.students = roster.students(data.get("roster") if "all" not in data else None, path,
                                         list(inventory.hosts))
    return inventory


def from_data(data: dict[str, Any], source: str) -> Inventory:
    """An inventory built in memory (e.g. from EC2 tags), validated like a file."""
    yamlfile.validate(data, NATIVE_SCHEMA, source, {})
    inventory = _from_native(data, Path(source), {})
    _link(inventory, {}, Path(source))
    inventory.students = roster.students(data.get("roster"), None, list(inventory.hosts))
    return inventory


def _looks_ini(path: Path) -> bool:
    text = path.read_text(errors="replace")
    return bool(INI_SECTION.search(text) or INI_HOST_LINE.search(text))


def _ini(path: Path) -> InputError:
    return InputError("this is an INI inventory; Fleet reads YAML inventories only. Convert it once with "
                      f"`ansible-inventory -i {path} --list -y > inventory.yml` and use that file", file=str(path))


class _Reader:
    """Splits each level's mapping into plain variables and connection settings, with sources."""

    def __init__(self, path: Path, lines: yamlfile.Lines) -> None:
        self.path, self.lines = path, lines

    def where(self, keypath: tuple[Any, ...]) -> str:
        return yamlfile.where(self.path, self.lines, keypath)

    def split(self, values: dict[str, Any] | None, keypath: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Setting]]:
        plain: dict[str, Any] = {}
        found: dict[str, Setting] = {}
        for key, value in (values or {}).items():
            if settings.is_setting(key):
                found[key] = self.setting(key, value, keypath + (key,))
            else:
                plain[key] = value
        return plain, found

    def setting(self, name: str, value: Any, keypath: tuple[Any, ...]) -> Setting:
        setting = Setting(value, self.where(keypath), yamlfile.dotted(keypath))
        settings.check_value(name, value, setting.file, setting.key)
        return setting

    def native(self, spec: dict[str, Any], keypath: tuple[Any, ...], found: dict[str, Setting]) -> None:
        """Fleet's own `address/user/port/key` at a level: the same settings as their ansible_* names."""
        for field_, name in settings.NATIVE.items():
            if field_ in spec:
                if name in found:
                    raise InputError(f"{field_} is given twice at this level (also as vars.{name})",
                                     file=self.where(keypath + (field_,)), key=yamlfile.dotted(keypath + (field_,)))
                found[name] = self.setting(name, spec[field_], keypath + (field_,))

    def host_names(self, pattern: str, keypath: tuple[Any, ...]) -> tuple[list[str], int | None]:
        """A `hosts:` key: a name, a range, optionally `:port` as Ansible allows (`web1:2222`)."""
        head, sep, tail = pattern.rpartition(":")
        port = None
        if sep and tail.isdigit() and head.count("[") == head.count("]"):
            pattern, port = head, int(tail)
        try:
            names = hostrange.expand(pattern)
        except hostrange.RangeError as exc:
            raise InputError(str(exc), file=self.where(keypath), key=yamlfile.dotted(keypath)) from None
        for name in names:
            if not HOST_NAME.match(name):
                raise InputError(f"host name {name!r} does not match {HOST_NAME.pattern}",
                                 file=self.where(keypath), key=yamlfile.dotted(keypath))
        return names, port


def _from_native(data: dict[str, Any], path: Path, lines: yamlfile.Lines) -> Inventory:
    inventory = Inventory(name=data.get("name") or path.stem, source=str(path), vars=data.get("vars") or {})
    read = _Reader(path, lines)
    inventory.vars, inventory.settings = read.split(data.get("vars"), ("vars",))
    read.native(data, (), inventory.settings)
    for pattern, spec in (data.get("hosts") or {}).items():
        spec = spec or {}
        names, port = read.host_names(pattern, ("hosts", pattern))
        values, given = read.split(spec.get("vars"), ("hosts", pattern, "vars"))
        read.native(spec, ("hosts", pattern), given)
        if port is not None and "ansible_port" not in given:
            given["ansible_port"] = read.setting("ansible_port", port, ("hosts", pattern))
        for name in names:  # a name also covered by a range adds up, as in Ansible
            host = inventory.hosts.setdefault(name, Host(name=name, address=name))
            host.vars.update(values)
            host.given.update(given)
    for name, spec in (data.get("groups") or {}).items():
        if name in RESERVED_GROUPS:
            raise InputError(f"'{name}' is a reserved group name", file=yamlfile.where(path, lines, ("groups", name)),
                             key=f"groups.{name}")
        spec = spec or {}
        values, found = read.split(spec.get("vars"), ("groups", name, "vars"))
        read.native(spec, ("groups", name), found)
        hosts = [h for index, pattern in enumerate(spec.get("hosts") or [])
                 for h in read.host_names(pattern, ("groups", name, "hosts", index))[0]]
        group = Group(name, list(dict.fromkeys(hosts)), list(spec.get("children") or []), values, found)
        group.priority = _priority(group, read, ("groups", name, "vars"))
        inventory.groups[name] = group
    return inventory


def _priority(group: Group, read: _Reader, keypath: tuple[Any, ...]) -> int:
    """ansible_group_priority in a group's own vars orders it among groups of its depth (not a variable)."""
    setting = group.settings.pop("ansible_group_priority", None)
    if setting is None:
        return group.priority
    if isinstance(setting.value, bool) or not isinstance(setting.value, int):
        raise InputError(f"expected an integer, got {setting.value!r}", file=read.where(keypath + ("ansible_group_priority",)),
                         key=yamlfile.dotted(keypath + ("ansible_group_priority",)))
    return setting.value


def _from_ansible(root: dict[str, Any], path: Path, lines: yamlfile.Lines) -> Inventory:
    inventory = Inventory(name=path.stem, source=str(path))
    read = _Reader(path, lines)
    inventory.vars, inventory.settings = read.split(root.get("vars"), ("all", "vars"))

    def add_hosts(hosts: dict[str, Any] | None, keypath: tuple[Any, ...]) -> list[str]:
        added: list[str] = []
        for pattern, spec in (hosts or {}).items():
            names, port = read.host_names(pattern, keypath + (pattern,))
            values, given = read.split(spec, keypath + (pattern,))
            if port is not None and "ansible_port" not in given:
                given["ansible_port"] = read.setting("ansible_port", port, keypath + (pattern,))
            for name in names:
                host = inventory.hosts.setdefault(name, Host(name=name, address=name))
                host.vars.update(values)  # a host listed in two groups: both places add up, as in Ansible
                host.given.update(given)
                added.append(name)
        return added

    def add_group(name: str, spec: dict[str, Any] | None, keypath: tuple[Any, ...]) -> None:
        if name in RESERVED_GROUPS:
            raise InputError(f"'{name}' is a reserved group name", file=read.where(keypath), key=yamlfile.dotted(keypath))
        spec = spec or {}
        group = inventory.groups.setdefault(name, Group(name))  # a group given in two places adds up, as in Ansible
        values, found = read.split(spec.get("vars"), keypath + ("vars",))
        group.vars.update(values)
        group.settings.update(found)
        group.priority = _priority(group, read, keypath + ("vars",))
        for host in add_hosts(spec.get("hosts"), keypath + ("hosts",)):
            if host not in group.hosts:
                group.hosts.append(host)
        for child, child_spec in (spec.get("children") or {}).items():
            if child not in group.children:
                group.children.append(child)
            add_group(child, child_spec, keypath + ("children", child))

    add_hosts(root.get("hosts"), ("all", "hosts"))
    for name, spec in (root.get("children") or {}).items():
        add_group(name, spec, ("all", "children", name))
    return inventory


def _read_vars_dirs(inventory: Inventory, base: Path) -> None:
    """group_vars/ and host_vars/ beside the inventory file, for the groups and hosts it has."""
    wanted = [("group_vars", g) for g in ["all", "ungrouped", *inventory.groups]]
    wanted += [("host_vars", h) for h in inventory.hosts]
    for kind, name in wanted:
        levels = []
        for path in varsdirs.files(base, kind, name):
            data, lines = varsdirs.load(path)
            values, found = _Reader(path, lines).split(data, ())
            levels.append(Level(str(path), values, found))
        if levels:
            inventory.files[(kind, name)] = levels


def _link(inventory: Inventory, lines: yamlfile.Lines, path: Path) -> None:
    """Check references and cycles, then record each host's groups, parents first."""
    def fail(message: str, key: tuple[Any, ...]) -> None:
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
    order = _ordered_groups(inventory)
    members = {g: set(inventory.group_hosts(g)) for g in order}
    for entry in inventory.hosts.values():
        entry.groups = [g for g in order if entry.name in members[g]]
        _connect_settings(inventory, entry)


def _connect_settings(inventory: Inventory, host: Host) -> None:
    """Resolve the host's connection settings over every level, as its variables are."""
    merged = settings.resolve([level.settings for level in inventory.levels(host)])
    found = settings.fields(host.name, merged)
    host.settings = merged
    host.origins = found
    host.address = found["address"].value if "address" in found else host.name
    for name in ("user", "port", "key", "sudo_password"):
        setattr(host, name, found[name].value if name in found else None)
    for name, setting in settings.unused(merged).items():
        inventory.unused.setdefault(name, setting.source)


def _check_course_name(inventory: Inventory, path: Path, lines: yamlfile.Lines) -> None:
    if COURSE_NAME.fullmatch(inventory.name):
        return
    given = ("name",) in lines or not lines   # else it is the file's name (Ansible shape, no `name:`)
    raise InputError(f"expected a course name: a letter or digit, then letters, digits, '_', '.' or '-', "
                     f"at most 64 characters; got {inventory.name!r}",
                     file=yamlfile.where(path, lines, ("name",)) if given else str(path),
                     key="name" if given else "name (the file's name)")


def _check_cycle(inventory: Inventory, name: str, trail: list[str], fail: Callable[[str, tuple[Any, ...]], None]) -> None:
    if name in trail:
        cycle = " -> ".join(trail[trail.index(name):] + [name])
        fail(f"groups form a cycle through `children`: {cycle}", ("groups", name, "children"))
    for child in inventory.groups[name].children:
        _check_cycle(inventory, child, trail + [name], fail)


def _ordered_groups(inventory: Inventory) -> list[str]:
    """Groups sorted so that parents come before their children (then by priority and name, as Ansible does)."""
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            parents = [g.name for g in inventory.groups.values() if name in g.children]
            depth[name] = 1 + max((depth_of(p) for p in parents), default=-1)
        return depth[name]

    return sorted(inventory.groups, key=lambda g: (depth_of(g), inventory.groups[g].priority, g))
