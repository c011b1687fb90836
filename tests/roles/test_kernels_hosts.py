"""R and MXNet (CPU build) on a real host: both roles converge, their verifications run, an R
cell executes through the host's Jupyter server, and a second run changes nothing.

No GPU here: the GPU side of the mxnet role (wheel choice, the gate) is tested on recorded
nvidia-smi outputs in test_gpu.py and test_mxnet_role.py, and on a real GPU with scripts/gpu-check."""
from __future__ import annotations

import pytest

from fleet.testhosts import hosts as testhosts
from tests.fixtures import changed_steps, fleet, sh
from tests.jupyter_ws import Jupyter, ssh_tunnel

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def kernels(hosts_factory, tmp_path_factory):
    (host,) = hosts_factory(1)
    state = tmp_path_factory.mktemp("state")
    inventory = state / "kernels.yml"
    testhosts.write_inventory([host], inventory, vars={"roles": ["jupyter", "r_kernel", "mxnet"]})
    first = fleet("provision", state=state, inventory=inventory)
    yield host, state, inventory, first
    testhosts.teardown([host])


def test_r_and_mxnet_converge_and_verify(kernels):
    host, _, _, first = kernels
    assert first.rc == 0, first.output
    result = first.report["hosts"][host.name]
    verifies = {v["name"]: v for v in result["verifies"]}
    assert verifies["the ir kernelspec is visible to the Jupyter server"]["ok"]
    mx = verifies["mxnet imports, matches the GPUs and computes"]
    assert mx["ok"], mx["output"]
    assert "mxnet 1.9.1 on cpu(0) computed [[7.0, 10.0], [15.0, 22.0]]" in mx["output"]
    gate = next(s for s in result["steps"] if s["name"] == "mxnet build check")
    assert gate["status"] == "ok" and gate["message"].startswith("mxnet 1.9.1")
    numpy = sh(host, "/opt/jupyter/bin/python -c 'import numpy; print(numpy.__version__)'").stdout.strip()
    assert tuple(int(x) for x in numpy.split(".")[:2]) < (1, 24)


def test_r_cell_runs_through_jupyter(kernels):
    host, state, inventory, _ = kernels
    token = fleet("tunnel", "--host", host.name, state=state, inventory=inventory).output.split("token=")[1].split()[0]
    with ssh_tunnel(host, 8888) as port:
        client = Jupyter(port, token)
        assert "ir" in client.get("/api/kernelspecs").json()["kernelspecs"]
        kernel = client.start_kernel("ir")
        try:
            assert client.execute(kernel, "cat(sum(1:10), '\\n')").strip() == "55"
        finally:
            client.shutdown(kernel)
        kernel = client.start_kernel("python3")
        try:
            out = client.execute(kernel, "import mxnet as mx\nprint(mx.nd.ones((2, 3)).sum().asscalar())")
            assert out.strip() == "6.0"
        finally:
            client.shutdown(kernel)


def test_second_run_changes_nothing(kernels):
    host, state, inventory, _ = kernels
    again = fleet("provision", state=state, inventory=inventory)
    assert again.rc == 0, again.output
    assert changed_steps(again.report, host.name) == []


def test_gpu_only_course_is_refused_before_installing_anything(kernels):
    host, state, inventory, _ = kernels
    run = fleet("provision", "--roles", "mxnet", "--set", "mxnet_build=gpu", state=state, inventory=inventory)
    assert run.rc == 2, run.output
    steps = run.report["hosts"][host.name]["steps"]
    assert steps[0]["name"] == "mxnet build check" and steps[0]["status"] == "failed"
    assert steps[0]["message"].startswith("refused:")
    assert {s["status"] for s in steps[1:]} == {"skipped"}


def test_gpus_and_facts_tables(kernels):
    host, state, inventory, _ = kernels
    gpus = fleet("gpus", state=state, inventory=inventory)
    assert gpus.rc == 0, gpus.output
    row = next(line for line in gpus.output.splitlines() if line.strip().startswith(host.name))
    assert "mxnet" in row and "yes" in row, gpus.output  # no GPU: the CPU build, which can run
    facts = fleet("facts", state=state, inventory=inventory)
    assert facts.rc == 0, facts.output
    assert "Debian GNU/Linux 12" in facts.output and ("x86_64" in facts.output or "aarch64" in facts.output), facts.output


def test_kernel_environment_follows_the_gpu(kernels):
    """A host whose GPU needed MXNET_USE_FUSION=0 (an Ada card) and now has none: the drop-in
    had put the variable into the server's and so the kernels' environment; a run removes it
    and restarts Jupyter without it. (Writing it needs an Ada GPU: tested on recordings.)"""
    host, state, inventory, _ = kernels
    dropin = "/etc/systemd/system/jupyter.service.d/fleet-mxnet.conf"
    server_env = "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value jupyter)/environ"
    sh(host, f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nEnvironment=MXNET_USE_FUSION=0\\n' > {dropin} "
             "&& systemctl daemon-reload && systemctl restart jupyter")
    assert "MXNET_USE_FUSION=0" in sh(host, server_env).stdout
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output
    step = next(s for s in run.report["hosts"][host.name]["steps"] if s["name"] == "mxnet environment for the kernels")
    assert step["status"] == "changed" and step["message"].startswith(f"remove {dropin}"), step
    assert run.report["hosts"][host.name]["handlers"] == ["restart jupyter"]
    assert sh(host, f"test -e {dropin}", check=False).returncode == 1
    assert "MXNET_USE_FUSION" not in sh(host, server_env).stdout
    assert changed_steps(fleet("provision", state=state, inventory=inventory).report, host.name) == []
