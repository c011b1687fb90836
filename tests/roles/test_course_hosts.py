"""The course roles on 2 real hosts (jupyter, repos, clusters), used through an SSH tunnel by
a real Jupyter client: kernels, the course notebook, terminals, the cluster check, idempotence,
a per-host port change and student work that survives a repair."""
from __future__ import annotations

import csv
import hashlib
import io
import shlex

import pytest
import yaml

from fleet.testhosts import hosts as testhosts
from tests.fixtures import changed_steps, fleet, git_server, sh  # noqa: F401 (fixture)
from tests.jupyter_ws import Jupyter, ssh_tunnel

pytestmark = pytest.mark.hosts


def main_pid(host) -> str:
    return sh(host, "systemctl show -p MainPID --value jupyter").stdout.strip()


@pytest.fixture(scope="module")
def course(hosts_factory, git_server, tmp_path_factory):  # noqa: F811
    hosts = hosts_factory(2)
    state = tmp_path_factory.mktemp("state")
    inventory = state / "course.yml"
    testhosts.write_inventory(hosts, inventory, vars={
        "roles": ["jupyter", "repos", "clusters"],
        "repos_list": [{"url": git_server.url("course.git"), "dest": "course", "ref": "main"}],
    })
    first = fleet("provision", state=state, inventory=inventory)
    yield hosts, state, inventory, first
    testhosts.teardown(hosts)


def tokens(state, inventory) -> dict[str, dict]:
    handout = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    assert handout.rc == 0, handout.output
    rows = list(csv.DictReader(io.StringIO(handout.output)))
    return {row["host"]: row for row in rows}


def test_first_provision_converges_and_verifies(course):
    hosts, _, _, first = course
    assert first.rc == 0, first.output
    for host in hosts:
        result = first.report["hosts"][host.name]
        assert result["status"] == "changed"
        verified = {v["name"]: v["ok"] for v in result["verifies"]}
        assert verified == {"jupyter answers /api/status with the token": True,
                            "a 2-engine cluster runs a task on both engines": True}, result["verifies"]
        cluster = next(v for v in result["verifies"] if "cluster" in v["name"])
        assert "2 engines answered" in cluster["output"]


def test_kernel_and_course_notebook_through_the_tunnel(course):
    hosts, state, inventory, _ = course
    access = tokens(state, inventory)
    for host in hosts:
        row = access[host.name]
        token = row["url"].split("token=")[1]
        assert row["tunnel"].startswith("ssh -N -L 8888:localhost:8888")
        with ssh_tunnel(host, 8888) as port:
            client = Jupyter(port, token)
            assert client.get("/api", auth=False).status_code == 200           # health check, no token
            assert client.get("/api/status", auth=False).status_code == 403    # needs the token
            assert client.get("/api/status").status_code == 200
            # jupyter_lab_settings reached the running server: no news prompt, no update check
            notification = client.get("/lab/api/settings/@jupyterlab/apputils-extension:notification").json()
            defaults = {k: v.get("default") for k, v in notification["schema"]["properties"].items()}
            assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults
            kernel = client.start_kernel("python3")
            try:
                assert client.execute(kernel, "print(6 * 7)").strip() == "42"
                assert "/opt/jupyter" in client.execute(kernel, "import sys; print(sys.prefix)")
            finally:
                client.shutdown(kernel)
            outputs = client.run_notebook("course/week1/hello.ipynb")
            assert outputs[0].strip() == "total 45"
            assert outputs[1].startswith("python 3.")
            terminal = client.post("/api/terminals")                          # New -> Terminal works
            assert terminal.status_code == 200, terminal.text
            assert terminal.json()["name"]


def test_config_and_secret_file_modes(course):
    hosts, _, _, _ = course
    h = hosts[0]
    assert sh(h, "stat -c '%U:%G %a' /etc/jupyter/jupyter_server_config.py").stdout.strip() == "root:student 640"
    config = sh(h, "cat /etc/jupyter/jupyter_server_config.py").stdout
    assert "c.ServerApp.port_retries = 0" in config and 'c.ServerApp.ip = "127.0.0.1"' in config
    assert sh(h, "systemctl show -p User --value jupyter").stdout.strip() == "student"
    assert sh(h, "stat -c %U /home/student/notebooks/course/README.md").stdout.strip() == "student"


def test_second_run_changes_nothing_and_does_not_restart(course):
    hosts, state, inventory, _ = course
    pids = {h.name: main_pid(h) for h in hosts}
    again = fleet("provision", state=state, inventory=inventory)
    assert again.rc == 0, again.output
    for host in hosts:
        assert changed_steps(again.report, host.name) == []
        assert again.report["hosts"][host.name]["handlers"] == []
        assert main_pid(host) == pids[host.name]


