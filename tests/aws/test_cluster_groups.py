"""fleet.aws.clusters against moto's server over HTTP: a cluster's group opens the pinned
ipyparallel ports between that cluster's members only; the course's group stays SSH-only."""
from __future__ import annotations

from fleet.aws import cloud
from fleet.aws.clusters import attach, cluster_group_name, ensure_cluster_group, vpc_of
from tests.aws.test_cloud import CIDR, aws, ami, ingress, moto_url, simple_rules, up  # noqa: F401 (fixtures)

PORTS = (10101, 10120)


def group(ec2, course: str, cluster: str) -> dict:
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [cluster_group_name(course, cluster)]}])["SecurityGroups"]
    assert len(found) == 1
    return found[0]


def rules(ec2, course: str, cluster: str) -> list[tuple]:
    """Every grant on the cluster's group as (protocol, from, to, source)."""
    out = []
    for p in group(ec2, course, cluster)["IpPermissions"]:
        for pair in p.get("UserIdGroupPairs", []):
            out.append((p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), pair["GroupId"]))
        for r in p.get("IpRanges", []):
            out.append((p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r["CidrIp"]))
    return sorted(out)


def groups_of(ec2, instance_id: str) -> set[str]:
    raw = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {g["GroupId"] for g in raw["SecurityGroups"]}


def test_cluster_ports_open_between_members_only(aws, tmp_path, ami):  # noqa: F811
    launched = up("geo", 4, tmp_path, ami)
    course_group = launched.security_group_id
    instances = cloud.course_instances("geo")
    names = [i.name for i in instances]
    vpc = vpc_of(aws, instances[0].id)
    lab = ensure_cluster_group(aws, "geo", "lab", PORTS, vpc)
    other = ensure_cluster_group(aws, "geo", "other", PORTS, vpc)
    assert lab != other and course_group not in (lab, other)
    # Exactly one rule each: the pinned range, from that cluster's own group; no address range at all.
    assert rules(aws, "geo", "lab") == [("tcp", 10101, 10120, lab)]
    assert rules(aws, "geo", "other") == [("tcp", 10101, 10120, other)]
    assert simple_rules(ingress(aws, "geo")) == {("tcp", 22, 22, CIDR)}   # the course's group: SSH only

    assert attach(aws, lab, instances, names[:3]) == {"attached": names[:3], "detached": []}
    attach(aws, other, instances, names[3:])
    by_name = {i.name: i.id for i in instances}
    for name in names[:3]:
        assert groups_of(aws, by_name[name]) == {course_group, lab}
    assert groups_of(aws, by_name[names[3]]) == {course_group, other}
    assert attach(aws, lab, instances, names[:3]) == {"attached": [], "detached": []}   # a second run: nothing

    # A rule added by hand (the ports to the world, another group) is revoked; the wanted one stays.
    aws.authorize_security_group_ingress(GroupId=lab, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 10101, "ToPort": 10120, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 10101, "ToPort": 10120, "UserIdGroupPairs": [{"GroupId": other}]}])
    assert ensure_cluster_group(aws, "geo", "lab", PORTS, vpc) == lab
    assert rules(aws, "geo", "lab") == [("tcp", 10101, 10120, lab)]

    # A member taken out of the cluster loses the group; a changed range replaces the rule.
    assert attach(aws, lab, instances, names[:2]) == {"attached": [], "detached": [names[2]]}
    assert groups_of(aws, by_name[names[2]]) == {course_group}
    ensure_cluster_group(aws, "geo", "lab", (11000, 11019), vpc)
    assert rules(aws, "geo", "lab") == [("tcp", 11000, 11019, lab)]


def test_cluster_network_task(aws, tmp_path, ami, capsys):  # noqa: F811
    import pytest
    from invoke import Exit

    from fleet import commands

    up("geo", 2, tmp_path, ami)
    names = [i.name for i in cloud.course_instances("geo")]
    commands.run("cluster-network", course="geo", cluster="lab", members=",".join(names))
    out = " ".join(capsys.readouterr().out.split())   # rich wraps long lines
    assert "opens tcp 10101-10120 between its members only" in out and f"attached: {', '.join(names)}" in out
    with pytest.raises(Exit, match="no instance of course geo named nope"):
        commands.run("cluster-network", course="geo", cluster="lab", members="nope")
    with pytest.raises(Exit, match="--ports expects FIRST-LAST"):
        commands.run("cluster-network", course="geo", cluster="lab", members=names[0], ports="all")


def test_cluster_network_reads_the_clusters_from_the_inventory(aws, tmp_path, ami, capsys):  # noqa: F811
    """Members are the hosts of each clusters_group the real inventory file names, ports its clusters_ports."""
    import pytest
    import yaml
    from invoke import Exit

    from fleet import commands

    up("geo", 4, tmp_path, ami)
    instances = cloud.course_instances("geo")
    by_name = {i.name: i.id for i in instances}
    names = sorted(by_name)                               # geo-1 .. geo-4
    inventory = tmp_path / "geo.yml"
    inventory.write_text(yaml.safe_dump({
        "name": "geo",
        "vars": {"roles": ["jupyter", "clusters"], "course_user": "student"},
        "groups": {"lab": {"hosts": names[:3], "vars": {"clusters_group": "lab", "clusters_ports": "12000-12019"}},
                   "solo": {"hosts": names[3:]}},
        "hosts": {n: {"address": f"198.51.100.{i}", "user": "ubuntu"} for i, n in enumerate(names, 1)},
    }, sort_keys=False))
    commands.run("cluster-network", course="geo", inventory=str(inventory))
    out = " ".join(capsys.readouterr().out.split())
    assert f"attached: {', '.join(names[:3])}" in out and "opens tcp 12000-12019" in out, out
    lab = group(aws, "geo", "lab")["GroupId"]
    assert rules(aws, "geo", "lab") == [("tcp", 12000, 12019, lab)]
    assert [n for n in names if lab in groups_of(aws, by_name[n])] == names[:3]

    # A host taken out of the group in the inventory loses the cluster's group on the next run.
    data = yaml.safe_load(inventory.read_text())
    data["groups"]["lab"]["hosts"] = names[:2]
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    commands.run("cluster-network", course="geo", inventory=str(inventory), cluster="lab")
    assert f"detached: {names[2]}" in " ".join(capsys.readouterr().out.split())
    assert [n for n in names if lab in groups_of(aws, by_name[n])] == names[:2]

    # Bad input: refused with the file and key named, nothing touched.
    for broken, fragment in (({"clusters_group": "nope"}, "no inventory group named 'nope'"),
                             ({"clusters_group": "lab", "clusters_ports": "12000-12005"}, "has 6 ports")):
        data["groups"]["lab"]["vars"] = broken
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.raises(Exit, match=fragment) as raised:
            commands.run("cluster-network", course="geo", inventory=str(inventory))
        assert str(inventory) in str(raised.value) and "clusters_" in str(raised.value)
    assert [n for n in names if lab in groups_of(aws, by_name[n])] == names[:2]
    with pytest.raises(Exit, match="defines no cluster 'other'"):
        data["groups"]["lab"]["vars"] = {"clusters_group": "lab"}
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        commands.run("cluster-network", course="geo", inventory=str(inventory), cluster="other")
