"""IPython clusters: ipyparallel with its server and JupyterLab extensions and a default profile;
and, for hosts in `clusters_group`, one cluster across machines: the controller on the head,
engines on every member, all as systemd services of the course user (see README, Clusters across
machines)."""
from __future__ import annotations

import json
from pathlib import Path

from fleet.engine.roles import RoleContext
from fleet.engine.steps import Absent, Command, Directory, File, Handler, Pip, Service, Verify, reload_if_changed
from fleet.inventory.variables import HostVars
from fleet.shell import q
from roles.clusters import curve, topology
from roles.clusters.topology import Cluster, check_hosts  # noqa: F401 (check_hosts: compile's cross-host rule)

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

# On the head: every member's engines answer, counted by the inventory host they say they run on.
COUNT = """
import collections, sys, time
import ipyparallel as ipp
expected = {expected}  # host -> engines; 0 = one per CPU (at least one)
client = ipp.Client(profile={profile}, timeout=20)
deadline = time.monotonic() + {wait}
while True:
    seen = collections.Counter()
    if client.ids:
        try:
            seen.update(client[:].apply_async(lambda: __import__("os").environ.get("FLEET_HOST")).get(timeout=10))
        except Exception:  # an engine that registered but died: wait for the unit to restart it
            seen["?"] += 1
    short = {{h: n for h, n in expected.items() if seen[h] < max(n, 1) or (n and seen[h] != n)}}
    if not short or time.monotonic() > deadline:
        break
    time.sleep(1)
    client.close()
    client = ipp.Client(profile={profile}, timeout=20)
report = ", ".join(f"{{h}} {{seen[h]}}/{{n or 'cpus'}}" for h, n in expected.items())
print(f"cluster {group}: {{sum(seen.values())}} engines ({{report}})")
sys.exit(1 if short else 0)
"""

CONTROLLER, ENGINES = "ipcontroller", "ipengines"
# The engines' file has a name of Fleet's own: the panel's local clusters write ipcontroller-engine.json.
# The client file must keep ipyparallel's default name, which `ipp.Client()` looks for.
ENGINE_FILE, CLIENT_FILE, HEAD_MARK = "fleet-cluster-engine.json", "ipcontroller-client.json", "fleet-cluster-head"
CONFIG_DIR = "/etc/ipyparallel"
SCRIPT = "/usr/local/lib/jupyter-fleet-ipengines"
# The JupyterLab "IPython Clusters" panel lists the profile's security/cluster-*.json files. On the head
# Fleet writes one for the cluster its services run; the classes it names (files/jupyter_fleet_cluster.py)
# describe the services and refuse the panel's start and stop. The Jupyter server finds that module through
# a config file of its own in /usr/local/etc/jupyter (a Jupyter config folder the jupyter role leaves alone).
PANEL_FILE = "cluster-jupyter-fleet.json"
PANEL_MODULE_DIR = "/usr/local/lib/jupyter-fleet/python"
PANEL_MODULE = f"{PANEL_MODULE_DIR}/jupyter_fleet_cluster.py"
PANEL_SOURCE = Path(__file__).resolve().parent / "files" / "jupyter_fleet_cluster.py"
PANEL_CONFIG = "/usr/local/etc/jupyter/jupyter_server_config.py"
PANEL_CONFIG_TEXT = f"""# Managed by Jupyter Fleet: the server imports the classes its cluster file names from here
# (the "IPython Clusters" panel's view of the cluster across machines; README, Clusters across machines).
import sys

if {PANEL_MODULE_DIR!r} not in sys.path:
    sys.path.append({PANEL_MODULE_DIR!r})
"""


def steps(v: HostVars, ctx: RoleContext) -> list:
    user, home = v.jupyter_user, f"/home/{v.jupyter_user}"
    profile_dir = f"{home}/.ipython/profile_{v.clusters_profile}"
    extension = {"ServerApp": {"jpserver_extensions": {"ipyparallel": True}}}
    cluster = topology.resolve(v, ctx.inventory, ctx.fail, ctx.peer_vars)
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
        *across_machines(v, ctx, cluster, profile_dir),
    ]


