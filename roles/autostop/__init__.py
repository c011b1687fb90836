"""Idle auto-stop: a systemd timer runs fleet-idle-check, which powers the machine off after
autostop_idle_minutes with no Jupyter activity (kernels and terminals idle) and no SSH session.

The decision itself lives in files/fleet-idle-check (standard library only, tested on its own);
this role installs it with its config, the Jupyter token it reads, and the timer.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from fleet.engine.roles import RoleContext
from fleet.engine.steps import Apt, Directory, File, Handler, Service, Verify, reload_if_changed
from fleet.inventory.variables import HostVars
from fleet.shell import q
from roles.jupyter import local_address

SOURCE = Path(__file__).resolve().parent / "files" / "fleet-idle-check"
SCRIPT = "/usr/local/sbin/fleet-idle-check"
CONF_DIR = "/etc/jupyter-fleet"
CONFIG = f"{CONF_DIR}/autostop.json"
TOKEN_FILE = f"{CONF_DIR}/jupyter-token"
STATE_FILE = "/var/lib/jupyter-fleet/idle-state.json"
UNIT = "fleet-idle-check"
# A systemd time span: "1min", "30s", "1h 30min", a bare number of seconds.
TIME_SPAN = re.compile(r"(\s*\d+(\.\d+)?\s*(usec|us|msec|ms|seconds?|sec|s|minutes?|min|m|hours?|hr|h|days?|d|"
                       r"weeks?|w)?)+\s*")


def steps(v: HostVars, ctx: RoleContext) -> list:
    if v.autostop_idle_minutes < 1:
        raise ctx.fail("autostop_idle_minutes", f"expected at least 1 minute, got {v.autostop_idle_minutes}")
    if not TIME_SPAN.fullmatch(v.autostop_interval) or not re.search(r"[1-9]", v.autostop_interval):
        raise ctx.fail("autostop_interval", f"expected a systemd time span such as 1min or 30s, "
                                            f"got {v.autostop_interval!r}")
    try:
        poweroff = shlex.split(v.autostop_poweroff_command)
    except ValueError as exc:
        raise ctx.fail("autostop_poweroff_command", f"cannot split {v.autostop_poweroff_command!r}: {exc}") from None
    if not poweroff:
        raise ctx.fail("autostop_poweroff_command", "expected a command, got an empty string")

    packages = ("python3", "iproute2") if v.autostop_ssh_check == "connections" else ("python3",)
    reload = ("reload autostop units",)
    values = dict(v, idle_check_script=SCRIPT, idle_check_config=CONFIG, idle_check_url=_jupyter_url(v),
                  idle_check_token_file=TOKEN_FILE, idle_check_state_file=STATE_FILE, idle_check_poweroff=poweroff)
    items = [
        Apt(packages, cache_max_age=v.apt_cache_max_age, lock_timeout=v.apt_lock_timeout),
        File(SCRIPT, SOURCE.read_bytes(), mode="0755"),
        Directory(CONF_DIR, owner="root", group="root", mode="0755"),
        ctx.template_with("autostop.json.j2", CONFIG, values, mode="0644"),
        # The check runs as root and is the only reader of the token.
        File(TOKEN_FILE, f"{v.jupyter_token}\n", owner="root", group="root", mode="0600", secret=True,
             label=f"token file {TOKEN_FILE}"),
        ctx.template_with("fleet-idle-check.service.j2", f"/etc/systemd/system/{UNIT}.service", values,
                          notify=reload),
        ctx.template_with("fleet-idle-check.timer.j2", f"/etc/systemd/system/{UNIT}.timer", values, notify=reload),
        Service(f"{UNIT}.timer", enabled=v.autostop_enabled, running=v.autostop_enabled),
        # try-restart: a running timer picks up a new interval; a stopped one stays stopped.
        Handler("reload autostop units", f"{reload_if_changed(UNIT + '.service')} && {reload_if_changed(UNIT + '.timer')} && "
                                          f"systemctl try-restart {UNIT}.timer"),
    ]
    if v.autostop_enabled:
        items.append(Verify("fleet-idle-check reads Jupyter with the token (dry run)", _dry_run()))
    return items


def _jupyter_url(v: HostVars) -> str:
    address = local_address(v.jupyter_ip)
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{v.jupyter_port}"


def _dry_run() -> str:
    """Decide without acting; fail while Jupyter cannot be read (down, wrong token, wrong URL).

    Retries on its own for up to 30 s (Jupyter may be restarting), with an exit status that
    says whether the last try worked."""
    check = f"{q(SCRIPT)} --dry-run {q(CONFIG)}"
    unknown = "*'state unknown'*|*'uptime unknown'*|*'sessions unknown'*"
    return (f"for __n in $(seq 30); do out=$({check}) || break; "
            f"case $out in {unknown}) sleep 1 ;; *) echo \"$out\"; exit 0 ;; esac; "
            "done; echo \"$out\"; exit 1")
