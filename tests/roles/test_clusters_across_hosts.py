"""One ipyparallel cluster across 3 real hosts (a head and two workers) and a 4th outside it.

Through the head's tunnel and token a notebook kernel reaches every member's engines; a map over
1,000 items runs on all of them; a worker whose engines are killed and which loses power comes
back, and so does one rebuilt with a new host key once the instructor drops its old key; the
JupyterLab "IPython Clusters" panel's listing shows the cluster with every member's engines, and
its stop button is refused; the outside host, with the head's address and ports but not the keys, can neither register
an engine nor submit work (while the same command with the real file does register, so the
network itself is open); `check` reports a member whose engines are down; a worker taken out of
the group is retired and put back; a second run changes nothing.

Routing: each host sits in its own network namespace at 10.211.i.2/30 with its default route via
the controller's 10.211.i.1; the controller forwards between the vh-* links (ip_forward=1, FORWARD
policy ACCEPT, and the MASQUERADE rule skips `-o vh-+`), so a worker reaches the head's own
address, as instances in one VPC do. The first test proves it with the head's registration port."""
from __future__ import annotations

import csv
import io
import json
import time

import pytest
import requests
import yaml

from fleet.testhosts import hosts as testhosts
from tests.fixtures import changed_steps, fleet, sh, wait_for
from tests.jupyter_ws import Jupyter, ssh_tunnel

pytestmark = pytest.mark.hosts

SECURITY = "/home/student/.ipython/profile_default/security"
VENV = "/opt/jupyter/bin"
VERIFY = "cluster lab: every member's engines answer the head"
CELL = """
import collections, json, socket
import ipyparallel as ipp
rc = ipp.Client()
rc.wait_for_engines({n}, timeout=120)
names = rc[:].apply_sync(socket.gethostname)

def square(x):
    import socket
    return socket.gethostname(), x * x

squares = rc[:].map_sync(square, range(1000))
print(json.dumps({{"engines": collections.Counter(names), "ok": [s for _, s in squares] == [x * x for x in range(1000)],
                  "map_hosts": sorted(set(h for h, _ in squares))}}))
rc.close()
"""


@pytest.fixture(scope="module")
def course(hosts_factory, tmp_path_factory):
    hosts = hosts_factory(4)
    head, w1, w2, outside = hosts
    state = tmp_path_factory.mktemp("state")
    inventory = state / "course.yml"
    # clusters_group at the `all` level: the 4th host sees the knob but is not in the group.
    testhosts.write_inventory(hosts, inventory, vars={
        "roles": ["jupyter", "clusters"], "course_user": "student",
        "clusters_group": "lab", "clusters_engines": 1, "clusters_wait": 300,
    }, groups={"lab": [head, w1, w2]})
    data = yaml.safe_load(inventory.read_text())
    data["hosts"][w1.name]["vars"] = {"clusters_engines": 2}     # a bigger worker
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    first = fleet("provision", state=state, inventory=inventory, timeout=1500)
    yield hosts, state, inventory, first
    testhosts.teardown(hosts)


def expected(hosts) -> dict[str, int]:
    head, w1, w2, _ = hosts
    return {head.name: 1, w1.name: 2, w2.name: 1}


def token_of(head, state, inventory) -> str:
    handout = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    row = {r["host"]: r for r in csv.DictReader(io.StringIO(handout.output))}[head.name]
    return row["url"].split("token=")[1]


def run_cell(head, state, inventory, engines: int) -> dict:
    token = token_of(head, state, inventory)
    with ssh_tunnel(head, 8888) as port:
        client = Jupyter(port, token)
        kernel = client.start_kernel("python3")
        try:
            return json.loads(client.execute(kernel, CELL.format(n=engines), timeout=240).strip().splitlines()[-1])
        finally:
            client.shutdown(kernel)


def engine_count(head) -> int:
    code = "import ipyparallel as ipp; c = ipp.Client(timeout=20); print(len(c.ids))"
    return int(sh(head, f"cd /home/student && runuser -u student -- {VENV}/python -c '{code}'").stdout.strip())


