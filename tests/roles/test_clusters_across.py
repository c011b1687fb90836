"""One ipyparallel cluster across machines, without hosts: who is head and member, the bad
inventories refused before any host is touched (naming file and key), the connection files and
config each host gets (pinned ports, keys from the course secret, the same on every member and
every run), what a host outside the cluster retires, and the Curve keys against pyzmq's own."""
from __future__ import annotations

import json
import os

import pytest

from fleet.engine.compile import compile_plans
from fleet.engine.roles import RoleSet
from fleet.engine.secrets import CourseSecrets, Masker
from fleet.engine.steps import Absent, Command, File, Service
from fleet.errors import InputError, InputErrors
from fleet.inventory import files as inventory
from roles.clusters import curve
from roles.clusters.topology import PORTS_NEEDED

SECURITY = "/home/student/.ipython/profile_default/security"
BASE = {"roles": ["jupyter", "clusters"], "course_user": "student", "clusters_group": "lab", "clusters_engines": 2}
HOSTS = {f"h{i}": {"address": f"10.211.{i}.2", "user": "ubuntu"} for i in range(1, 5)}


def compile_course(tmp_path, vars=None, groups=None, hosts=None, names=None):
    data = {"name": "course", "vars": {**BASE, **(vars or {})},
            "groups": groups if groups is not None else {"lab": {"hosts": ["h1", "h2", "h3"]}},
            "hosts": hosts or HOSTS}
    inv = inventory.from_data(data, str(tmp_path / "course.yml"))
    masker = Masker()
    plans = compile_plans(inv, names or list(inv.hosts), roleset=RoleSet(), overrides={}, only_roles=None,
                          secrets=CourseSecrets(tmp_path / "secrets", "course", masker), masker=masker)
    return plans, masker


def files(plan) -> dict[str, File]:
    return {s.path: s for _, s in plan.steps if isinstance(s, File)}


def services(plan) -> dict[str, tuple[bool, bool]]:
    return {s.unit: (s.enabled, s.running) for role, s in plan.steps if role == "clusters" and isinstance(s, Service)}


def test_head_runs_the_controller_and_every_member_runs_engines(tmp_path):
    plans, _ = compile_course(tmp_path)
    assert services(plans["h1"]) == {"ipcontroller": (True, True), "ipengines": (True, True)}
    for worker in ("h2", "h3"):
        assert services(plans[worker]) == {"ipengines": (True, True), "ipcontroller": (False, False)}
    assert services(plans["h4"]) == {"ipcontroller": (False, False), "ipengines": (False, False)}
    engine = f"{SECURITY}/fleet-cluster-engine.json"
    # Rendered on the controller: byte for byte the same file on every member, written as the course user, 0600.
    contents = {files(plans[h])[engine].content for h in ("h1", "h2", "h3")}
    assert len(contents) == 1
    step = files(plans["h2"])[engine]
    assert (step.user, step.mode, step.secret) == ("student", "0600", True)
    assert engine not in files(plans["h4"])
    absent = {s.path for _, s in plans["h4"].steps if isinstance(s, Absent)}
    assert {engine, "/etc/systemd/system/ipengines.service", "/usr/local/lib/jupyter-fleet-ipengines"} <= absent
    # The client file has ipyparallel's default name, which a local cluster the student starts also
    # writes: it is removed only where Fleet's head mark says Fleet wrote it.
    assert f"{SECURITY}/ipcontroller-client.json" not in absent
    retire = next(s for _, s in plans["h4"].steps if isinstance(s, Command))
    assert retire.unless == f"test ! -e {SECURITY}/fleet-cluster-head" and retire.user == "student"
    assert f"{SECURITY}/fleet-cluster-head" in files(plans["h1"])


def test_connection_files_pin_every_port_and_carry_the_keys(tmp_path):
    plans, masker = compile_course(tmp_path, {"clusters_ports": "11000-11017"})
    head = files(plans["h1"])
    engine = json.loads(head[f"{SECURITY}/fleet-cluster-engine.json"].content)
    client = json.loads(head[f"{SECURITY}/ipcontroller-client.json"].content)
    assert engine["interface"] == "tcp://10.211.1.2" and engine["location"] == "10.211.1.2"
    assert client["interface"] == "tcp://127.0.0.1"       # work is submitted on the head only
    ports = [engine[k] for k in ("registration", "control", "mux", "task", "iopub", "hb_ping", "hb_pong")]
    ports += engine["broadcast"] + [client[k] for k in ("control", "mux", "task", "iopub", "notification", "broadcast")]
    config = head["/etc/ipyparallel/cluster.py"]
    internal = json.loads(config.content.decode().split("c.IPController.ports = ")[1].splitlines()[0])
    assert sorted(ports + internal) == list(range(11000, 11018)) and client["registration"] == engine["registration"]
    assert (config.owner, config.group, config.mode, config.secret) == ("root", "student", "0640", True)
    text = config.content.decode()
    assert "c.IPController.enable_curve = True" in text and "c.IPController.reuse_files = True" in text
    assert "c.IPController.restore_engines = True" in text   # a restarted controller takes its engines back
    assert f'c.IPController.curve_publickey = b"{engine["curve_serverkey"]}"' in text
    assert f'c.Session.key = b"{engine["key"]}"' in text
    # Every key is masked wherever output is shown.
    secret = text.split('curve_secretkey = b"')[1].split('"')[0]
    for value in (secret, engine["key"], engine["curve_serverkey"]):
        assert masker(f"x {value} y") == "x ******** y"


