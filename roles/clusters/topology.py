"""Which hosts form a cluster across machines, and the fixed port layout of its controller.

A course names an inventory group (`clusters_group`); every host in that group is a member, the
head (`clusters_head`, else the group's first host) runs the controller and every member runs
engines. A host outside the group is not a member, even where it sees the same knob (set at the
`all` level, say): whatever it ran for a cluster is retired. Checked on the controller, before any
host is touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.errors import InputError

# ipyparallel 9's controller (ipyparallel/controller/app.py, init_hub) needs these ports. They are
# all written into the connection files, which the controller reads back (`reuse_files`), so no
# port is ever picked at random and a firewall rule can name the range.
ENGINE_CHANNELS = ("registration", "control", "mux", "task", "iopub", "hb_ping", "hb_pong")
LEAF_SCHEDULERS = 2   # broadcast_scheduler_depth 1 -> 2 leaf schedulers engines connect to
CLIENT_CHANNELS = ("control", "mux", "task", "iopub", "notification", "broadcast")
INTERNAL = 3          # 2 internal broadcast schedulers and the monitor, all on the head's loopback
PORTS_NEEDED = len(ENGINE_CHANNELS) + LEAF_SCHEDULERS + len(CLIENT_CHANNELS) + INTERNAL


@dataclass(frozen=True)
class Cluster:
    group: str
    head: str
    members: tuple[str, ...]
    address: str            # where engines reach the controller
    first_port: int
    last_port: int

    def engine_ports(self) -> dict:
        p = self.first_port
        ports: dict = {name: p + i for i, name in enumerate(ENGINE_CHANNELS)}
        ports["broadcast"] = [p + len(ENGINE_CHANNELS) + i for i in range(LEAF_SCHEDULERS)]
        return ports

    def client_ports(self) -> dict:
        start = self.first_port + len(ENGINE_CHANNELS) + LEAF_SCHEDULERS
        ports = {"registration": self.first_port}
        ports.update({name: start + i for i, name in enumerate(CLIENT_CHANNELS)})
        return ports

    def internal_ports(self) -> list[int]:
        start = self.first_port + PORTS_NEEDED - INTERNAL
        return list(range(start, start + INTERNAL))


def parse_ports(text: str, fail) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    first, last = (int(match[1]), int(match[2])) if match else (0, 0)
    if not match or not 1024 <= first <= last <= 65535:
        raise fail("clusters_ports", f"expected a port range FIRST-LAST within 1024-65535, got {text!r}")
    if last - first + 1 < PORTS_NEEDED:
        raise fail("clusters_ports", f"the range {first}-{last} has {last - first + 1} ports; an ipyparallel "
                                     f"controller needs {PORTS_NEEDED}")
    return first, last


def resolve(v, inventory, fail, peer_vars=None) -> Cluster | None:
    """The cluster this host belongs to, or None (no `clusters_group`, or not in that group)."""
    group = v.clusters_group
    if not group:
        return None
    if inventory is None or group not in inventory.groups:
        known = ", ".join(sorted(inventory.groups)) if inventory else ""
        raise fail("clusters_group", f"no inventory group named {group!r} (groups: {known or 'none'})")
    members = tuple(inventory.group_hosts(group))
    if not members:
        raise fail("clusters_group", f"group {group!r} has no hosts")
    head = v.clusters_head or members[0]
    if head not in inventory.hosts:
        raise fail("clusters_head", f"no host named {head!r} in the inventory")
    if head not in members:
        raise fail("clusters_head", f"the head {head!r} is not in the cluster's group {group!r} "
                                    f"(members: {', '.join(members)})")
    first, last = parse_ports(v.clusters_ports, fail)
    if v.inventory_hostname not in members:
        return None
    # On AWS the inventory address is the public one; members must talk over the private network,
    # where the cluster's security group matches (fleet/aws/clusters.py): the aws inventory gives it.
    private = peer_vars(head).get("private_ip") if peer_vars else None
    address = v.clusters_address or private or inventory.hosts[head].address
    return Cluster(group, head, members, address, first, last)


def check_hosts(inventory, values: dict) -> list[InputError]:
    """Across hosts: a host may belong to one cluster only (it runs one set of engines)."""
    if inventory is None:
        return []
    used = {v.clusters_group for v in values.values() if v.get("clusters_group")}
    errors = []
    for name, v in values.items():
        inside = [g for g in sorted(used) if g in inventory.groups and name in inventory.group_hosts(g)]
        if len(inside) > 1:
            errors.append(InputError(f"host {name} is in the groups {' and '.join(inside)}, each a cluster's "
                                     f"clusters_group; a host can be in one cluster only",
                                     file=v.sources.get("clusters_group"), key="clusters_group"))
    return errors