def test_first_provision_builds_the_cluster(course):
    hosts, _, _, first = course
    head, w1, _, outside = hosts
    assert first.rc == 0, first.output[-4000:]
    verify = {v["name"]: v for v in first.report["hosts"][head.name]["verifies"]}
    assert verify[VERIFY]["ok"], verify
    assert "4 engines" in verify[VERIFY]["output"]
    # A worker reaches the head's own address (routing, see the module's docstring).
    sh(w1, f"timeout 5 bash -c '</dev/tcp/{head.address}/10101'")
    assert sh(outside, "systemctl is-enabled ipengines ipcontroller", check=False).stdout.split() == []


def test_a_notebook_on_the_head_reaches_every_engine(course):
    hosts, state, inventory, _ = course
    result = run_cell(hosts[0], state, inventory, 4)
    assert result["engines"] == expected(hosts)
    assert result["ok"] is True and result["map_hosts"] == sorted(expected(hosts))


def panel_listing(client: Jupyter) -> dict:
    """The cluster across machines as the JupyterLab "IPython Clusters" panel gets it."""
    response = client.get("/ipyparallel/clusters")
    response.raise_for_status()
    return {model["id"]: model for model in response.json()}["default:lab"]


def test_the_jupyterlab_panel_lists_the_cluster_and_its_stop_changes_nothing(course):
    hosts, state, inventory, _ = course
    head = hosts[0]
    with ssh_tunnel(head, 8888) as port:
        client = Jupyter(port, token_of(head, state, inventory))
        # The endpoint the panel calls: the cluster is listed as running, with every member's engines.
        model = panel_listing(client)
        assert "controller" in model and model["engines"]["n"] == 4, model
        assert {m: s["n"] for m, s in model["engines"]["sets"].items()} == expected(hosts)
        # The panel's stop button: refused with a message; no service stops, no engine leaves, the file stays.
        stop = requests.delete(f"{client.base}/ipyparallel/clusters/default:lab", headers=client.auth, timeout=30)
        assert stop.status_code == 409 and "systemd" in stop.json()["message"], stop.text
        start = client.post("/ipyparallel/clusters/default:lab")
        assert start.status_code == 409, start.text
        assert sh(head, "systemctl is-active ipcontroller ipengines").stdout.split() == ["active", "active"]
        assert engine_count(head) == 4
        again = panel_listing(client)
        assert "controller" in again and again["engines"]["n"] == 4
    assert sh(head, f"stat -c '%U %a' {SECURITY}/cluster-jupyter-fleet.json").stdout.split() == ["student", "600"]


def test_ports_keys_and_file_modes(course):
    hosts, _, _, _ = course
    head, w1, _, _ = hosts
    assert sh(head, "stat -c '%U:%G %a' /etc/ipyparallel/cluster.py").stdout.strip() == "root:student 640"
    for host in (head, w1):
        assert sh(host, f"stat -c '%U %a' {SECURITY} {SECURITY}/fleet-cluster-engine.json").stdout.split() == \
            ["student", "700", "student", "600"]
        assert sh(host, "systemctl show -p User --value ipengines").stdout.strip() == "student"
    pinned = [a for a in listening(head) if int(a.rsplit(":", 1)[1]) in range(10000, 11000)]
    assert pinned and all(int(a.rsplit(":", 1)[1]) in range(10101, 10121) for a in pinned), pinned
    # Engines' side on the head's address; the client side (submitting work) on its loopback only.
    assert f"{head.address}:10101" in pinned and "127.0.0.1:10101" in pinned
    assert not [a for a in pinned if a.startswith(("0.0.0.0", "*", "["))], pinned
    client = json.loads(sh(head, f"cat {SECURITY}/ipcontroller-client.json").stdout)
    assert all(f"{head.address}:{client[k]}" not in pinned for k in ("mux", "task", "control", "notification"))


def listening(host) -> list[str]:
    """Listening TCP addresses as IP:PORT, read from /proc/net/tcp (the hosts have no `ss`)."""
    found = []
    for line in sh(host, "cat /proc/net/tcp").stdout.splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            ip_hex, port_hex = local.split(":")
            ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            found.append(f"{ip}:{int(port_hex, 16)}")
    return found


