"""The student's way in: their key opens the course user's login on their machine and nothing else.

sshd takes the course user's authorised keys from a root-owned file (the user's own
~/.ssh/authorized_keys is ignored for that user), holding one key: the student's, with OpenSSH's
restrictions (`restrict` turns off every forwarding, the pty and ~/.ssh/rc; we re-allow only the
tunnel to Jupyter, and a shell where the course asks for one). The admin login keeps the
instructor's key and is never handed out.
"""
from __future__ import annotations

from fleet.engine.roles import RoleContext
from fleet.engine.steps import Absent, Directory, File, Handler
from fleet.inventory.variables import HostVars

KEYS_DIR = "/etc/ssh/jupyter-fleet-keys"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-jupyter-fleet.conf"
SUDOERS = "/etc/sudoers.d/jupyter-fleet-course-user"
RELOAD = ("reload sshd",)
TUNNEL_ONLY = "echo 'This key opens only the tunnel to your Jupyter: ssh -N -L ...'; exit 1"


def authorized_key(v: HostVars) -> str:
    """The one line of the course user's authorised keys: the student's key and what it may do."""
    options = ["restrict", "port-forwarding", f'permitopen="localhost:{int(v.jupyter_port)}"']
    if v.student_ssh == "shell":
        options.insert(1, "pty")
    else:
        options.append(f'command="{TUNNEL_ONLY}"')
    return (f"# Managed by Jupyter Fleet: {v.student}'s key, for {v.course_user} on {v.inventory_hostname} only.\n"
            f"{','.join(options)} {v.student_key} jupyter-fleet:{v.course}:{v.student}\n")


def steps(v: HostVars, ctx: RoleContext) -> list:
    user = v.course_user
    sudo = File(SUDOERS, f"{user} ALL=(ALL) NOPASSWD:ALL\n", mode="0440") if v.student_sudo else \
        Absent(SUDOERS, reason="the course does not let the course user sudo (student_sudo)")
    return [
        ctx.template_with("sshd_course_user.conf.j2", SSHD_DROPIN, dict(v, keys_dir=KEYS_DIR), notify=RELOAD),
        Directory(KEYS_DIR, owner="root", group="root", mode="0755"),
        File(f"{KEYS_DIR}/{user}", authorized_key(v), mode="0644"),
        sudo,
        # A config sshd would refuse is never loaded: the running daemon keeps the last good one.
        Handler("reload sshd", "sshd -t && systemctl reload ssh", unit="ssh"),
    ]
