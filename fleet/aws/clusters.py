"""A cluster's own security group: its pinned ipyparallel ports open between its members only.

The course's group stays SSH-only. Each cluster (roles/clusters: `clusters_group`) gets a group
`jupyter-fleet-<course>-cluster-<name>` whose one ingress rule allows the controller's port range
from that same group; it is attached to the member instances and detached from every other course
instance. A machine outside the group, another course's or another cluster's, matches no rule.
Traffic must go over private addresses for a group rule to match: the aws inventory gives each
host its `private_ip`, which the clusters role uses as the head's address.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from fleet.aws.common import Instance, group_name, tag_spec
from fleet.errors import InputError


def cluster_group_name(course: str, cluster: str) -> str:
    return f"{group_name(course)}-cluster-{cluster}"


def _wanted(group_id: str, ports: tuple[int, int]) -> dict[str, Any]:
    return {"IpProtocol": "tcp", "FromPort": ports[0], "ToPort": ports[1],
            "UserIdGroupPairs": [{"GroupId": group_id, "Description": "jupyter-fleet cluster members"}]}


def _grants(permissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ingress grant split one per entry (AWS merges grants of one port range into one permission)."""
    grants = []
    for perm in permissions:
        base = {k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}
        for key in ("IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs"):
            # Whole entries, description included: moto matches a revoke on it (AWS ignores it).
            grants += [{**base, key: [entry]} for entry in perm.get(key, [])]
    return grants


def _is_wanted(grant: dict[str, Any], group_id: str, ports: tuple[int, int]) -> bool:
    return (grant.get("IpProtocol") == "tcp" and (grant.get("FromPort"), grant.get("ToPort")) == ports
            and [p.get("GroupId") for p in grant.get("UserIdGroupPairs", [])] == [group_id])


def vpc_of(ec2: Any, instance_id: str) -> str:
    """The VPC an instance is in: its cluster's group must be there too."""
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["VpcId"]


def ensure_cluster_group(ec2: Any, course: str, cluster: str, ports: tuple[int, int], vpc: str) -> str:
    """The cluster's group in `vpc` with exactly one rule: tcp `ports` from itself. Anything else is revoked."""
    name = cluster_group_name(course, cluster)
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
    if found:
        group_id, permissions = found[0]["GroupId"], found[0].get("IpPermissions", [])
    else:
        group_id = ec2.create_security_group(
            GroupName=name, VpcId=vpc, Description=f"Jupyter Fleet course {course}: cluster {cluster} members only",
            TagSpecifications=[tag_spec("security-group", course, **{"jupyter-fleet:cluster": cluster})])["GroupId"]
        permissions = []
    grants = _grants(permissions)
    extra = [g for g in grants if not _is_wanted(g, group_id, ports)]
    if extra:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=extra)
    if len(extra) == len(grants):
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[_wanted(group_id, ports)])
    return group_id


def attach(ec2: Any, group_id: str, instances: Iterable[Instance], members: Iterable[str]) -> dict[str, list[str]]:
    """Put the cluster's group on the member instances (by name) and take it off every other one.
    Returns {"attached": [...], "detached": [...]} instance names."""
    wanted = set(members)
    changed: dict[str, list[str]] = {"attached": [], "detached": []}
    for inst in instances:
        raw = ec2.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
        groups = [g["GroupId"] for g in raw.get("SecurityGroups", [])]
        if inst.name in wanted and group_id not in groups:
            ec2.modify_instance_attribute(InstanceId=inst.id, Groups=groups + [group_id])
            changed["attached"].append(inst.name)
        elif inst.name not in wanted and group_id in groups:
            ec2.modify_instance_attribute(InstanceId=inst.id, Groups=[g for g in groups if g != group_id])
            changed["detached"].append(inst.name)
    return changed


def open_cluster(course: str, cluster: str, members: list[str], ports: tuple[int, int],
                 region: str | None = None) -> tuple[str, dict[str, list[str]]]:
    """The cluster's group, ensured and put on exactly its member instances (by instance name)."""
    from fleet.aws.common import CloudError, ec2_session, explained_errors
    from fleet.aws.instances import course_instances

    if not members:
        raise CloudError(f"cluster {cluster}: no members given")
    instances = course_instances(course, region, states=("pending", "running", "stopping", "stopped"))
    _, ec2, name = ec2_session(region)
    with explained_errors(name):
        unknown = sorted(set(members) - {i.name for i in instances})
        if unknown:
            raise CloudError(f"no instance of course {course} named {', '.join(unknown)} "
                             f"(instances: {', '.join(i.name for i in instances) or 'none'})")
        member = next(i for i in instances if i.name in members)
        group_id = ensure_cluster_group(ec2, course, cluster, ports, vpc_of(ec2, member.id))
        return group_id, attach(ec2, group_id, instances, members)


def inventory_clusters(path: str | Path) -> dict[str, tuple[list[str], tuple[int, int]]]:
    """Every cluster a course inventory defines: {group: (its hosts, its port range)}, read as compile
    reads them (role defaults, then the inventory's layers), from the hosts that run the clusters role.
    Nothing is rendered: the course secret and students' keys are neither needed nor made."""
    from fleet.engine.roles import RoleSet
    from fleet.inventory import files as inventory_files
    from fleet.inventory.variables import inventory_layers, merge
    from roles.clusters.topology import parse_ports

    inventory = inventory_files.load(path)
    defaults = RoleSet().default_layers()
    found: dict[str, tuple[list[str], tuple[int, int]]] = {}
    for name, host in inventory.hosts.items():
        merged = merge(defaults + inventory_layers(inventory, host))
        roles, group = merged["roles"].value if "roles" in merged else [], merged["clusters_group"]
        if "clusters" not in (roles or []) or not group.value:
            continue
        if group.value not in inventory.groups:
            raise InputError(f"no inventory group named {group.value!r} (groups: {', '.join(inventory.groups) or 'none'})",
                             file=group.source, key="clusters_group")
        ports = merged["clusters_ports"]

        def fail(key: str, message: str, source: str = ports.source) -> InputError:
            return InputError(message, file=source, key=key)

        members = inventory.group_hosts(group.value)
        if name in members:
            found[group.value] = (members, parse_ports(ports.value, fail))
    return found