def _rogue_engine(outside, head, connection: dict, seconds: int = 25) -> int:
    """Run one engine on the outside host with this connection file; its exit status (124: still waiting)."""
    sh(outside, f"mkdir -p /root/rogue/ipython && cat > /root/rogue/engine.json <<'EOF'\n{json.dumps(connection)}\nEOF")
    return sh(outside, f"cd /root/rogue && timeout {seconds} {VENV}/ipengine --file=/root/rogue/engine.json "
                       f"--IPEngine.timeout=10 --ipython-dir=/root/rogue/ipython >/root/rogue/log 2>&1",
              check=False).returncode


def test_a_host_outside_without_the_keys_cannot_register_or_submit(course):
    hosts, _, _, _ = course
    head, w1, _, outside = hosts
    real = json.loads(sh(w1, f"cat {SECURITY}/fleet-cluster-engine.json").stdout)
    zmq_keys = f"{VENV}/python -c 'import zmq; p, s = zmq.curve_keypair(); print(p.decode())'"
    guessed = dict(real, key="0" * 64, curve_serverkey=sh(outside, zmq_keys).stdout.strip())
    plain = dict(real, key="", curve_serverkey=None)
    half = dict(real, key="0" * 64)   # the server key without the message key: signatures still fail
    before = engine_count(head)
    for connection in (guessed, plain, half):
        _rogue_engine(outside, head, connection)
        assert engine_count(head) == before, sh(outside, "cat /root/rogue/log").stdout[-2000:]
    # Submitting work: no answer without the keys (and the client side listens on the head's loopback only).
    client = dict(guessed, interface=f"tcp://{head.address}", task_scheme="leastload")
    sh(outside, f"cat > /root/rogue/client.json <<'EOF'\n{json.dumps(client)}\nEOF")
    code = ("import ipyparallel as ipp\ntry:\n    c = ipp.Client(url_file='/root/rogue/client.json', timeout=10)\n"
            "    print(c[:].apply_sync(lambda: 1))\nexcept Exception as e:\n    print('refused', type(e).__name__)")
    out = sh(outside, f"cd /root/rogue && timeout 60 {VENV}/python -c \"{code}\"", check=False).stdout
    assert "refused" in out, out
    # The control: the same command with the real keys does register, so the network was open all along.
    try:
        _start_with(outside, real)
        wait_for(lambda: engine_count(head) == before + 1, timeout=60, interval=2)
    finally:
        sh(outside, "systemctl stop rogue-engine", check=False)
    wait_for(lambda: engine_count(head) == before, timeout=90, interval=3)


def _start_with(outside, connection: dict) -> None:
    sh(outside, f"mkdir -p /root/rogue/ipython && cat > /root/rogue/engine.json <<'EOF'\n{json.dumps(connection)}\nEOF")
    # A transient unit: nothing of it holds the ssh session open, and it is stopped by name.
    sh(outside, f"systemd-run -q --unit=rogue-engine --collect -p WorkingDirectory=/root/rogue timeout 120 "
                f"{VENV}/ipengine --file=/root/rogue/engine.json --ipython-dir=/root/rogue/ipython")


def test_killed_engines_and_a_power_cut_worker_come_back(course):
    hosts, state, inventory, _ = course
    head, w1, _, _ = hosts
    sh(w1, "systemctl kill -s KILL ipengines")
    testhosts.power_cut(w1)
    testhosts.boot_again(w1)
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output[-4000:]
    assert {v["name"]: v["ok"] for v in run.report["hosts"][head.name]["verifies"]}[VERIFY]
    result = run_cell(head, state, inventory, 4)
    assert result["engines"] == expected(hosts) and result["ok"] is True


