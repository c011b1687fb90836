"""The benchmark's workload written for pyinfra (3.10+): what `invoke bench` has Fleet's jupyter
and repos roles do, as pyinfra operations, so `invoke bench --peer pyinfra` times both tools on
the same target state. Run by bench/peer.py as `pyinfra -y --sudo INVENTORY bench/pyinfra_deploy.py`
with an inventory it writes (per-host port, token and student key; the workload's packages and
repository). README "Performance" lists what this does and does not do next to Fleet's roles.

Not imported by the project: it needs pyinfra (the `bench` extra) and runs inside pyinfra's CLI.
"""
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.operations import apt, files, git, pip, server, systemd
from pyinfra.operations.util import any_changed

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"   # the same templates Fleet renders
KEYS_DIR = "/etc/ssh/jupyter-fleet-keys"                          # roles/jupyter/login.py
CONFIG = "/etc/jupyter/jupyter_server_config.py"

d = host.data
user = d.course_user
venv = d.jupyter_venv
home = f"/home/{user}"
values = {  # what the templates read, as Fleet's host vars name them
    "course": d.course, "inventory_hostname": host.name, "course_user": user, "keys_dir": KEYS_DIR,
    "jupyter_user": user, "jupyter_venv": venv, "jupyter_notebook_dir": d.jupyter_notebook_dir,
    "jupyter_ip": "127.0.0.1", "jupyter_port": d.jupyter_port, "jupyter_token": d.jupyter_token,
    "jupyter_auth": "token",
}

# jupyter role: apt, the course user, the student's way in (login.py)
apt.packages(name="apt python3-venv curl", packages=["python3-venv", "curl"], no_recommends=True,
             update=True, cache_time=86400)
server.user(name=f"user {user}", user=user, shell="/bin/bash", create_home=True)
sshd = files.template(name="sshd drop-in for the course user", src=str(TEMPLATES / "sshd_course_user.conf.j2"),
                      dest="/etc/ssh/sshd_config.d/50-jupyter-fleet.conf", mode="644", **values)
files.directory(name="student keys folder", path=KEYS_DIR, user="root", group="root", mode="755")
files.put(name="the student's key", src=StringIO(d.authorized_key), dest=f"{KEYS_DIR}/{user}", mode="644")
files.file(name="no sudo for the course user", path="/etc/sudoers.d/jupyter-fleet-course-user", present=False)
server.shell(name="reload sshd", commands=["sshd -t && systemctl reload ssh"], _if=sshd.did_change)

# the server: folder, venv, config, unit
files.directory(name="notebooks folder", path=d.jupyter_notebook_dir, user=user, group=user, mode="755")
venv_op = pip.venv(name=f"venv {venv}", path=venv, python="python3")
# Test hosts share one pip cache (/root/.cache/pip, a bind mount, see fleet/testhosts): a class's
# fresh machines have none, and Fleet's installer keeps its cache per host, so pip's is per host here.
packages = pip.packages(name="pip " + " ".join(d.pip_packages), packages=list(d.pip_packages), virtualenv=venv,
                        _env={"PIP_CACHE_DIR": "/var/cache/bench-pip"})
config = files.template(name="jupyter config", src=str(TEMPLATES / "jupyter_server_config.py.j2"), dest=CONFIG,
                        user="root", group=user, mode="640", **values)
json_configs = [files.file(name=f"no {path}", path=path, present=False)
                for path in ("/etc/jupyter/jupyter_server_config.json", f"{home}/.jupyter/jupyter_server_config.json")]
overrides = files.put(name="lab settings overrides.json", src=StringIO(d.lab_overrides),
                      dest=f"{venv}/share/jupyter/lab/settings/overrides.json")
changed = [venv_op, packages, config, *json_configs, overrides]
if d.with_service:   # the small workload of the host test installs no Jupyter to start
    unit = files.template(name="jupyter unit", src=str(TEMPLATES / "jupyter.service.j2"),
                          dest="/etc/systemd/system/jupyter.service", **values)
    # Fleet's handler: (re)start when anything the server reads changed; a stopped one is started.
    systemd.service(name="restart jupyter", service="jupyter", running=True, restarted=True, daemon_reload=True,
                    _if=any_changed(*changed, unit))
    systemd.service(name="jupyter enabled and running", service="jupyter", running=True, enabled=True)

# repos role: git, then each repository cloned as the course user
apt.packages(name="apt git", packages=["git"], no_recommends=True, update=True, cache_time=86400)
for repo in d.repos:
    git.repo(name=f"git {repo['url']}", src=repo["url"], dest=f"{d.repos_base}/{repo['dest']}",
             branch=repo["ref"], _sudo_user=user)
