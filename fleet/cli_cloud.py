"""The AWS commands' printing and exit codes (their options are described in fleet/commands/cloud.py; the
work is in fleet.aws, whose face is fleet/aws/cloud.py, and in fleet.course for bake and student work).

Each turns a CloudError into `Exit(message, 1)`, so the user sees one line instead of a traceback.
Imported only when an AWS command runs: boto3 costs ~0.15 s to import, and most commands never touch AWS.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from invoke import Exit
from rich.console import Console
from rich.table import Table

from fleet.aws import cloud, images
from fleet.aws.common import Instance


def _console() -> Console:
    # Made per call (not at import) so output goes to whatever stdout is current.
    return Console(highlight=False)


def _money(value: float | None, digits: int = 2) -> str:
    return "unknown" if value is None else f"${value:,.{digits}f}"


def _uptime(value: timedelta | None) -> str:
    if value is None:
        return "-"
    minutes = int(value.total_seconds() // 60)
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    return (f"{days}d " if days else "") + f"{hours}h{minutes:02d}m"


def _instances_table(title: str, instances: list[Instance]) -> Table:
    table = Table(title=title)
    for col in ("Name", "Instance", "State", "Type", "GPU", "Public IP"):
        table.add_column(col)
    for i in instances:
        table.add_row(i.name, i.id, i.state, i.type, "yes" if i.gpu else "no", i.public_ip or "-")
    return table


def launch(course: str, count: str, instance_type: str, region: str | None, ami: str | None, cidr: str | None,
           wait_ssh: bool, key_dir: str, image: str | None, inventory: str | None, instance_profile: str | None) -> None:
    """`invoke launch`."""
    try:
        wanted = int(count)
    except ValueError:
        raise Exit(f"--count must be a whole number, not {count!r}", 2) from None
    out = _console()
    if ami and image:
        raise Exit("--ami and --image both choose what to boot: pass one", 1)
    try:
        profile = _profile(course, inventory, instance_profile)   # refused here, before any AWS call
        if not ami:
            choice = images.choose(course, _fingerprints(course, inventory), image, region)
            ami = choice.ami
            out.print(f"boot from: {choice.message}")
        result = cloud.launch(course, wanted, instance_type=instance_type, region=region, ami=ami,
                              cidr=cidr, key_dir=Path(key_dir), wait_ssh=wait_ssh, profile=profile)
    except cloud.CloudError as exc:
        raise Exit(f"launch failed: {exc}", 1) from None
    out.print(f"region {result.region}; key pair {result.key_name} ({result.key_action}), "
              f"private key {result.key_file}")
    out.print(f"security group {result.security_group_id}: tcp/22 from {result.cidr} only")
    if result.ami:
        out.print(f"AMI {result.ami}")
    out.print(f"launched {len(result.launched)}, already there {len(result.existing)}")
    for note in result.notes:
        out.print(f"note: {note}")
    out.print(_instances_table(f"course {course}", result.instances))
    out.print(f"next: invoke provision --inventory aws:{course}")


def status(course: str, region: str | None) -> None:
    """`invoke status`."""
    try:
        rows = cloud.status(course, region)
    except cloud.CloudError as exc:
        raise Exit(f"status failed: {exc}", 1) from None
    prices = cloud.load_prices()
    table = Table(title=f"course {course}",
                  caption=f"on-demand {prices.region} Linux prices as of {prices.date}; "
                          "cost is for the current run (since the last start), EBS excluded")
    for col in ("Name", "Instance", "State", "Type", "Uptime"):
        table.add_column(col)
    table.add_column("$/hour", justify="right")
    table.add_column("Cost so far", justify="right")
    for r in rows:
        # A stopped instance accrues nothing now; earlier runs are not tracked: show "-".
        spent_now = _money(r.cost_usd) if r.state in ("pending", "running") else "-"
        table.add_row(r.name, r.instance_id, r.state, r.type, _uptime(r.uptime),
                      _money(r.hourly_usd, 3), spent_now)
    hourly = sum(r.hourly_usd or 0.0 for r in rows)
    spent = sum(r.cost_usd or 0.0 for r in rows)
    unknown = sum(1 for r in rows if r.cost_usd is None or r.hourly_usd is None)
    suffix = f" + {unknown} unknown" if unknown else ""
    running = sum(1 for r in rows if r.state in ("pending", "running"))
    table.add_section()
    table.add_row("total", f"{len(rows)} instances", f"{running} running", "", "",
                  _money(hourly, 3) + suffix, _money(spent) + suffix)
    _console().print(table)
    try:
        kept = images.course_images(course, region)
    except cloud.CloudError as exc:
        raise Exit(f"status failed: {exc}", 1) from None
    size = sum(i.size_gib for i in kept)
    _console().print(f"images: {len(kept)}, snapshots {size} GiB, storage "
                     f"{_money(images.monthly_cost(kept))}/month (`invoke images --course {course}`)")


def _power(action: str, doing: str, course: str, region: str | None, none_left: str) -> None:
    """stop or start: act on the course's managed instances and say which."""
    try:
        acted = getattr(cloud, action)(course, region)
    except cloud.CloudError as exc:
        raise Exit(f"{action} failed: {exc}", 1) from None
    _console().print(f"{doing} {len(acted)}: " + (", ".join(i.name for i in acted) or none_left))


