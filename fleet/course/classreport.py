"""`invoke report`: a class at a glance, as one self-contained HTML page (inline style, no script,
nothing fetched when it is opened).

A fresh check run over the fleet (or a `--json` run file) gives each host's status and the
drift groups; one more probe per host reads what the server shows: Jupyter answering, the
kernels it lists, the autostop timer and its last decision, GPUs and the installed MXNet. The
state folder adds each host's last provision; for `aws:COURSE` inventories, EC2 adds the
instance state and the cost so far. Every value passes through the run's secret masker; the
page holds tokens only with `--with-urls` (then it is written 0600, like the handout).
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from rich.console import Console

from fleet.course import classreport_jupyter
from fleet.course.coursework.store import human_bytes, last_collects
from fleet.course.coursework.targets import work_roots
from fleet.engine import history
from fleet.engine.drift import compact
from fleet.engine.drift import groups as drift_groups
from fleet.engine.facts import Fact
from fleet.engine.roles import PROJECT
from fleet.engine.steps import read_as
from fleet.errors import InputError
from fleet.shell import q
from roles import autostop
from roles.jupyter import local_address
from roles.mxnet.gpu import GPU_FACT, choose_mxnet_build, gpu_table_rows

TEMPLATE = "class_report.html.j2"
STATUSES = ("ok", "changed", "drift", "failed", "unreachable", "interrupted", "skipped", "not in run")


# ---------------------------------------------------------------- facts (read-only, one probe)

def _jupyter_command(address: str, port: int, token: str) -> str:
    """fleet/course/classreport_jupyter.py and a call of its main: the program and the token reach
    python on stdin, never in arguments."""
    program = (Path(classreport_jupyter.__file__).read_text()
               + f"\nmain({json.dumps(f'http://{address}:{port}')}, {json.dumps(token)})\n")
    return f"python3 -I - <<'__FLEET_PY__'\n{program}\n__FLEET_PY__"


def jupyter_fact(address: str, port: int, token: str) -> Fact:
    return Fact("report:jupyter", _jupyter_command(address, port, token), _parse_json)


AUTOSTOP_FACT = Fact(
    "report:autostop",
    f"systemctl show -p LoadState -p UnitFileState -p ActiveState {autostop.UNIT}.timer 2>/dev/null; "
    f"echo ---; cat {autostop.STATE_FILE} 2>/dev/null; true",
    lambda text: _parse_autostop(text),
)


def work_fact(user: str, roots: list[str]) -> Fact:
    """Files and bytes of the student's work folder, read as the course user (find never follows
    a link); relative roots are relative to that user's home."""
    command = (f"cd \"$(getent passwd {q(user)} | cut -d: -f6)\" 2>/dev/null && find {' '.join(q(r) for r in roots)} "
               "-type f -printf '%s\\n' 2>/dev/null | awk '{n++; s+=$1} END {print n+0, s+0}'")
    return Fact("report:work", read_as(user, command), lambda text: _parse_work(text))


def _parse_work(text: str) -> tuple[int, int] | None:
    fields = text.split()
    return (int(fields[-2]), int(fields[-1])) if len(fields) >= 2 and fields[-2].isdigit() and fields[-1].isdigit() else None


def mxnet_fact(venv: str) -> Fact:
    # a venv's *.dist-info names say what is installed without starting Python
    return Fact("report:mxnet", f"ls -d {q(venv)}/lib/python3*/site-packages/mxnet*.dist-info 2>/dev/null; true",
                lambda text: _parse_mxnet(text))


def _parse_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"answering": False, "error": text.strip()[-200:] or "no answer"}


def _parse_autostop(text: str) -> dict[str, Any]:
    unit, _, state = text.partition("---")
    props = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    try:
        last = json.loads(state) if state.strip() else None
    except ValueError:
        last = None
    return {"load": props.get("LoadState", ""), "enabled": props.get("UnitFileState", ""),
            "active": props.get("ActiveState", ""), "last": last}


_DIST = re.compile(r"(mxnet(?:[_-]cu\d+)?)-([^/]+)\.dist-info$")


def _parse_mxnet(text: str) -> str | None:
    for line in text.splitlines():
        found = _DIST.search(line.strip())
        if found:
            return f"{found.group(1).replace('_', '-')} {found.group(2)}"
    return None


# ---------------------------------------------------------------- the page's data

@dataclass
class Row:
    host: str
    address: str
    status: str
    error: str | None
    changes: int
    roles: list[str]
    last_provision: dict[str, Any] | None
    student: str = "-"
    work: str = "-"
    collected: str | None = None
    jupyter: str = "-"
    jupyter_ok: bool | None = None
    kernels: list[str] = field(default_factory=list)
    gpu: str = "-"
    mxnet: str = "-"
    autostop: str = "-"
    instance: str | None = None
    cost: str | None = None
    tunnel: str | None = None
    url: str | None = None


