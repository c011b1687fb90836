"""Runs plans on hosts: per host one connection (kept open between runs), one probe, one apply;
hosts in parallel.

A failing or unreachable host never stops the others. `max_fail` stops starting new hosts
once too many failed; SIGINT does the same and lets scripts already running finish.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

from fleet.engine import speculation
from fleet.engine.drift import masked_diff_fact
from fleet.engine.facts import Fact
from fleet.engine.remote import Apply, Change, Probe
from fleet.engine.results import HostResult, RunResult, StepResult
from fleet.engine.roles import HostPlan
from fleet.engine.secrets import Masker
from fleet.engine.steps import KEPT, File, Outcome
from fleet.engine.sending import RECEIVE, PackageCaches, shipment
from fleet.engine.state import state_dir
from fleet.engine.wheels import WheelsUnavailable
from fleet.errors import InputError
from fleet.transport.base import PARALLEL, Connection, ConnectionCut, ConnectOptions, Unreachable
from fleet.transport.connection import connect


@dataclass
class RunOptions:
    connect: ConnectOptions
    check: bool = False
    diff: bool = False
    verify: bool = False          # run every verification, not only those of changed roles
    parallel: int = PARALLEL
    max_fail: str | None = None   # "3" hosts or "20%"
    masker: Masker = field(default_factory=Masker)
    packages: PackageCaches | None = None  # the controller's wheels and .debs, for steps that ask to be sent them


class Stop:
    """Shared by workers: set once SIGINT arrives or max_fail is exceeded."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.interrupted = False

    def set(self, reason: str, interrupted: bool = False) -> None:
        if not self.event.is_set():
            self.reason, self.interrupted = reason, interrupted
            self.event.set()


def run_fleet(plans: dict[str, HostPlan], options: RunOptions, stop: Stop | None = None,
              on_start: Callable[[str], None] | None = None,
              on_done: Callable[[HostResult], None] | None = None) -> RunResult:
    stop = stop or Stop()
    started = time.monotonic()
    results: dict[str, HostResult] = {}
    names = list(plans)
    limit = parse_max_fail(options.max_fail).allowed(len(names)) if options.max_fail else None
    lock = threading.Lock()
    queue = iter(names)

    def worker() -> None:
        while True:
            with lock:
                if stop.event.is_set():
                    return
                name = next(queue, None)
            if name is None:
                return
            if on_start:
                on_start(name)
            result = run_host(plans[name], options, stop)
            with lock:
                results[name] = result
                failures = sum(1 for r in results.values() if r.status in ("failed", "unreachable"))
                if limit is not None and failures > limit:
                    stop.set(f"--max-fail {options.max_fail} exceeded: {failures} hosts failed; no new hosts started")
            if on_done:
                on_done(result)

    with ThreadPoolExecutor(max_workers=max(1, min(options.parallel, len(names)))) as pool:
        for _ in range(max(1, min(options.parallel, len(names)))):
            pool.submit(worker)
    for name in names:
        if name not in results:
            results[name] = HostResult(name, "skipped", error=f"not started: {stop.reason}")
    ordered = {name: results[name] for name in names}
    # A host served by an early probe began before this function did (fleet.engine.speculation).
    seconds = max([time.monotonic() - started, *(r.seconds for r in ordered.values())])
    return RunResult(ordered, check=options.check, stopped_reason=stop.reason, interrupted=stop.interrupted,
                     seconds=seconds)


_MAX_FAIL = re.compile(r"(?P<count>[0-9]+)|(?P<percent>[0-9]+(?:\.[0-9]+)?)\s*%")


@dataclass(frozen=True)
class MaxFail:
    """--max-fail as given: a number of hosts, or a percentage of the hosts in the run."""

    text: str
    count: int | None = None
    percent: Fraction | None = None

    def allowed(self, total: int) -> int:
        """How many failed hosts are tolerated; one more stops new hosts from starting."""
        if self.count is not None:
            return self.count
        assert self.percent is not None   # max_fail() sets one of the two
        return int(total * self.percent / 100)


def parse_max_fail(value: object) -> MaxFail:
    """The one parser of --max-fail (checked before anything is loaded, used by the runner)."""
    text = str(value).strip()
    match = _MAX_FAIL.fullmatch(text)
    percent = Fraction(match["percent"]) if match and match["percent"] else None
    if not match or (percent is not None and percent > 100):
        raise InputError(f"expected a number of hosts (3) or a percentage (20%) of at most 100%, got {str(value)!r}",
                         key="--max-fail")
    return MaxFail(text, count=int(match["count"]) if match["count"] else None, percent=percent)