def test_keys_are_stable_per_course_and_differ_per_cluster(tmp_path):
    def key(plans):
        return json.loads(files(plans["h1"])[f"{SECURITY}/fleet-cluster-engine.json"].content)

    first, again = key(compile_course(tmp_path)[0]), key(compile_course(tmp_path)[0])
    assert first == again
    other = key(compile_course(tmp_path, {"clusters_group": "lab2"}, groups={"lab2": {"hosts": ["h1", "h2"]}})[0])
    assert other["curve_serverkey"] != first["curve_serverkey"] and other["key"] != first["key"]
    assert key(compile_course(tmp_path / "other-course")[0])["key"] != first["key"]


def test_named_head_and_address_and_the_head_check(tmp_path):
    plans, _ = compile_course(tmp_path, {"clusters_head": "h3", "clusters_address": "172.31.0.9"})
    assert services(plans["h3"])["ipcontroller"] == (True, True)
    assert services(plans["h1"])["ipcontroller"] == (False, False)
    engine = json.loads(files(plans["h1"])[f"{SECURITY}/fleet-cluster-engine.json"].content)
    assert engine["interface"] == "tcp://172.31.0.9"
    verify = [v for _, v in plans["h3"].verifies if v.name.startswith("cluster lab")]
    assert len(verify) == 1 and verify[0].every_run and verify[0].user == "student"
    assert '{"h1": 2, "h2": 2, "h3": 2}' in verify[0].script
    assert not [v for _, v in plans["h1"].verifies if v.name.startswith("cluster lab")]


def test_per_host_engine_counts_reach_the_head_check(tmp_path):
    hosts = dict(HOSTS, h2={**HOSTS["h2"], "vars": {"clusters_engines": 1}}, h3={**HOSTS["h3"], "vars": {"clusters_engines": 0}})
    plans, _ = compile_course(tmp_path, hosts=hosts, names=["h1"])  # the head alone: members' vars still resolved
    verify = next(v for _, v in plans["h1"].verifies if v.name.startswith("cluster lab"))
    assert '{"h1": 2, "h2": 1, "h3": 0}' in verify.script
    script = files(compile_course(tmp_path, hosts=hosts, names=["h3"])[0]["h3"])["/usr/local/lib/jupyter-fleet-ipengines"]
    assert "engines=$(nproc)" in script.content.decode()     # 0: one engine per CPU of that host


@pytest.mark.parametrize("vars,groups,key,fragment", [
    ({"clusters_group": "nope"}, None, "clusters_group", "no inventory group named 'nope'"),
    ({"clusters_head": "h9"}, None, "clusters_head", "no host named 'h9' in the inventory"),
    ({"clusters_head": "h4"}, None, "clusters_head", "the head 'h4' is not in the cluster's group 'lab'"),
    ({"clusters_ports": "10101-10110"}, None, "clusters_ports", f"has 10 ports; an ipyparallel controller needs {PORTS_NEEDED}"),
    ({"clusters_ports": "high"}, None, "clusters_ports", "expected a port range FIRST-LAST"),
    ({}, {"lab": {"hosts": ["h1", "h2"]}, "lab2": {"hosts": ["h2", "h3"], "vars": {"clusters_group": "lab2"}}},
     "clusters_group", "host h2 is in the groups lab and lab2"),
])
def test_bad_cluster_inventories_are_refused_naming_file_and_key(tmp_path, vars, groups, key, fragment):
    with pytest.raises((InputError, InputErrors)) as info:
        compile_course(tmp_path, vars, groups)
    errors = info.value.errors if isinstance(info.value, InputErrors) else [info.value]
    assert any(e.key == key and fragment in str(e) and "course.yml" in str(e) for e in errors), [str(e) for e in errors]