def autostop_text(found: dict[str, Any] | None, wanted: bool) -> str:
    if not found or found.get("load") in ("", "not-found"):
        return "not installed" if wanted else "-"
    timer = "timer on" if found.get("active") == "active" else f"timer {found.get('active') or 'off'}"
    text = f"{found.get('enabled') or '?'}, {timer}"
    last = found.get("last")
    if isinstance(last, dict) and last.get("checked_at"):
        text += f"; {'idle' if last.get('idle') else 'busy'} at {last['checked_at'][:19]}Z: {last.get('reason', '')}"
    return text


def jupyter_text(found: dict[str, Any] | None) -> tuple[str, bool | None, list[str]]:
    if not found:
        return "-", None, []
    kernels = [f"{display} ({name})" for name, display in found.get("kernels", [])]
    if not found.get("answering"):
        return f"not answering ({found.get('error', 'no answer')})", False, kernels
    text = f"answering, server {found.get('version') or '?'}"
    if found.get("error"):
        text += f"; kernels not listed: {found['error']}"
    return text, True, kernels


def gpu_text(name: str, gpu, v: dict[str, Any]) -> tuple[str, str]:
    """The GPU cell ("2 x Tesla V100 (cc 7.0)") and which MXNet wheel the host's GPUs can run."""
    choice = choose_mxnet_build(gpu, prefer=v.get("mxnet_build", "auto"), cuda=v.get("mxnet_cuda") or None,
                                allow_cpu_fallback=bool(v.get("mxnet_allow_cpu_fallback")))
    table = gpu_table_rows({name: (gpu, choice)})[0]
    cell = table["gpu"] if not gpu.gpus else f"{table['count']} x {table['gpu']} (cc {table['compute_cap']})"
    return cell, (f"fits: {choice.spec}" if choice.ok else f"refused: {choice.reason}")


def aws_columns(rows: list, ids: dict[str, str]) -> dict[str, tuple[str, str]]:
    """host -> (instance state and type, cost so far), matched by the inventory's instance_id."""
    by_id = {row.instance_id: row for row in rows}
    out = {}
    for host, instance_id in ids.items():
        row = by_id.get(instance_id)
        if row is None:
            out[host] = (f"{instance_id}: not found", "-")
            continue
        cost = "price unknown" if row.cost_usd is None else f"${row.cost_usd:.2f}"
        if row.hourly_usd is not None:
            cost += f" (${row.hourly_usd:.3f}/h)"
        out[host] = (f"{row.state} {row.type}", cost)
    return out


def summary(rows: list[Row], groups: list[dict], total_cost: float | None) -> dict[str, Any]:
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    probed = [r for r in rows if r.jupyter_ok is not None]
    return {"hosts": len(rows), "counts": {s: n for s, n in counts.items() if n},
            "answering": sum(1 for r in probed if r.jupyter_ok), "probed": len(probed),
            "groups": len(groups), "drifted": sum(len(g["hosts"]) for g in groups if g["status"] == "drift"),
            "cost": None if total_cost is None else f"${total_cost:.2f}"}


def _masked(value: Any, mask) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    if isinstance(value, tuple):
        return tuple(_masked(v, mask) for v in value)
    if isinstance(value, dict):
        return {k: _masked(v, mask) for k, v in value.items()}
    return value


def render(context: dict[str, Any], templates: Path = PROJECT / "templates") -> str:
    env = Environment(loader=FileSystemLoader(str(templates)), undefined=StrictUndefined,
                      autoescape=select_autoescape(default=True, default_for_string=True), keep_trailing_newline=True)
    env.filters["when"] = _when
    return env.get_template(TEMPLATE).render(**context)


def _when(stamp: str) -> str:
    """2026-12-02T13:10:00+00:00 -> 2026-12-02 13:10:00 UTC (stamps are written in UTC)."""
    try:
        moment = datetime.fromisoformat(stamp).astimezone(timezone.utc)
    except (TypeError, ValueError):
        return str(stamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def write_page(path: Path, html: str, private: bool) -> None:
    """Whole or not at all; 0600 when it holds tokens."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(html)
    os.chmod(tmp, 0o600 if private else 0o644)   # umask must not widen or narrow it
    os.replace(tmp, path)


def load_run(path: str) -> dict[str, Any]:
    """A `provision`/`check` --json file, checked enough to name what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", key="--json") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})", key="--json") from None
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict) or not all(isinstance(h, dict) and "status" in h for h in hosts.values()):
        raise InputError(f"{path}: expected the JSON report of `invoke provision` or `invoke check` "
                         "(an object whose 'hosts' maps each host to a result with a 'status')", key="--json")
    return data


# ---------------------------------------------------------------- the command