def run_host(plan: HostPlan, options: RunOptions, stop: Stop) -> HostResult:
    mask = options.masker
    result = HostResult(plan.host.name)
    started = time.monotonic()
    conn = None
    try:
        conn = connect(plan.host, options.connect, state_dir())
        conn.open()
        _converge(plan, options, stop, conn, result, started)
    except ConnectionCut as exc:
        result.status, result.error = "unreachable", mask(f"{exc} (output so far: {exc.output.strip()[-300:]})")
    except Unreachable as exc:
        result.status, result.error = "unreachable", mask(str(exc))
    except Exception as exc:  # a bug or an odd host must not stop the other hosts
        result.status, result.error = "failed", mask(f"{exc.__class__.__name__}: {exc}")
    finally:
        if conn:
            result.connections, result.commands = conn.connections, conn.commands
            conn.close()
        result.seconds = round(time.monotonic() - started + result.early_probe_s, 3)
    return result


def _converge(plan: HostPlan, options: RunOptions, stop: Stop, conn: Connection, result: HostResult,
              started: float) -> None:
    mask = options.masker
    facts_wanted: dict[str, Fact] = {}
    masked: dict[int, tuple[Fact, list[str]]] = {}   # secret files' drift digests: see fleet.engine.drift
    for index, (_, step) in enumerate(plan.steps):
        for fact in step.facts(diff=options.diff or options.check):
            facts_wanted.setdefault(fact.key, fact)
        if (options.diff or options.check) and step.secret and isinstance(step, File):
            secrets = mask.found_in(step.content_bytes.decode(errors="replace"))
            masked[index] = (masked_diff_fact(step.path, step.content_bytes, secrets), secrets)
            facts_wanted.setdefault(masked[index][0].key, masked[index][0])
    every_run = [v for _, v in plan.verifies if v.every_run]
    probe = Probe(list(facts_wanted.values()), every_run)
    script = probe.script()
    early = speculation.current.claim(plan.host, options.connect, script) if speculation.current else None
    if early:   # sent before the engine loaded, and the same script: fleet.engine.speculation
        probe.nonce, rc, output, logins, sent = early
        result.early_probe_s = round(max(0.0, started - sent), 3)   # the host began that much sooner
        conn.commands += 1          # it ran on this host for this run, only sooner
        conn.connections += logins
        result.early_probe = True
    else:
        rc, output = conn.run_script(script)
    if "@@" + probe.nonce + "@@ done" not in output:
        result.status, result.error = "failed", mask(f"probe failed (exit {rc}): {output.strip()[-500:]}")
        return
    facts, probe_verifies, pending, fact_errors = probe.parse(output)

    changes: list[Change] = []
    failed_roles: set[str] = set()
    for index, (role, step) in enumerate(plan.steps):
        if role in failed_roles:
            result.steps.append(StepResult(role, step.name, "skipped", "not run: an earlier step of this role failed"))
            continue
        missing = [fact_errors[f.key] for f in step.facts(diff=options.diff or options.check) if f.key in fact_errors]
        outcome = Outcome(False, "; ".join(missing), failed=True) if missing else step.plan(facts)
        if outcome.failed:
            result.steps.append(StepResult(role, step.name, "failed", mask(outcome.message)))
            if step.critical:
                failed_roles.add(role)
            continue
        if outcome.changed:
            changes.append(Change(index, step, outcome))
            status = "would change" if options.check else "changed"
        else:
            status = "ok"
        diff = mask(outcome.diff) if not step.secret else ("(secret content: diff hidden)" if outcome.diff else None)
        digest = hashlib.sha256(mask(outcome.diff).encode()).hexdigest()[:16] if outcome.diff else None
        if outcome.changed and index in masked and masked[index][0].key in facts:
            digest = facts[masked[index][0].key]
        result.steps.append(StepResult(role, step.name, status, mask(outcome.message), diff, digest=digest))

    notified = {h.marker for h in plan.handlers for c in changes if h.name in c.step.notify}
    notified |= {h.marker for h in plan.handlers if h.marker.rsplit("/", 1)[-1] in pending}
    changed_roles = {plan.steps[c.index][0] for c in changes}

    if options.check:
        result.handlers = [h.name for h in plan.handlers if h.marker in notified]
        result.verifies = [{"name": v.name, "ok": probe_verifies[i][0], "output": mask(probe_verifies[i][1].strip()[-500:])}
                           for i, v in enumerate(every_run)]
        drift = changes or notified or any(not v["ok"] for v in result.verifies)
        result.status = "failed" if any(s.status == "failed" for s in result.steps) else ("drift" if drift else "ok")
        return

    verifies = [v for role, v in plan.verifies if options.verify or v.every_run or role in changed_roles]
    if stop.event.is_set() and (changes or notified):
        result.status, result.error = "interrupted", "interrupted before applying changes"
        return
    if not _send_packages(changes, options, conn, result):
        return
    # A check that failed in the probe is asked again with its wait: the probe asks without one
    # (a no-op must not wait), and a service still starting (a host just rebooted) deserves it.
    late = any(not ok for ok, _ in probe_verifies.values())
    if changes or notified or late or any(not v.every_run for v in verifies):
        apply = Apply(changes, plan.handlers, notified, verifies)
        rc, output = conn.run_script(apply.script())
        _record_apply(apply, apply.parse(output), plan, result, mask)
    else:
        result.verifies = [{"name": v.name, "ok": probe_verifies[i][0], "output": mask(probe_verifies[i][1].strip()[-500:])}
                           for i, v in enumerate(every_run)]
    failed = any(s.status == "failed" for s in result.steps) or any(not v["ok"] for v in result.verifies)
    if failed:
        result.status = "failed"
        if not result.error:
            bad = [s for s in result.steps if s.status == "failed"] or []
            bad_verifies = [v["name"] for v in result.verifies if not v["ok"]]
            result.error = "; ".join([f"{s.name}: {s.message}" for s in bad][:3] + [f"verify failed: {n}" for n in bad_verifies])
    elif any(s.status == "changed" for s in result.steps) or result.handlers:
        result.status = "changed"


