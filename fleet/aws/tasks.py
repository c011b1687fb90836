"""Invoke tasks for the AWS side of a course: launch, status, stop, start, terminate, snapshot,
bake and images.

Thin wrappers over fleet.aws.cloud: they parse flags, print with rich, and turn a
CloudError into `Exit(message, 1)` so the user sees one line instead of a traceback.
Longer than 400 lines because every AWS command's flags and help live here, beside the rest
of the CLI's in tasks.py; issue 23's one description of each command's options is what would
fold them into the shared layers.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from invoke import Exit, task
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fleet.aws.common import Instance


class _LazyCloud:
    """fleet.aws.cloud on first use: boto3 costs ~0.15 s to import, and most commands never touch AWS."""

    def __getattr__(self, name: str):
        import fleet.aws.cloud

        return getattr(fleet.aws.cloud, name)


class _LazyImages:
    """fleet.aws.images (and boto3) on first use, like `cloud`."""

    def __getattr__(self, name: str):
        import fleet.aws.images

        return getattr(fleet.aws.images, name)


cloud = _LazyCloud()
images = _LazyImages()
DEFAULT_KEY_DIR = ".fleet/keys"  # the same as fleet.aws.cloud.DEFAULT_KEY_DIR


def _console() -> Console:
    # Made per call (not at import) so output goes to whatever stdout is current.
    return Console(highlight=False)


def _need(course: str | None) -> str:
    # --course has a None default (not a positional) so `invoke <task> --help` works.
    if not course:
        raise Exit("--course is required", 2)
    return course


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


@task(
    help={
        "course": "course name; used in tags, the key pair and the security group name",
        "count": "how many instances the course should have in total",
        "instance-type": "EC2 instance type (default g4dn.xlarge: one NVIDIA T4)",
        "region": "AWS region (default: from your AWS profile / AWS_DEFAULT_REGION)",
        "ami": "AMI id (default: the latest AWS Deep Learning Base AMI, Ubuntu 22.04)",
        "cidr": "address range allowed to SSH in (default: your public IP/32)",
        "wait-ssh": "wait until port 22 answers on every instance (default: yes)",
        "key-dir": "where the course private key lives (default .fleet/keys)",
        "image": "ID: boot from this course image; base: the base AMI (default: the newest image "
                 "matching the course's recipe, else the base AMI)",
        "inventory": "the course's recipe inventory (default inventory/<course>.yml)",
        "instance-profile": "attach this IAM instance profile (refused unless the course inventory sets "
                            "aws_allow_instance_profile: true: students can read its credentials)",
    }
)
def launch(c, course=None, count=None, instance_type="g4dn.xlarge", region=None, ami=None, cidr=None,
           wait_ssh=True, key_dir=DEFAULT_KEY_DIR, image=None, inventory=None, instance_profile=None):
    """Launch the missing instances of a course on EC2 (safe to re-run: never duplicates)."""
    course = _need(course)
    if count is None:
        raise Exit("--count is required (the total number of instances for the course)", 2)
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


@task(help={"course": "course name", "region": "AWS region (default: from your profile)"})
def status(c, course=None, region=None):
    """Show the course's instances with state, uptime and estimated cost."""
    course = _need(course)
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


def _power(action: str, doing: str, course: str | None, region: str | None, none_left: str) -> None:
    """stop or start: act on the course's managed instances and say which."""
    course = _need(course)
    try:
        acted = getattr(cloud, action)(course, region)
    except cloud.CloudError as exc:
        raise Exit(f"{action} failed: {exc}", 1) from None
    _console().print(f"{doing} {len(acted)}: " + (", ".join(i.name for i in acted) or none_left))


@task(help={"course": "course name", "region": "AWS region (default: from your profile)"})
def stop(c, course=None, region=None):
    """Stop the course's running instances (disks and data are kept; compute billing stops)."""
    _power("stop", "stopping", course, region, "nothing running")


@task(help={"course": "course name", "region": "AWS region (default: from your profile)"})
def start(c, course=None, region=None):
    """Start the course's stopped instances (public IPs change: re-snapshot afterwards)."""
    _power("start", "starting", course, region, "nothing stopped")