def build(hosts: str, inventory: str | None, output: str, json_path: str | None = None, with_urls: bool = False,
          insecure_host_keys: bool = False, now: datetime | None = None) -> dict[str, Any]:
    """Probe, render, write; returns the page's summary (what the CLI prints)."""
    from fleet import app
    from fleet.engine.hostfacts import gather

    out_path = Path(output)
    if not out_path.parent.is_dir():
        raise InputError(f"no such folder: {out_path.parent}", key="--output")
    session = app.Session.open(inventory)
    names = session.select(hosts)
    run = load_run(json_path) if json_path else None
    values = {n: session.values(n) for n in names}
    if run is None:
        quiet = Console(file=io.StringIO(), width=200)
        run = app.provision(hosts=",".join(names), inventory=inventory, check=True, diff=True,
                            insecure_host_keys=insecure_host_keys, out=quiet).to_json()
    mask = session.masker
    run_hosts = {n: run["hosts"][n] for n in names if n in run["hosts"]}
    groups = drift_groups(run_hosts)

    def facts_for(host) -> list[Fact]:
        v = values[host.name]
        address = local_address(v.get("jupyter_ip"))
        return [jupyter_fact(address, int(v.get("jupyter_port", 8888)), str(v.get("jupyter_token", ""))),
                AUTOSTOP_FACT, mxnet_fact(v.get("jupyter_venv", "/opt/jupyter")), GPU_FACT,
                work_fact(str(v.get("course_user")), work_roots(v, session.inventory.source))]

    reachable = [n for n in names if run_hosts.get(n, {}).get("status") != "unreachable"]
    found = gather([session.inventory.hosts[n] for n in reachable], facts_for,
                   app.connect_options(insecure_host_keys)) if reachable else {}
    last = history.last(session.inventory.source)
    collected = last_collects(session.inventory.name)
    aws, total_cost, aws_error = _aws(session.inventory.source, values)

    rows = []
    for name in names:
        v, result, host = values[name], run_hosts.get(name), session.inventory.hosts[name]
        facts = found.get(name)
        row = Row(name, host.address, result["status"] if result else "not in run",
                  (result or {}).get("error"), sum(1 for s in (result or {}).get("steps", [])
                                                  if s["status"] in ("changed", "would change")),
                  list(v.get("roles") or []), last.get(name))
        if isinstance(facts, str):
            row.jupyter = f"not probed: {facts}"
        elif isinstance(facts, dict):
            row.jupyter, row.jupyter_ok, row.kernels = jupyter_text(facts.get("report:jupyter"))
            if not row.jupyter_ok and "jupyter" not in row.roles:
                row.jupyter, row.jupyter_ok = "-", None   # not one of its roles: nothing to miss
            row.autostop = autostop_text(facts.get("report:autostop"), "autostop" in row.roles)
            row.mxnet = facts.get("report:mxnet") or ("not installed" if "mxnet" in row.roles else "-")
            if facts.get(GPU_FACT.key) is not None:
                row.gpu, fits = gpu_text(name, facts[GPU_FACT.key], v)
                if "mxnet" in row.roles:
                    row.mxnet += f"; {fits}"
        row.student = str(v.get("student") or name)
        row.collected = (collected.get(name) or {}).get("time")
        if isinstance(facts, dict):
            work = facts.get("report:work")
            row.work = "-" if work is None else f"{work[0]} files, {human_bytes(work[1])}"
        if name in aws:
            row.instance, row.cost = aws[name]
        rows.append(row)

    rows = [Row(**_masked(vars(r), mask)) for r in rows]
    if with_urls:   # the one place tokens go on the page, as `handout` shows them
        from fleet.course.access import access

        for row in rows:
            reach = access(session, row.host)
            row.tunnel, row.url = reach["tunnel"], reach["url"]
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    context = {
        "course": mask(session.inventory.name), "inventory": mask(session.inventory.source), "generated": stamp,
        "source": f"run file {json_path}" if json_path else "a fresh check of the fleet",
        "rows": rows, "groups": _masked(groups, mask), "summary": summary(rows, groups, total_cost),
        "aws": bool(aws) or aws_error is not None, "aws_error": mask(aws_error) if aws_error else None,
        "with_urls": with_urls, "compact": compact,
    }
    html = render(context)
    if not with_urls:
        html = mask(html)   # belt and braces: no registered secret anywhere on the page
    write_page(out_path, html, private=with_urls)
    return context["summary"] | {"path": str(out_path)}


def _aws(source: str, values: dict[str, dict]) -> tuple[dict[str, tuple[str, str]], float | None, str | None]:
    if not source.startswith("aws:"):
        return {}, None, None
    from fleet.aws import cloud

    try:
        rows = cloud.status(source[4:])
    except Exception as exc:  # the page still shows everything else
        return {}, None, f"EC2 status unavailable: {exc}"
    ids = {n: str(v["instance_id"]) for n, v in values.items() if v.get("instance_id")}
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    return aws_columns(rows, ids), sum(costs) if costs else None, None
