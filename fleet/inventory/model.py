"""What an inventory is once read: hosts, groups and the levels a host's variables come from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fleet.inventory.settings import Setting


@dataclass
class Host:
    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)  # every group it belongs to, parents first
    sudo_password: str | None = field(default=None, repr=False)
    given: dict[str, Setting] = field(default_factory=dict, repr=False)     # settings at the host's own level
    settings: dict[str, Setting] = field(default_factory=dict, repr=False)  # resolved over every level
    origins: dict[str, Setting] = field(default_factory=dict, repr=False)   # field -> the setting used


@dataclass(frozen=True)
class Student:
    """A host's student (fleet/inventory/roster.py reads and checks the roster)."""
    name: str
    host: str
    email: str = ""
    ssh_key: str = ""      # the student's own public key ("type base64"); "" when Fleet makes one
    where: str = ""        # file:line of the roster entry ("" for a placeholder)

    @property
    def named(self) -> bool:
        """False for the placeholder of a machine the roster gives nobody."""
        return bool(self.where)


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)
    priority: int = 1                # ansible_group_priority: orders groups of one depth before their name


class Level(NamedTuple):
    """One place a host's variables and settings come from, lowest precedence first."""
    label: str
    vars: dict[str, Any]
    settings: dict[str, Setting]


@dataclass
class Inventory:
    name: str
    source: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)
    files: dict[tuple[str, str], list[Level]] = field(default_factory=dict)  # (group_vars|host_vars, name)
    unused: dict[str, str] = field(default_factory=dict)  # ansible_* keys Fleet has no use for -> first source
    students: dict[str, Student] = field(default_factory=dict)  # host -> its student (fleet/inventory/roster.py)

    def levels(self, host: Host) -> list[Level]:
        """Ansible's order: inventory-file vars of all, then of the groups (parents first); then
        group_vars/all, group_vars/<group>; then the host's own vars, then host_vars/<host>."""
        src = self.source
        levels = [Level(f"{src}: vars", self.vars, self.settings)]
        levels += [Level(f"{src}: groups.{g}.vars", self.groups[g].vars, self.groups[g].settings) for g in host.groups]
        levels += self.files.get(("group_vars", "all"), [])
        for group in host.groups or ["ungrouped"]:
            levels += self.files.get(("group_vars", group), [])
        levels.append(Level(f"{src}: hosts.{host.name}.vars", host.vars, host.given))
        levels += self.files.get(("host_vars", host.name), [])
        return levels

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