def across_machines(v: HostVars, ctx: RoleContext, cluster: Cluster | None, profile_dir: str) -> list:
    """A member's engines (and the head's controller); on any other host, whatever a cluster left is retired."""
    user = v.jupyter_user
    security = f"{profile_dir}/security"
    engine_file, client_file, mark = f"{security}/{ENGINE_FILE}", f"{security}/{CLIENT_FILE}", f"{security}/{HEAD_MARK}"
    panel_file = f"{security}/{PANEL_FILE}"
    config = f"{CONFIG_DIR}/cluster.py"
    is_head = cluster is not None and cluster.head == v.inventory_hostname
    items: list = []
    if cluster is not None:
        keys = _keys(ctx, cluster)
        values = dict(v, cluster=cluster, config=config, script=SCRIPT, engine_file=engine_file, engines=v.clusters_engines or "$(nproc)",
                      engines_said=f"{v.clusters_engines} engines" if v.clusters_engines else "One engine per CPU")
        items += [
            # ipyparallel makes this folder 0700 too: connection files are the course user's alone.
            Directory(security, mode="0700", user=user),
            File(engine_file, _connection(cluster, keys, "engine"), mode="0600", secret=True, user=user,
                 notify=(f"restart {ENGINES}",) + ((f"restart {CONTROLLER}",) if is_head else ())),
        ]
        if is_head:
            items += [
                File(client_file, _connection(cluster, keys, "client"), mode="0600", secret=True, user=user,
                     notify=(f"restart {CONTROLLER}",)),
                # Says the client file is Fleet's, so a host that stops being the head removes it (and no other).
                File(mark, f"{cluster.group}\n", mode="0600", user=user),
                # What the "IPython Clusters" panel lists; no key in it. Read at every listing: no restart.
                File(panel_file, panel_cluster(cluster, profile_dir, ctx), mode="0600", user=user),
                File(PANEL_MODULE, PANEL_SOURCE.read_bytes(), notify=("restart jupyter",)),
                File(PANEL_CONFIG, PANEL_CONFIG_TEXT, notify=("restart jupyter",)),
                Directory(CONFIG_DIR, mode="0755"),
                ctx.template_with("ipcontroller_cluster.py.j2", config, dict(values, **keys,
                                  internal_ports=cluster.internal_ports()), owner="root", group=user, mode="0640",
                                  secret=True, notify=(f"restart {CONTROLLER}",)),
                ctx.template_with("ipcontroller.service.j2", f"/etc/systemd/system/{CONTROLLER}.service", values,
                                  notify=(f"restart {CONTROLLER}",)),
                Service(CONTROLLER, enabled=True, running=True),
            ]
        items += [
            ctx.template_with("ipengines.sh.j2", SCRIPT, values, mode="0755", notify=(f"restart {ENGINES}",)),
            ctx.template_with("ipengines.service.j2", f"/etc/systemd/system/{ENGINES}.service", values,
                              notify=(f"restart {ENGINES}",)),
            Service(ENGINES, enabled=True, running=True),
        ]
    if not is_head:  # retire a controller this host ran as an earlier head
        items += [Service(CONTROLLER, enabled=False, running=False),
                  Absent(f"/etc/systemd/system/{CONTROLLER}.service", reason="not this cluster's head"),
                  Absent(config, reason="not this cluster's head"),
                  # Only a client file Fleet wrote: one of a local cluster the student started is theirs.
                  Command(f"rm -f -- {q(client_file)} {q(panel_file)} {q(mark)}", unless=f"test ! -e {q(mark)}",
                          user=user, writes=(client_file, panel_file, mark),
                          label=f"retire {client_file} (not this cluster's head)"),
                  Absent(PANEL_CONFIG, reason="not a cluster's head", notify=("restart jupyter",)),
                  Absent(PANEL_MODULE, reason="not a cluster's head", notify=("restart jupyter",))]
    if cluster is None:  # retire engines of a cluster this host left
        items += [Service(ENGINES, enabled=False, running=False),
                  Absent(f"/etc/systemd/system/{ENGINES}.service", reason="not in a cluster"),
                  Absent(SCRIPT, reason="not in a cluster"),
                  Absent(engine_file, reason="not in a cluster", user=user)]
    for unit in (CONTROLLER, ENGINES):
        items.append(Handler(f"restart {unit}", f"{reload_if_changed(unit)} && systemctl restart {q(unit)}", unit=unit))
    if is_head and cluster is not None:   # is_head implies a cluster
        expected = {m: int(ctx.peer_vars(m).clusters_engines or 0) if ctx.peer_vars else 0 for m in cluster.members}
        script = COUNT.format(expected=json.dumps(expected), profile=json.dumps(v.clusters_profile),
                              group=cluster.group, wait=int(v.clusters_wait))
        items.append(Verify(f"cluster {cluster.group}: every member's engines answer the head",
                            f"cd /home/{user} && {q(v.jupyter_venv + '/bin/python')} - <<'PY'\n{script}PY",
                            user=user, every_run=True))
    return items


