"""The course's security group: SSH from the instructor's address only, nothing else open."""
from __future__ import annotations

from typing import Any

from fleet.aws.common import CloudError, group_name, tag_spec

# ------------------------------------------------------------- security group


def _default_vpc(ec2: Any) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudError(
            "this region has no default VPC; create one (`aws ec2 create-default-vpc`) "
            "or use another region"
        )
    return vpcs[0]["VpcId"]


def _unwanted_permissions(permissions: list[dict[str, Any]], cidr: str) -> list[dict[str, Any]]:
    """Every ingress grant except 'tcp 22 from cidr', split one grant per entry for revoke."""
    extra: list[dict[str, Any]] = []
    for perm in permissions:
        base: dict[str, Any] = {k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}
        is_ssh = perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22
        for rng in perm.get("IpRanges", []):
            if not (is_ssh and rng.get("CidrIp") == cidr):
                extra.append({**base, "IpRanges": [{"CidrIp": rng["CidrIp"]}]})
        for rng in perm.get("Ipv6Ranges", []):
            if not (is_ssh and rng.get("CidrIpv6") == cidr):
                extra.append({**base, "Ipv6Ranges": [{"CidrIpv6": rng["CidrIpv6"]}]})
        for pair in perm.get("UserIdGroupPairs", []):
            extra.append({**base, "UserIdGroupPairs": [{"GroupId": pair["GroupId"]}]})
        for pl in perm.get("PrefixListIds", []):
            extra.append({**base, "PrefixListIds": [{"PrefixListId": pl["PrefixListId"]}]})
    return extra


def _has_ssh_rule(permissions: list[dict[str, Any]], cidr: str) -> bool:
    key = "Ipv6Ranges" if ":" in cidr else "IpRanges"
    field_ = "CidrIpv6" if ":" in cidr else "CidrIp"
    return any(
        p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22 and p.get("ToPort") == 22
        and any(r.get(field_) == cidr for r in p.get(key, []))
        for p in permissions
    )


def ensure_security_group(ec2: Any, course: str, cidr: str) -> str:
    """Group `jupyter-fleet-<course>` allowing exactly tcp/22 from `cidr`; returns its id.

    Jupyter itself is never opened: users reach it through an SSH tunnel. Anything
    else found on the group (added by hand, or an old CIDR) is revoked.
    """
    name = group_name(course)
    vpc = _default_vpc(ec2)
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if groups:
        group_id = groups[0]["GroupId"]
        permissions = groups[0].get("IpPermissions", [])
    else:
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=f"Jupyter Fleet course {course}: SSH only",
            VpcId=vpc,
            TagSpecifications=[tag_spec("security-group", course)],
        )["GroupId"]
        permissions = []
    extra = _unwanted_permissions(permissions, cidr)
    if extra:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=extra)
    if not _has_ssh_rule(permissions, cidr):
        rng = ({"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": "jupyter-fleet ssh"}]}
               if ":" in cidr else {"IpRanges": [{"CidrIp": cidr, "Description": "jupyter-fleet ssh"}]})
        ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **rng}]
        )
    return group_id
