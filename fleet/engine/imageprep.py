"""Prepare a provisioned machine for imaging: remove what must differ per machine, keep the rest.

One bash script, run as root on the machine just before it is imaged (an EC2 image or a
test host's baked layer). It removes the SSH host keys, the machine-id, the per-host Jupyter
token and config (and the copies the autostop role keeps), the servers' runtime files that
hold a token, logs and shell histories, and autostop's idle state. It keeps the installed
software, kernels, course repositories and the fleet's own state. It installs a first-boot
unit that makes fresh SSH host keys on a machine booted from the image before sshd starts
(cloud-init does this on the usual cloud images; the unit is a no-op where keys exist).

Paths come from the roles' own modules and variables, so this file never guesses where a
role keeps a per-host value.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Mapping

from fleet.shell import q

FIRST_BOOT_UNIT = "fleet-host-keys.service"
FIRST_BOOT_TEXT = """\
# Installed by Jupyter Fleet's bake: a machine booted from a course image gets its own SSH host keys.
[Unit]
Description=Jupyter Fleet: fresh SSH host keys on a machine booted from a course image
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
After=cloud-init.service
Before=ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target ssh.service
"""
# A drop-in for the Jupyter unit: on a machine booted from the image the server waits for the
# machine's own config (written by `provision`) instead of starting once without it, with a
# random token, only to be restarted. After that the condition always holds.
HOLD_NAME = "fleet-image.conf"
HOLD_TEXT = """\
# Written by Jupyter Fleet's bake: never serve before `provision` wrote this machine's config.
[Unit]
ConditionPathExists={config}
"""
# Files of a user's own territory that carry a per-server secret or per-machine history;
# removed as that user (root never acts inside a user's home).
USER_FILES = (".bash_history", ".python_history", ".lesshst", ".viminfo",
              ".local/share/jupyter/runtime/jpserver-*", ".local/share/jupyter/runtime/kernel-*",
              ".ipython/profile_*/security/*.json", ".ipython/profile_*/pid/*", ".ipython/profile_*/log/*")


def per_host_paths(values: Mapping[str, Any]) -> list[str]:
    """System files holding one machine's values, from the roles that write them."""
    from roles import autostop, jupyter  # the roles' own constants: they know where they write

    roles = set(values.get("roles") or [])
    paths = ["/etc/ssh/ssh_host_*", "/var/lib/dbus/machine-id"]
    if "jupyter" in roles:
        paths.append(jupyter.CONFIG)
    if "autostop" in roles:
        paths += [autostop.TOKEN_FILE, autostop.STATE_FILE]
    return paths


def script(values: Mapping[str, Any]) -> str:
    """The prepare script for a machine with these (course-wide) variables."""
    from roles import jupyter

    service = str(values.get("jupyter_service") or "jupyter")
    roles = set(values.get("roles") or [])
    lines = [
        "set -eu",
        "shopt -s nullglob",
        # stop the per-host services first, so nothing writes a token or a log after the cleanup
        f"systemctl stop {q(service + '.service')} 2>/dev/null || true",
        "systemctl stop fleet-idle-check.timer 2>/dev/null || true",
        # the first-boot unit, written atomically and enabled
        f"printf %s {q(FIRST_BOOT_TEXT)} > /etc/systemd/system/.{FIRST_BOOT_UNIT}.tmp",
        f"mv -f /etc/systemd/system/.{FIRST_BOOT_UNIT}.tmp /etc/systemd/system/{FIRST_BOOT_UNIT}",
        "systemctl daemon-reload",
        f"systemctl enable -q {FIRST_BOOT_UNIT}",
    ]
    if "jupyter" in roles:
        drop_in = f"/etc/systemd/system/{service}.service.d"
        lines += [f"mkdir -p {q(drop_in)}",
                  f"printf %s {q(HOLD_TEXT.format(config=jupyter.CONFIG))} > {q(drop_in + '/.' + HOLD_NAME)}",
                  f"mv -f {q(drop_in + '/.' + HOLD_NAME)} {q(drop_in + '/' + HOLD_NAME)}",
                  "systemctl daemon-reload"]
    for pattern in per_host_paths(values):
        # unquoted on purpose where it is a glob of our own constants; no value from a knob here
        lines.append(f"for __f in {pattern}; do if [ -e \"$__f\" ] || [ -L \"$__f\" ]; then "
                     "rm -f \"$__f\" && echo \"removed: $__f\"; fi; done")
    lines += [
        # an empty machine-id (not a missing one) makes systemd generate a new one at the next boot
        ": > /etc/machine-id && echo 'removed: /etc/machine-id (emptied)'",
        "if command -v cloud-init >/dev/null; then cloud-init clean --logs && echo 'removed: cloud-init state'; fi",
        "journalctl --rotate >/dev/null 2>&1 || true",
        "journalctl --vacuum-time=1s >/dev/null 2>&1 || true",
        "rm -rf /var/log/journal/*/* && echo 'removed: journal'",
        "find /var/log -type f \\( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \\) -delete",
        "find /var/log -type f -exec truncate -s 0 {} + && echo 'removed: logs (emptied)'",
        "rm -f /root/.bash_history /root/.python_history /root/.lesshst /root/.viminfo",
        "for __home in /home/*/; do",
        "  [ -L \"${__home%/}\" ] && continue",
        "  __user=$(stat -c %U \"$__home\")",
        "  [ \"$__user\" = UNKNOWN ] && continue",
        "  runuser -u \"$__user\" -- bash -c 'shopt -s nullglob; cd \"$1\" && for f in "
        + " ".join(USER_FILES) + "; do rm -f \"$f\"; done' _ \"$__home\"",
        "  echo \"removed: histories and runtime files of $__user\"",
        "done",
        "sync",
    ]
    return "\n".join(lines) + "\n"


def run_over_ssh(ssh: list[str], values: Mapping[str, Any], timeout: float = 300) -> list[str]:
    """Run the script with `ssh ... sudo -n bash -s` (stdin, so nothing is in a process's arguments)."""
    p = subprocess.run([*ssh, "sudo -n bash -s"], input=script(values), text=True, capture_output=True,
                       timeout=timeout)
    if p.returncode:
        raise PrepareError(f"preparing for imaging failed (exit {p.returncode}): {p.stderr.strip()[-1500:]}")
    return [line[len("removed: "):] for line in p.stdout.splitlines() if line.startswith("removed: ")]


class PrepareError(RuntimeError):
    """The prepare step failed on the machine: nothing was imaged."""


def ssh_argv(address: str, user: str | None, key: str | Path | None, port: int | None,
             known_hosts: Path | None) -> list[str]:
    """ssh for one command: the fleet's recorded host key when there is one, else a throwaway host."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    if key:
        argv += ["-i", str(Path(key).expanduser())]
    if port:
        argv += ["-p", str(port)]
    argv.append(f"{user}@{address}" if user else address)
    return argv