def stop(course: str, region: str | None) -> None:
    """`invoke stop`."""
    _power("stop", "stopping", course, region, "nothing running")


def start(course: str, region: str | None) -> None:
    """`invoke start`."""
    _power("start", "starting", course, region, "nothing stopped")


def terminate(course: str, region: str | None, yes: bool, with_images: bool, collect: bool, discard_student_work: bool,
              inventory: str | None, insecure_host_keys: bool, to: str | None) -> None:
    """`invoke terminate`."""
    out = _console()
    try:
        targets = cloud.course_instances(course, region, builders=True)
        doomed = images.course_images(course, region) if with_images else []
    except cloud.CloudError as exc:
        raise Exit(f"terminate failed: {exc}", 1) from None
    if not targets and not doomed:
        out.print(f"course {course}: no instances to terminate" + (" and no images" if with_images else ""))
        return
    if targets:
        _work_guard(course, targets, inventory, collect, discard_student_work, insecure_host_keys, out, to)
    if doomed:
        out.print(f"will deregister {len(doomed)} images and delete their snapshots: "
                  + ", ".join(i.id for i in doomed))
    out.print(_instances_table(f"will terminate (disks deleted) - course {course}", targets))
    if not yes:
        try:
            answer = input(f"Type the course name ({course}) to terminate {len(targets)} instances"
                           + (f" and {len(doomed)} images" if doomed else "") + ": ")
        except EOFError:
            # No terminal to ask (piped/CI): refusing is the only safe answer.
            raise Exit("no confirmation (stdin closed): nothing terminated; pass --yes to skip the question", 1) from None
        if answer.strip() != course:
            raise Exit("not confirmed: nothing terminated", 1)
    try:
        acted = cloud.terminate(course, region) if targets else []
        removed = images.delete(doomed, region) if doomed else []
    except cloud.CloudError as exc:
        raise Exit(f"terminate failed: {exc}", 1) from None
    if targets:
        out.print(f"terminating {len(acted)}: " + ", ".join(i.name for i in acted))
    if removed:
        out.print(f"deregistered {len(removed)} images, deleted "
                  f"{sum(len(i.snapshots) for i in removed)} snapshots")
    out.print(f"kept for re-use: key pair and security group {cloud.group_name(course)}")


def _work_guard(course: str, targets: list, inventory: str | None, collect: bool, discard: bool,
                insecure_host_keys: bool, out: Console, to: str | None = None) -> None:
    """Student work on the doomed disks: collected, or explicitly given up; else exit 1."""
    from fleet.course.coursework.commands import guard_instances
    from fleet.errors import FleetError, InputError

    try:
        go = guard_instances(course, targets, inventory, collect_first=collect, discard=discard,
                             insecure_host_keys=insecure_host_keys, out=out, to=to)
    except (InputError, FleetError, cloud.CloudError) as exc:
        raise Exit(f"error: {exc}; nothing terminated", 1) from None
    if not go:
        raise Exit("nothing terminated", 1)


def snapshot(course: str, out: str | None, region: str | None, user: str, key_dir: str) -> None:
    """`invoke snapshot`."""
    path = Path(out) if out else Path("inventory") / f"{course}-aws.yml"
    try:
        written = cloud.write_snapshot(course, path, region, user=user, key_dir=key_dir)
    except cloud.CloudError as exc:
        raise Exit(f"snapshot failed: {exc}", 1) from None
    hosts = len(yaml.safe_load(written.read_text()).get("hosts") or {})
    _console().print(f"wrote {written} ({hosts} running hosts)")
    if not hosts:
        _console().print("note: no running instances; `invoke status` shows stopped ones")


def _profile(course: str, inventory: str | None, cli_name: str | None):
    """The instance profile the course asks for (fleet.aws.profile), checked."""
    from fleet.aws import profile
    from fleet.engine import recipe
    from fleet.errors import InputError

    try:
        return profile.check(profile.from_inventory(recipe.inventory_path(course, inventory), cli_name))
    except InputError as exc:
        raise Exit(f"error: {exc}", 1) from None


def _fingerprints(course: str, inventory: str | None) -> set[str] | None:
    """The current recipe's fingerprint, or None when the course has no recipe inventory."""
    from fleet.engine import recipe
    from fleet.errors import InputError

    try:
        found = recipe.for_course(course, inventory)
    except InputError as exc:
        raise Exit(f"error: {exc}", 1) from None
    return None if found is None else {found.fingerprint}