def panel_cluster(cluster: Cluster, profile_dir: str, ctx: RoleContext) -> str:
    """The cluster file the "IPython Clusters" panel lists (ipyparallel's Cluster.to_dict, which
    Cluster.from_file reads back): the controller on the head, one engine set per member with its
    configured count (0 where it runs one engine per CPU: the head cannot know a worker's CPUs)."""
    def state(host: str, unit: str, **extra) -> dict:
        return {"cluster_id": cluster.group, "host": host, **extra, "profile_dir": profile_dir,
                "state": "running", "unit": unit}

    counts = {m: int(ctx.peer_vars(m).clusters_engines or 0) if ctx.peer_vars else 0 for m in cluster.members}
    data = {
        "cluster": {"cluster_id": cluster.group, "controller_args": [], "controller_ip": cluster.address,
                    "controller_location": cluster.address, "delay": 1.0, "n": sum(counts.values()),
                    "profile_dir": profile_dir, "class": "jupyter_fleet_cluster.ServiceCluster"},
        "controller": {"class": "jupyter_fleet_cluster.ServiceControllerLauncher",
                       "state": state(cluster.head, CONTROLLER)},
        "engines": {"class": "jupyter_fleet_cluster.ServiceEngineSetLauncher",
                    "sets": {m: state(m, ENGINES, n=counts[m]) for m in cluster.members}},
    }
    return json.dumps(data, indent=2) + "\n"


def _keys(ctx: RoleContext, cluster: Cluster) -> dict[str, str]:
    """The cluster's keys, from the course secret: the same on every run and on every member."""
    name = f"cluster:{cluster.group}"
    seed = bytes.fromhex(ctx.secrets.host_secret(name, "ipyparallel-curve", 64))
    public, secret = curve.keypair(seed)
    session = ctx.secrets.host_secret(name, "ipyparallel-session", 64)
    for value in (public, secret):
        ctx.secrets.masker.add(value)
    return {"public": public, "secret": secret, "session_key": session}


def _connection(cluster: Cluster, keys: dict[str, str], side: str) -> str:
    """ipyparallel's connection file, as its controller writes it (controller/app.py, init_hub)."""
    # Engines reach the head's address; clients only its loopback: work is submitted on the head.
    interface = cluster.address if side == "engine" else "127.0.0.1"
    data = {"ssh": "", "interface": f"tcp://{interface}",
            **(cluster.engine_ports() if side == "engine" else {**cluster.client_ports(), "task_scheme": "leastload"}),
            "key": keys["session_key"], "curve_serverkey": keys["public"], "location": cluster.address,
            "pack": "json", "unpack": "json", "signature_scheme": "hmac-sha256"}
    return json.dumps(data, indent=2) + "\n"