@task(help={"course": "course name", "region": "AWS region (default: from your profile)",
            "yes": "do not ask for confirmation",
            "images": "also deregister the course's images and delete their snapshots",
            "collect": "collect the students' work first (into collected/<course>/), then terminate",
            "discard-student-work": "terminate even though student work was not collected (it is lost)",
            "inventory": "how the instances are reached for the work check (default aws:COURSE; hosts are "
                         "matched by their instance_id variable, as `invoke snapshot` writes them)",
            "insecure-host-keys": "accept any host key (throwaway hosts)",
            "to": "with --collect: where the work goes (default collected/<course>/)"})
def terminate(c, course=None, region=None, yes=False, images_=False, collect=False, discard_student_work=False,
              inventory=None, insecure_host_keys=False, to=None):
    """Destroy the course's instances and their disks (asks first unless --yes); --images: its images too.
    Refused while a machine holds student work that changed since the last `invoke collect`."""
    course = _need(course)
    out = _console()
    try:
        targets = cloud.course_instances(course, region, builders=True)
        doomed = images.course_images(course, region) if images_ else []
    except cloud.CloudError as exc:
        raise Exit(f"terminate failed: {exc}", 1) from None
    if not targets and not doomed:
        out.print(f"course {course}: no instances to terminate" + (" and no images" if images_ else ""))
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


@task(help={"course": "course name", "out": "output file (default inventory/<course>-aws.yml)",
            "region": "AWS region (default: from your profile)", "user": "SSH login user",
            "key-dir": "where the course private key lives (default .fleet/keys)"})
def snapshot(c, course=None, out=None, region=None, user="ubuntu", key_dir=DEFAULT_KEY_DIR):
    """Write the course's running instances as a static YAML inventory file."""
    course = _need(course)
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


@task(help={"course": "course name",
            "builder": "take this running instance (name or id) as the builder instead of launching one; refused "
                       "if it was ever in a handout or has a student assigned; terminated afterwards",
            "inventory": "the course's recipe inventory (default inventory/<course>.yml)",
            "region": "AWS region (default: from your profile)", "user": "SSH login user",
            "key-dir": "where the course private key lives (default .fleet/keys)",
            "instance-type": "the builder's EC2 instance type (default g4dn.xlarge; the class's type)",
            "ami": "the base image the builder starts from (default: the latest Deep Learning Base AMI)",
            "cidr": "address range allowed to SSH in (default: your public IP/32)",
            "insecure-host-keys": "accept any host key and record none"})
def bake(c, course=None, builder=None, inventory=None, region=None, user="ubuntu", key_dir=DEFAULT_KEY_DIR,
         instance_type="g4dn.xlarge", ami=None, cidr=None, insecure_host_keys=False):
    """Make the course's image on a fresh builder: launch it from the base image, provision and verify it,
    prepare and image it, terminate it (never a class machine)."""
    from fleet.course.imaging import bake as baking
    from fleet.errors import FleetError, InputError

    course = _need(course)
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


@task(name="images", help={"course": "course name",
                           "inventory": "the course's recipe inventory (default inventory/<course>.yml)",
            "region": "AWS region (default: from your profile)",
            "prune": "deregister the images that do not match the current recipe and delete their snapshots"})
def images_(c, course=None, inventory=None, region=None, prune=False):
    """The course's images: id, date, recipe fingerprint, matches the current recipe, size, monthly cost."""
    course = _need(course)
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


@task(name="cluster_network", help={
    "course": "course name",
    "inventory": "the course's inventory, whose clusters_group names each cluster's group (default inventory/<course>.yml)",
    "cluster": "only this cluster (its group's name); default: every cluster the inventory defines",
    "members": "override: these instances by name, comma separated, instead of the group's hosts (needs --cluster)",
    "ports": "override: the port range FIRST-LAST instead of the inventory's clusters_ports",
    "region": "AWS region (default: from your profile)"})
def cluster_network(c, course=None, inventory=None, cluster=None, members=None, ports=None, region=None):
    """Open each cluster's pinned ports between its member instances only (a security group of its own)."""
    from fleet.aws.clusters import inventory_clusters, open_cluster
    from fleet.engine import recipe
    from fleet.errors import InputError

    course = _need(course)
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