def test_curve_keys_match_pyzmq():
    import zmq   # pyzmq comes with jupyter_client, a test dependency: no skip that could hide in CI
    from zmq.utils import z85

    for _ in range(20):
        seed = os.urandom(32)
        public, secret = curve.keypair(seed)
        assert secret == z85.encode(seed).decode()
        assert public == zmq.curve_public(secret.encode()).decode()
    with pytest.raises(ValueError):
        curve.keypair(b"short")


def test_on_aws_engines_reach_the_heads_private_address(tmp_path):
    """The aws inventory gives each host its private_ip: the cluster's group only matches VPC traffic."""
    hosts = dict(HOSTS, h1={"address": "198.51.100.11", "user": "ubuntu", "vars": {"private_ip": "172.31.7.7"}})
    plans, _ = compile_course(tmp_path, hosts=hosts, names=["h2"])
    engine = json.loads(files(plans["h2"])[f"{SECURITY}/fleet-cluster-engine.json"].content)
    assert engine["interface"] == "tcp://172.31.7.7" and engine["location"] == "172.31.7.7"
    config = files(compile_course(tmp_path, hosts=hosts, names=["h1"])[0]["h1"])["/etc/ipyparallel/cluster.py"]
    assert 'c.IPController.engine_ip = "172.31.7.7"' in config.content.decode()


@pytest.mark.parametrize("gpus,seen", [(2, ["0", "0", "1"]), (0, ["all", "all", "all"])])
def test_engines_script_runs_n_engines_and_gives_each_a_gpu_in_turn(tmp_path, gpus, seen):
    """The rendered script, run by bash here with stand-ins for nvidia-smi and ipengine."""
    import subprocess
    import time

    plans, _ = compile_course(tmp_path, {"clusters_engines": 3}, names=["h2"])
    script = tmp_path / "ipengines"
    script.write_bytes(files(plans["h2"])["/usr/local/lib/jupyter-fleet-ipengines"].content)
    bin_dir, out = tmp_path / "bin", tmp_path / "seen"
    bin_dir.mkdir()
    (bin_dir / "ipengine").write_text(f"#!/bin/sh\necho \"${{CUDA_VISIBLE_DEVICES-all}} $*\" >> {out}\n")
    if gpus:
        lines = "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i})'\n" for i in range(gpus))
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n" + lines)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1   # an engine exited: the unit exits, systemd starts them all again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(out.read_text().splitlines() if out.exists() else []) < 3:
        time.sleep(0.05)
    lines = out.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == seen
    assert all(line.split()[1:] == ["--profile=default", f"--file={SECURITY}/fleet-cluster-engine.json"] for line in lines)


def test_the_head_describes_the_cluster_to_the_jupyterlab_panel(tmp_path):
    hosts = dict(HOSTS, h2={**HOSTS["h2"], "vars": {"clusters_engines": 3}})
    plans, _ = compile_course(tmp_path, hosts=hosts)
    head = files(plans["h1"])
    panel = head[f"{SECURITY}/cluster-jupyter-fleet.json"]
    assert (panel.user, panel.mode, panel.secret) == ("student", "0600", False)
    data = json.loads(panel.content)
    assert data["cluster"]["cluster_id"] == "lab" and data["cluster"]["class"] == "jupyter_fleet_cluster.ServiceCluster"
    assert data["cluster"]["profile_dir"] == "/home/student/.ipython/profile_default"
    assert data["controller"]["state"] == {"cluster_id": "lab", "host": "h1", "profile_dir":
                                           "/home/student/.ipython/profile_default", "state": "running",
                                           "unit": "ipcontroller"}
    assert {m: s["n"] for m, s in data["engines"]["sets"].items()} == {"h1": 2, "h2": 3, "h3": 2}
    assert "key" not in panel.content.decode()     # no secret in it: the keys stay in the connection files
    module = head["/usr/local/lib/jupyter-fleet/python/jupyter_fleet_cluster.py"]
    config = head["/usr/local/etc/jupyter/jupyter_server_config.py"]
    assert module.notify == config.notify == ("restart jupyter",)
    assert "/usr/local/lib/jupyter-fleet/python" in config.content.decode()
    for other in ("h2", "h4"):    # a worker and a host outside: nothing of the panel, and any left is retired
        assert not {p for p in files(plans[other]) if "jupyter_fleet_cluster" in p or "cluster-jupyter-fleet" in p}
        absent = {s.path for _, s in plans[other].steps if isinstance(s, Absent)}
        assert {module.path, config.path} <= absent
        retire = next(s for _, s in plans[other].steps if isinstance(s, Command))
        assert f"{SECURITY}/cluster-jupyter-fleet.json" in retire.command