def test_port_change_on_one_host_restarts_only_that_host(course):
    hosts, state, inventory, _ = course
    one, other = hosts
    data = yaml.safe_load(inventory.read_text())
    data["hosts"][one.name]["vars"] = {"jupyter_port": 8890}
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    pids = {h.name: main_pid(h) for h in hosts}
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output
    # The server's config, and the student's tunnel follows the port: sshd's PermitOpen and the key's permitopen.
    assert changed_steps(run.report, one.name) == [
        "template sshd_course_user.conf.j2 -> /etc/ssh/sshd_config.d/50-jupyter-fleet.conf",
        "file /etc/ssh/jupyter-fleet-keys/student",
        "template jupyter_server_config.py.j2 -> /etc/jupyter/jupyter_server_config.py"]
    assert run.report["hosts"][one.name]["handlers"] == ["reload sshd", "restart jupyter"]
    assert changed_steps(run.report, other.name) == [] and run.report["hosts"][other.name]["handlers"] == []
    assert main_pid(other) == pids[other.name] and main_pid(one) != pids[one.name]
    token = tokens(state, inventory)[one.name]["url"].split("token=")[1]
    with ssh_tunnel(one, 8890) as port:
        assert Jupyter(port, token).get("/api/status").status_code == 200
    tunnel = fleet("tunnel", "--host", one.name, state=state, inventory=inventory)
    assert "8890:localhost:8890" in tunnel.output and "localhost:8890/lab?token=" in tunnel.output


def test_student_work_survives_a_repair_byte_for_byte(course, git_server):  # noqa: F811
    hosts, state, inventory, _ = course
    student, clean = hosts
    readme = "/home/student/notebooks/course/README.md"
    edit = "# Course\n\nmy answers: \u00e9\u00e8 42\n"
    sh(student, f"sudo -u student bash -c {shlex.quote(f'printf %s {shlex.quote(edit)} > {readme}')}")
    before = hashlib.sha256(sh(student, f"cat {readme}").stdout.encode()).hexdigest()
    new_sha = git_server.commit("course.git", {"week2/more.md": "week 2\n"}, "week 2")
    run = fleet("provision", state=state, inventory=inventory)
    assert run.rc == 0, run.output
    kept = [s for s in run.report["hosts"][student.name]["steps"] if s["name"].startswith("git ")]
    assert kept[0]["status"] == "ok" and kept[0]["message"].startswith("kept: local changes")
    assert hashlib.sha256(sh(student, f"cat {readme}").stdout.encode()).hexdigest() == before
    assert sh(student, "test -e /home/student/notebooks/course/week2/more.md", check=False).returncode != 0
    # The clean checkout on the other host moved to the new commit.
    assert sh(clean, "runuser -u student -- git -C /home/student/notebooks/course rev-parse HEAD").stdout.strip() == new_sha
    assert any(s["name"].startswith("git ") for s in run.report["hosts"][clean.name]["steps"]
               if s["status"] == "changed")


def test_stray_json_config_is_drift_and_repair_removes_it(course):
    hosts, state, inventory, _ = course
    h = hosts[1]
    sh(h, "echo '{\"ServerApp\": {\"ip\": \"0.0.0.0\"}}' > /etc/jupyter/jupyter_server_config.json")
    check = fleet("check", "--hosts", h.name, state=state, inventory=inventory)
    assert check.rc == 4, check.output
    assert "absent /etc/jupyter/jupyter_server_config.json" in changed_steps(check.report, h.name)
    run = fleet("provision", "--hosts", h.name, state=state, inventory=inventory)
    assert run.rc == 0, run.output
    assert run.report["hosts"][h.name]["handlers"] == ["restart jupyter"]
    assert sh(h, "test -e /etc/jupyter/jupyter_server_config.json", check=False).returncode == 1


def test_unreachable_repository_fails_that_item_only(course, git_server):  # noqa: F811
    hosts, state, inventory, _ = course
    repos = [{"url": git_server.url("missing.git"), "dest": "missing"},
             {"url": git_server.url("course.git"), "dest": "course2"}]
    run = fleet("provision", "--hosts", hosts[1].name, "--set", "repos_list=" + yaml.safe_dump(repos, default_flow_style=True).strip(),
                state=state, inventory=inventory)
    assert run.rc == 2, run.output  # 2: a host failed
    steps = {s["name"]: s for s in run.report["hosts"][hosts[1].name]["steps"]}
    missing = next(s for name, s in steps.items() if "missing.git" in name)
    assert missing["status"] == "failed" and "cannot reach repository" in missing["message"]
    other = next(s for name, s in steps.items() if "course2" in name)
    assert other["status"] == "changed"
    assert sh(hosts[1], "test -d /home/student/notebooks/course2/.git", check=False).returncode == 0


ARTIFACTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "artifacts"


def test_jupyterlab_launcher_in_headless_chromium(course):
    """JupyterLab through the tunnel in Debian's Chromium (no browser download): the launcher shows
    the Python kernel, and the IPython Clusters sidebar is there. The screenshot is kept as an artifact."""
    from playwright.sync_api import sync_playwright

    hosts, state, inventory, _ = course
    host = hosts[1]  # still on port 8888
    token = tokens(state, inventory)[host.name]["url"].split("token=")[1]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-launcher.png"
    with ssh_tunnel(host, 8888) as port, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/lab?token={token}", timeout=60_000)
            card = page.locator(".jp-LauncherCard", has_text="Python 3").first
            card.wait_for(timeout=60_000)
            page.screenshot(path=str(shot))
            assert card.is_visible()
            sidebar = page.locator("[title*='Cluster'], [data-id*='cluster'], [id*='cluster']")
            assert sidebar.count() > 0, "no IPython Clusters panel in JupyterLab's sidebar"
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