def _send_packages(changes: list[Change], options: RunOptions, conn: Connection, result: HostResult) -> bool:
    """Before the apply, send the host the wheels and .debs its changes install (one download per
    class: fleet.engine.sending). False when they could not be sent: the host fails, nothing applied."""
    wanted = {c.index: c.outcome for c in changes if c.outcome.wheels or c.outcome.debs}
    if not wanted:
        return True
    try:
        if options.packages is None:
            raise WheelsUnavailable("this run has no package cache")
        sending = shipment(wanted, options.packages)
    except WheelsUnavailable as exc:
        result.status, result.error = "failed", options.masker(str(exc))
        return False
    for index, note in sending.notes.items():
        result.steps[index].message += f"; {options.masker(note)}"
    if not sending.files:
        return True
    rc, output = conn.run_script(RECEIVE, files=sending.files)
    if rc != 0:
        result.status = "failed"
        result.error = options.masker(f"sending {len(sending.files)} packages failed (exit {rc}): {_last_line(output)}")
        return False
    return True


def _record_apply(apply: Apply, parsed: dict[str, Any], plan: HostPlan, result: HostResult, mask: Masker) -> None:
    outputs = parsed.get("steps_output", {})
    aborted_after = None
    for change in apply.changes:
        record = result.steps[change.index]  # one result per plan step, in order
        if change.index in parsed["steps"]:
            rc = parsed["steps"][change.index]
            record.seconds = parsed["steps_seconds"][change.index]
            text = mask(outputs.get(change.index, ""))
            if rc == KEPT and _last_line(text).startswith("kept:"):
                record.status, record.message = "ok", (text.strip().splitlines() or [record.message])[-1]
            elif rc != 0:
                record.status, record.output = "failed", text[-2000:]
                record.message = f"{record.message}: failed (exit {rc}): {_last_line(text)}"
                if change.step.critical:
                    aborted_after = change.index
        elif aborted_after is not None:
            record.status, record.message = "skipped", "not run: an earlier step failed"
        else:
            record.status, record.message = "failed", "not finished: the script stopped (host down or connection cut)"
    for name, rc in parsed["handlers"].items():
        if rc == 0:
            result.handlers.append(name)
        else:
            result.steps.append(StepResult("handlers", name, "failed",
                                           mask(f"handler failed (exit {rc}): {_last_line(parsed['handlers_output'][name])}")))
    for index, verify in enumerate(apply.verifies):
        ok = parsed["verifies"].get(index, False)
        output = mask(parsed.get("verifies_output", {}).get(index, ""))
        result.verifies.append({"name": verify.name, "ok": ok, "output": output[-500:]})
    if not parsed["done"] and not parsed["aborted"]:
        result.error = "the apply script did not finish"


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
