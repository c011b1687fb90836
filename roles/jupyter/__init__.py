"""Jupyter server in a venv, run by systemd as the course user, reached through an SSH tunnel."""
from __future__ import annotations

import json

from fleet.engine.roles import RoleContext
from fleet.engine.steps import (Absent, Apt, Directory, File, Handler, Pip, Service, User, Verify, home_territory,
                                reload_if_changed)
from fleet.inventory.variables import HostVars
from fleet.shell import q
from roles.jupyter import login

CONFIG = "/etc/jupyter/jupyter_server_config.py"


def steps(v: HostVars, ctx: RoleContext) -> list:
    if v.jupyter_auth == "password" and not v.jupyter_password:
        raise ctx.fail("jupyter_password", "jupyter_auth is password but no password is set")
    restart = ("restart jupyter",)
    user = v.jupyter_user
    hashed = ctx.argon2(v.jupyter_password) if v.jupyter_auth == "password" else ""
    config_vars = dict(v, jupyter_hashed_password=hashed)
    home = f"/home/{user}"
    return [
        Apt(("python3-venv", "curl"), cache_max_age=v.apt_cache_max_age, lock_timeout=v.apt_lock_timeout),
        *([User(user)] if user == v.course_user else [User(user), User(v.course_user)]),
        *login.steps(v, ctx),
        # In the user's home it is made as the user; elsewhere root makes it and hands it over.
        Directory(v.jupyter_notebook_dir, owner=user, group=user, mode="0755",
                  user=home_territory(v.jupyter_notebook_dir, user)),
        Pip(v.jupyter_venv, [f"notebook=={v.jupyter_notebook_version}", f"jupyterlab=={v.jupyter_lab_version}",
                             *v.jupyter_fast_start_packages, *v.jupyter_extra_packages], python=v.jupyter_python, notify=restart),
        # The config holds the token: readable by root and the service's user only.
        ctx.template_with("jupyter_server_config.py.j2", CONFIG, config_vars, owner="root", group=user,
                          mode="0640", secret=True, notify=restart),
        # A JSON config beside the .py (or in the user's ~/.jupyter) silently overrides it.
        Absent("/etc/jupyter/jupyter_server_config.json", notify=restart, reason="it would override the managed config"),
        Absent(f"{home}/.jupyter/jupyter_server_config.json", notify=restart, reason="it would override the managed config",
               user=user),
        # Read once at the server's start, hence the restart.
        File(f"{v.jupyter_venv}/share/jupyter/lab/settings/overrides.json",
             json.dumps(v.jupyter_lab_settings, indent=2, sort_keys=True) + "\n", notify=restart),
        ctx.template("jupyter.service.j2", f"/etc/systemd/system/{v.jupyter_service}.service", notify=restart),
        Service(v.jupyter_service, enabled=True, running=True),
        Handler("restart jupyter", f"{reload_if_changed(v.jupyter_service)} && systemctl restart {q(v.jupyter_service)}",
                unit=v.jupyter_service),
        Verify("jupyter answers /api/status with the token", _api_check(v), every_run=True, wait_s=30),
    ]


def local_address(jupyter_ip: str | None) -> str:
    """Where a check on the host itself reaches Jupyter: a server listening on every address
    (0.0.0.0, ::, or unset) answers on 127.0.0.1. Other roles and the class report use this."""
    return "127.0.0.1" if jupyter_ip in ("0.0.0.0", "::", "", None) else str(jupyter_ip)


def _api_check(v: HostVars) -> str:
    address = local_address(v.jupyter_ip)
    # /api/status needs the token: a 2xx proves the server is up and takes this host's token.
    # __http_ok (fleet.engine.remote) is a bash function, so the token is never in a process's arguments.
    return f"__http_ok {q(address)} {int(v.jupyter_port)} /api/status {q(v.jupyter_token)}"
