"""Prepare a provisioned builder for imaging: remove what must differ per machine, and build
every student's home from /etc/skel plus the course's own content.

One bash script, run as root on the builder just before it is imaged (an EC2 image or a test
host's baked layer). It removes the SSH host keys, the machine-id, the per-host Jupyter token
and config (and the copies the autostop role keeps), logs and autostop's idle state. Home
folders are not cleaned by a list of files to delete: each home under /home (the SSH login
user's aside: the operator's, whose keys cloud-init writes at every boot) is made anew from
/etc/skel, and only the paths the course's own steps manage there (`home_content`: folders
made empty with their mode, files and checkouts carried whole) are moved into it, as that
user. Authorized keys, tokens, histories, IPython startup files, user kernelspecs, Jupyter
runtime state and anything else found in a home are therefore absent by construction. It
installs a first-boot unit that makes fresh SSH host keys on a machine booted from the image
before sshd starts (cloud-init does this on the usual cloud images; the unit is a no-op where
keys exist).

Paths come from the roles' own modules and the compiled plan, so this file never guesses where
a role keeps a per-host value or what a course puts in a home.
"""
from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from fleet.engine import hostscripts
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
# The SSH login user's own files that hold a per-machine history; that home is the operator's, not
# a student's, and is kept (its keys are the course key pair's, written by cloud-init at boot).
LOGIN_USER_FILES = (".bash_history", ".python_history", ".lesshst", ".viminfo")

# Rebuild one home as its user (rebuild-home.sh): a fresh folder from /etc/skel, then the course's paths moved over
# from the old home (`dir REL`: made empty with the old one's mode; `copy REL`: moved whole, a file
# or a checkout); the old home with everything else is then removed. Root only makes the new
# folder in /home and swaps the two names; nothing is read or written in a home as root.
REBUILD_HOME = hostscripts.read(Path(__file__).parent / "rebuild-home.sh")


def home_content(steps: Iterable[Any]) -> dict[str, list[tuple[str, str]]]:
    """The course's own content in each user's home, from a compiled plan's steps: for every step
    that runs as a user and manages a path in /home/USER, ("dir", REL) for a folder it makes and
    ("copy", REL) for a file or tree it writes (a checkout, a template). Parents come first."""
    from fleet.engine.steps import Absent, Directory

    found: dict[str, set[tuple[str, str]]] = {}
    for item in steps:
        step = item[1] if isinstance(item, tuple) else item
        user = step.runs_as
        if not user or isinstance(step, Absent):
            continue
        home = PurePosixPath("/home") / user
        for path in step.paths():
            pure = PurePosixPath(path)
            if pure == home or not pure.is_relative_to(home):
                continue
            found.setdefault(user, set()).add(("dir" if isinstance(step, Directory) else "copy",
                                               str(pure.relative_to(home))))
    return {user: sorted(items, key=lambda kr: (len(PurePosixPath(kr[1]).parts), kr[0] != "dir", kr[1]))
            for user, items in found.items()}


def per_host_paths(values: Mapping[str, Any]) -> list[str]:
    """System files holding one machine's values, from the roles that write them."""
    from roles import autostop, jupyter  # the roles' own constants: they know where they write
    from roles.jupyter import login

    roles = set(values.get("roles") or [])
    paths = ["/etc/ssh/ssh_host_*", "/var/lib/dbus/machine-id"]
    if "jupyter" in roles:   # the builder's student key too: a machine opens to its own student only
        paths += [jupyter.CONFIG, f"{login.KEYS_DIR}/*"]
    if "autostop" in roles:
        paths += [autostop.TOKEN_FILE, autostop.STATE_FILE]
    return paths


def script(values: Mapping[str, Any], homes: Mapping[str, list[tuple[str, str]]] | None = None) -> str:
    """The prepare script for a machine with these (course-wide) variables; `homes` is
    home_content() of its plan (a home with none is rebuilt from /etc/skel alone)."""
    from roles import autostop, jupyter

    service = str(values.get("jupyter_service") or "jupyter")
    roles = set(values.get("roles") or [])
    lines = [
        "set -eu",
        "shopt -s nullglob",
        # stop the per-host services first, so nothing writes a token or a log after the cleanup
        f"systemctl stop {q(service + '.service')} 2>/dev/null || true",
        f"systemctl stop {autostop.UNIT}.timer 2>/dev/null || true",
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
        REBUILD_HOME,
        "for __home in /home/*/; do",
        "  __home=${__home%/}; __user=${__home##*/}",
        "  [ -L \"$__home\" ] && continue",
        "  if [ \"$(stat -c %U \"$__home\")\" != \"$__user\" ]; then echo \"left alone: $__home (not owned by a user "
        "of that name)\"; continue; fi",
        "  if [ \"$__user\" = \"${SUDO_USER:-}\" ]; then",
        "    runuser -u \"$__user\" -- bash -c 'cd \"$1\" && rm -f " + " ".join(LOGIN_USER_FILES) + "' _ \"$__home\"",
        "    echo \"removed: shell histories of the login user $__user\"; continue",
        "  fi",
        "  case $__user in",
        *[f"    {q(user)}) __rebuild_home \"$__user\" {' '.join(kind + ' ' + q(rel) for kind, rel in items)} || exit 1 ;;"
          for user, items in sorted((homes or {}).items())],
        "    *) __rebuild_home \"$__user\" || exit 1 ;;",
        "  esac",
        "done",
        "sync",
    ]
    return "\n".join(lines) + "\n"


def run_over_ssh(ssh: list[str], values: Mapping[str, Any], homes: Mapping[str, list[tuple[str, str]]] | None = None,
                 timeout: float = 300) -> list[str]:
    """Run the script with `ssh ... sudo -n bash -s` (stdin, so nothing is in a process's arguments)."""
    p = subprocess.run([*ssh, "sudo -n bash -s"], input=script(values, homes), text=True, capture_output=True,
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