def test_a_worker_rebuilt_with_a_new_host_key_comes_back(course):
    hosts, state, inventory, _ = course
    head, _, w2, _ = hosts
    known = state / "known_hosts"
    fingerprint = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
    before = sh(w2, fingerprint).stdout.split()[1]
    testhosts.rebuild(w2)    # a fresh disk at the same address: new host keys, nothing of the cluster
    assert sh(w2, fingerprint).stdout.split()[1] != before
    assert sh(w2, "test -e /etc/systemd/system/ipengines.service", check=False).returncode == 1
    assert fleet("disconnect", state=state).rc == 0    # the connection kept to the old machine is gone with it
    refused = fleet("provision", "--hosts", w2.name, state=state, inventory=inventory)
    assert refused.rc == 3 and "If the machine was rebuilt, remove its line" in refused.output, refused.output[-3000:]
    # What that message (and README) asks of the instructor: remove the machine's line, provision again.
    kept = [line for line in known.read_text().splitlines(True) if line.split(" ", 1)[0] != w2.address]
    known.write_text("".join(kept))
    run = fleet("provision", state=state, inventory=inventory, timeout=1500)
    assert run.rc == 0, run.output[-4000:]
    assert {v["name"]: v["ok"] for v in run.report["hosts"][head.name]["verifies"]}[VERIFY]
    assert f"{w2.address} " in known.read_text()      # its new key recorded (trust on first use)
    result = run_cell(head, state, inventory, 4)
    assert result["engines"] == expected(hosts) and result["ok"] is True


def test_check_reports_a_member_whose_engines_are_down(course):
    hosts, state, inventory, _ = course
    head, _, w2, _ = hosts
    kept = inventory.read_text()
    data = yaml.safe_load(kept)
    data["vars"]["clusters_wait"] = 10      # the head's check gives up sooner
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    sh(w2, "systemctl stop ipengines")
    try:
        check = fleet("check", state=state, inventory=inventory)
        assert check.rc == 4, check.output[-3000:]
        verify = {v["name"]: v for v in check.report["hosts"][head.name]["verifies"]}[VERIFY]
        assert not verify["ok"] and f"{w2.name} 0/1" in verify["output"], verify
        assert changed_steps(check.report, w2.name) == ["service ipengines"]
    finally:
        inventory.write_text(kept)
        run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output[-4000:]
    assert sh(w2, "systemctl is-active ipengines").stdout.strip() == "active"


def test_a_worker_taken_out_is_retired_and_put_back(course):
    hosts, state, inventory, _ = course
    head, w1, w2, _ = hosts
    data = yaml.safe_load(inventory.read_text())
    data["groups"]["lab"]["hosts"] = [head.name, w1.name]
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output[-4000:]
    assert set(changed_steps(run.report, w2.name)) == {
        "service ipengines", "absent /etc/systemd/system/ipengines.service", "absent /usr/local/lib/jupyter-fleet-ipengines",
        f"absent {SECURITY}/fleet-cluster-engine.json"}
    assert sh(w2, "systemctl is-active ipengines", check=False).stdout.strip() == "inactive"
    wait_for(lambda: engine_count(head) == 3, timeout=120, interval=3)   # its engines' heartbeats stop
    data["groups"]["lab"]["hosts"] = [head.name, w1.name, w2.name]
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output[-4000:]
    assert run_cell(head, state, inventory, 4)["engines"] == expected(hosts)


def test_second_run_changes_nothing(course):
    hosts, state, inventory, _ = course
    head = hosts[0]
    pid = sh(head, "systemctl show -p MainPID --value ipcontroller").stdout.strip()
    time.sleep(1)
    again = fleet("provision", state=state, inventory=inventory)
    assert again.rc == 0, again.output[-4000:]
    for host in hosts:
        assert changed_steps(again.report, host.name) == [], host.name
        assert again.report["hosts"][host.name]["handlers"] == []
    assert sh(head, "systemctl show -p MainPID --value ipcontroller").stdout.strip() == pid


def test_a_restarted_controller_keeps_every_engine_and_the_panel_follows(course):
    """Last in the module: the controller's own restart (a crash, the head's reboot)."""
    hosts, state, inventory, _ = course
    head = hosts[0]
    with ssh_tunnel(head, 8888) as port:
        client = Jupyter(port, token_of(head, state, inventory))
        sh(head, "systemctl stop ipcontroller")
        try:
            assert "controller" not in panel_listing(client)    # the listing is systemd's state of the moment
        finally:
            sh(head, "systemctl start ipcontroller")
        assert "controller" in panel_listing(client)
    result = run_cell(head, state, inventory, 4)
    assert result["engines"] == expected(hosts) and result["ok"] is True
