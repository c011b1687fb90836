"""IPython clusters: ipyparallel with its server and JupyterLab extensions and a default profile."""
from __future__ import annotations

import json

from fleet.engine.roles import RoleContext
from fleet.engine.steps import Directory, File, Pip, Verify
from fleet.inventory.variables import HostVars
from fleet.shell import q

CHECK = """
import os
import ipyparallel as ipp
cluster = ipp.Cluster(n=2, profile={profile})
client = cluster.start_and_connect_sync()
try:
    client.wait_for_engines(2, timeout=90)
    pids = client[:].apply_sync(os.getpid)
    assert len(set(pids)) == 2, pids
    squares = client[:].map_sync(lambda x: x * x, range(8))
    assert list(squares) == [x * x for x in range(8)], squares
    print("2 engines answered:", pids)
finally:
    cluster.stop_cluster_sync()
"""


def steps(v: HostVars, ctx: RoleContext) -> list:
    user, home = v.jupyter_user, f"/home/{v.jupyter_user}"
    profile_dir = f"{home}/.ipython/profile_{v.clusters_profile}"
    extension = {"ServerApp": {"jpserver_extensions": {"ipyparallel": True}}}
    return [
        Pip(v.jupyter_venv, [f"ipyparallel=={v.clusters_version}"], python=v.jupyter_python, notify=("restart jupyter",)),
        # Enabled in /etc as well as by the wheel, so the sidebar survives a venv rebuilt without it.
        File("/etc/jupyter/jupyter_server_config.d/ipyparallel.json", json.dumps(extension, indent=2) + "\n",
             notify=("restart jupyter",)),
        # The profile lives in the student's home: made and kept as the student, never by root.
        Directory(f"{home}/.ipython", mode="0755", user=user),
        Directory(profile_dir, mode="0755", user=user),
        ctx.template("ipcluster_config.py.j2", f"{profile_dir}/ipcluster_config.py", user=user),
        Verify("a 2-engine cluster runs a task on both engines",
               f"cd {q(home)} && {q(v.jupyter_venv + '/bin/python')} - <<'PY'\n"
               f"{CHECK.format(profile=json.dumps(v.clusters_profile))}PY", user=user),
    ]
