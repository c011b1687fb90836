"""Invoke tasks for the AWS side of a course: launch, status, stop, start, terminate, snapshot.

Thin wrappers over fleet.cloud: they parse flags, print with rich, and turn a
CloudError into `Exit(message, 1)` so the user sees one line instead of a traceback.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from invoke import Exit, task
from rich.console import Console
from rich.table import Table



class _LazyCloud:
    """fleet.cloud on first use: boto3 costs ~0.15 s to import, and most commands never touch AWS."""

    def __getattr__(self, name: str):
        import fleet.cloud

        return getattr(fleet.cloud, name)


cloud = _LazyCloud()
DEFAULT_KEY_DIR = ".fleet/keys"  # the same as fleet.cloud.DEFAULT_KEY_DIR


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


def _instances_table(title: str, instances: list[cloud.Instance]) -> Table:
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
    }
)
def launch(c, course=None, count=None, instance_type="g4dn.xlarge", region=None, ami=None, cidr=None,
           wait_ssh=True, key_dir=DEFAULT_KEY_DIR):
    """Launch the missing instances of a course on EC2 (safe to re-run: never duplicates)."""
    course = _need(course)
    if count is None:
        raise Exit("--count is required (the total number of instances for the course)", 2)
    try:
        wanted = int(count)
    except ValueError:
        raise Exit(f"--count must be a whole number, not {count!r}", 2) from None
    out = _console()
    try:
        result = cloud.launch(course, wanted, instance_type=instance_type, region=region, ami=ami,
                              cidr=cidr, key_dir=Path(key_dir), wait_ssh=wait_ssh)
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
            "yes": "do not ask for confirmation"})
def terminate(c, course=None, region=None, yes=False):
    """Destroy the course's instances and their disks (asks first unless --yes)."""
    course = _need(course)
    out = _console()
    try:
        targets = cloud.course_instances(course, region)
    except cloud.CloudError as exc:
        raise Exit(f"terminate failed: {exc}", 1) from None
    if not targets:
        out.print(f"course {course}: no instances to terminate")
        return
    out.print(_instances_table(f"will terminate (disks deleted) - course {course}", targets))
    if not yes:
        try:
            answer = input(f"Type the course name ({course}) to terminate {len(targets)} instances: ")
        except EOFError:
            # No terminal to ask (piped/CI): refusing is the only safe answer.
            raise Exit("no confirmation (stdin closed): nothing terminated; pass --yes to skip the question", 1) from None
        if answer.strip() != course:
            raise Exit("not confirmed: nothing terminated", 1)
    try:
        acted = cloud.terminate(course, region)
    except cloud.CloudError as exc:
        raise Exit(f"terminate failed: {exc}", 1) from None
    out.print(f"terminating {len(acted)}: " + ", ".join(i.name for i in acted))
    out.print(f"kept for re-use: key pair and security group {cloud.group_name(course)}")


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