def bake(course: str, builder: str | None, inventory: str | None, region: str | None, user: str, key_dir: str,
         instance_type: str, ami: str | None, cidr: str | None, insecure_host_keys: bool) -> None:
    """`invoke bake`."""
    from fleet.course.imaging import bake as baking
    from fleet.errors import FleetError, InputError

    try:
        result = baking.bake(course, builder, inventory, region, key_dir=key_dir, user=user,
                             insecure_host_keys=insecure_host_keys, instance_type=instance_type, ami=ami, cidr=cidr)
    except InputError as exc:
        raise Exit(f"error: {exc}", 1) from None
    except (FleetError, cloud.CloudError) as exc:
        raise Exit(f"bake refused: {exc}", 2) from None
    out = _console()
    out.print(f"builder {result.instance.name} ({result.instance.id}, "
              f"{'launched from the base image' if result.launched else 'taken'}) prepared for imaging: removed "
              + ", ".join(result.removed))
    out.print(f"image {result.image.id} ({result.image.size_gib} GiB, recipe {result.image.fingerprint}, "
              f"roles {result.image.roles}) is {result.image.state}")
    out.print(f"builder {result.instance.id} terminated; next: invoke launch --course {course} --count N")


def list_images(course: str, inventory: str | None, region: str | None, prune: bool) -> None:
    """`invoke images`."""
    wanted = _fingerprints(course, inventory)
    out = _console()
    try:
        found = images.course_images(course, region)
        if prune:
            if wanted is None:
                raise Exit(f"--prune needs the course's recipe: pass --inventory (or add inventory/{course}.yml)", 1)
            gone = images.delete([i for i in found if i.fingerprint not in wanted], region)
            out.print(f"pruned {len(gone)} stale images: " + (", ".join(i.id for i in gone) or "none"))
            found = [i for i in found if i not in gone]
    except cloud.CloudError as exc:
        raise Exit(f"images failed: {exc}", 1) from None
    price = images.snapshot_price()
    table = Table(title=f"course {course} images",
                  caption=f"snapshot storage at ${price}/GiB-month (volume size: an upper bound)")
    for col in ("Image", "Created", "Recipe", "Matches", "State", "Snapshots"):
        table.add_column(col)
    table.add_column("Size", justify="right")
    table.add_column("$/month", justify="right")
    for i in found:
        matches = "?" if wanted is None else ("yes" if i.fingerprint in wanted else "stale")
        created = i.created.strftime("%Y-%m-%d %H:%M") if i.created else "-"
        table.add_row(i.id, created, i.fingerprint or "-", matches, i.state, ", ".join(i.snapshots) or "-",
                      f"{i.size_gib} GiB", _money(i.size_gib * price))
    table.add_section()
    table.add_row("total", f"{len(found)} images", "", "", "", "", f"{sum(i.size_gib for i in found)} GiB",
                  _money(images.monthly_cost(found)))
    out.print(table)


def cluster_network(course: str, inventory: str | None, cluster: str | None, members: str | None, ports: str | None,
                    region: str | None) -> None:
    """`invoke cluster-network`."""
    from fleet.aws.clusters import inventory_clusters, open_cluster
    from fleet.engine import recipe
    from fleet.errors import InputError

    try:
        override = _port_range(ports) if ports else None
        if members:
            if not cluster:
                raise Exit("error: --members needs --cluster", 1)
            wanted = {cluster: ([m.strip() for m in members.split(",") if m.strip()], override or (10101, 10120))}
        else:
            path = recipe.inventory_path(course, inventory)
            if path is None:
                raise Exit(f"error: no inventory/{course}.yml: pass --inventory (or --cluster and --members)", 1)
            found = inventory_clusters(path)
            if cluster and cluster not in found:
                raise Exit(f"error: {path} defines no cluster {cluster!r} (clusters_group of hosts with the clusters "
                           f"role: {', '.join(found) or 'none'})", 1)
            if not found:
                raise Exit(f"error: {path} defines no cluster (no host with the clusters role sets clusters_group)", 1)
            wanted = {name: (hosts, override or range_) for name, (hosts, range_) in found.items()
                      if not cluster or name == cluster}
    except InputError as exc:
        raise Exit(f"error: {exc}", 1) from None
    for name, (hosts, (first, last)) in wanted.items():
        try:
            group_id, changed = open_cluster(course, name, hosts, (first, last), region)
        except cloud.CloudError as exc:
            raise Exit(f"cluster-network failed: {exc}", 1) from None
        _console().print(f"cluster {name}: group {group_id} opens tcp {first}-{last} between its members only "
                         f"({', '.join(hosts)}); attached: {', '.join(changed['attached']) or 'none'}; "
                         f"detached: {', '.join(changed['detached']) or 'none'}")


def _port_range(text: str) -> tuple[int, int]:
    from fleet.errors import InputError
    from roles.clusters.topology import parse_ports

    try:
        return parse_ports(text, lambda key, message: InputError(message, key="--ports"))
    except InputError:
        raise Exit(f"error: --ports expects FIRST-LAST, got {text!r}", 1) from None
