"""`invoke report` without booted hosts: the page from a --json run file (hosts that do not
answer), what it escapes and masks, its file modes, bad input, and the parsers of its facts."""
from __future__ import annotations

import http.server
import json
import os
import re
import stat
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from fleet.course import classreport

from fleet.engine import history
from fleet.aws.cloud import StatusRow
from fleet.engine.results import HostResult, RunResult, StepResult
from tests.fixtures import fleet

EVIL = "<script>alert(1)</script>"


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again: connecting is refused at once


@pytest.fixture()
def course(tmp_path):
    port = closed_port()
    hosts = {f"h{i}": {"address": "127.0.0.1", "port": port, "user": "ubuntu"} for i in (1, 2, 3)}
    inventory = tmp_path / "course.yml"
    inventory.write_text(yaml.safe_dump({"name": "ds", "vars": {"roles": ["jupyter", "autostop"]}, "hosts": hosts}))
    diff = f"--- a\n+++ b\n-{EVIL}\n+c.ServerApp.port = 8888\n"
    run = RunResult({
        "h1": HostResult("h1", "ok", steps=[StepResult("jupyter", "venv", "ok", "venv ok")]),
        "h2": HostResult("h2", "drift", steps=[StepResult("jupyter", "unit", "would change", f"update {EVIL}", diff)]),
        "h3": HostResult("h3", "drift", steps=[StepResult("jupyter", "unit", "would change", f"update {EVIL}", diff)]),
    }, check=True)
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(run.to_json()))
    return tmp_path, inventory, run_file


def tokens(state: Path, inventory: Path) -> list[str]:
    out = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    assert out.rc == 0, out.output
    found = re.findall(r"token=([0-9a-f]+)", out.output)
    assert len(found) == 3, out.output
    return found


def rows(html: str) -> dict[str, str]:
    """host -> status, read from the table's cells."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(
        r'<tr data-host="([^"]+)">.*?<td class="status s-[^"]*">([^<]*)', html, re.S)}


def test_page_from_a_run_file(course):
    state, inventory, run_file = course
    page = state / "class.html"
    out = fleet("report", "--json", str(run_file), "--output", str(page), state=state, inventory=inventory)
    assert out.rc == 0, out.output
    assert "3 hosts (1 ok, 2 drift), 1 drift group" in out.output, out.output
    html = page.read_text()
    assert rows(html) == {"h1": "ok", "h2": "drift", "h3": "drift"}
    assert '<div class="group" data-hosts="h2 h3">' in html
    # everything escaped: the diff, the message, nothing runs
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)\s*=|@import|url\(', html)
    # hosts that do not answer say so instead of failing the page
    assert html.count("not probed:") == 3
    assert stat.S_IMODE(page.stat().st_mode) == 0o644
    secret = (state / "secrets" / "ds.key").read_bytes()
    for token in tokens(state, inventory):
        assert token not in html
    assert secret.hex() not in html


def test_with_urls_the_page_holds_tokens_and_is_private(course):
    state, inventory, run_file = course
    page = state / "urls.html"
    out = fleet("report", "--json", str(run_file), "--output", str(page), "--with-urls", state=state, inventory=inventory)
    assert out.rc == 0, out.output
    html = page.read_text()
    for token in tokens(state, inventory):
        assert f"token={token}" in html      # the check above could find a token if one leaked
    assert stat.S_IMODE(page.stat().st_mode) == 0o600


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not JSON"),
    ('{"hosts": {"h1": {"steps": []}}}', "expected the JSON report of `invoke provision` or `invoke check`"),
    ("[]", "expected the JSON report"),
])
def test_bad_run_file(course, content, expected):
    state, inventory, run_file = course
    run_file.write_text(content)
    page = state / "class.html"
    out = fleet("report", "--json", str(run_file), "--output", str(page), state=state, inventory=inventory)
    assert out.rc == 1 and str(run_file) in out.output and expected in out.output and "--json" in out.output, out.output
    assert not page.exists()


def test_output_folder_must_exist(course):
    state, inventory, run_file = course
    out = fleet("report", "--json", str(run_file), "--output", str(state / "nope" / "x.html"), state=state,
                inventory=inventory)
    assert out.rc == 1 and "--output" in out.output and "no such folder" in out.output, out.output


@pytest.mark.parametrize("text, expected", [
    ("LoadState=loaded\nUnitFileState=enabled\nActiveState=active\n---\n"
     '{"checked_at": "2026-12-02T10:00:00+00:00", "idle": false, "reason": "kernel busy"}',
     "enabled, timer on; busy at 2026-12-02T10:00:00Z: kernel busy"),
    ("LoadState=loaded\nUnitFileState=disabled\nActiveState=inactive\n---\n", "disabled, timer inactive"),
    ("LoadState=not-found\nUnitFileState=\nActiveState=inactive\n---\n", "not installed"),
    ("LoadState=loaded\nUnitFileState=enabled\nActiveState=active\n---\n{broken", "enabled, timer on"),
])
def test_autostop_state(text, expected):
    assert classreport.autostop_text(classreport.AUTOSTOP_FACT.parse(text), wanted=True) == expected


@pytest.mark.parametrize("text, expected", [
    ("/opt/jupyter/lib/python3.11/site-packages/mxnet-1.9.1.dist-info\n", "mxnet 1.9.1"),
    ("/opt/jupyter/lib/python3.11/site-packages/mxnet_cu112-1.9.1.dist-info\n", "mxnet-cu112 1.9.1"),
    ("", None),
])
def test_mxnet_installed(text, expected):
    assert classreport.mxnet_fact("/opt/jupyter").parse(text) == expected


@pytest.mark.parametrize("found, expected", [
    ({"answering": True, "version": "2.14.2", "kernels": [["ir", "R"], ["python3", "Python 3 (ipykernel)"]]},
     ("answering, server 2.14.2", True, ["R (ir)", "Python 3 (ipykernel) (python3)"])),
    ({"answering": False, "error": "URLError: refused"}, ("not answering (URLError: refused)", False, [])),
    ({"answering": True, "version": "2.14.2", "error": "HTTPError: 403"},
     ("answering, server 2.14.2; kernels not listed: HTTPError: 403", True, [])),
])
def test_jupyter_state(found, expected):
    assert classreport.jupyter_text(found) == expected


def test_jupyter_probe_keeps_the_token_out_of_arguments():
    command = classreport.jupyter_fact("127.0.0.1", 8888, "abcd1234secret").command
    first, _, rest = command.partition("\n")
    assert first == "python3 -I - <<'__FLEET_PY__'" and "abcd1234secret" not in first
    assert rest.rstrip().endswith("__FLEET_PY__")


def test_jupyter_probe_reads_the_servers_api_with_the_token(tmp_path):
    """The probe as a host runs it (bash, python3 -I on stdin) against a stand-in Jupyter."""
    seen = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = {"/api": {"version": "2.14.2"},
                    "/api/kernelspecs": {"default": "python3", "kernelspecs": {
                        "python3": {"spec": {"display_name": "Python 3"}}, "ir": {"spec": {}}}}}[self.path]
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        fact = classreport.jupyter_fact("127.0.0.1", server.server_address[1], "abcd1234secret")
        done = subprocess.run(["bash", "-c", fact.command], capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.shutdown()
    assert fact.parse(done.stdout) == {"answering": True, "version": "2.14.2", "default": "python3",
                                       "kernels": [["ir", "ir"], ["python3", "Python 3"]]}, done.stderr
    assert seen == [("/api", None), ("/api/kernelspecs", "token abcd1234secret")]


def test_aws_columns():
    rows = [StatusRow("i-1", "lab-1", "running", "g4dn.xlarge", timedelta(hours=2), 0.526, 1.052),
            StatusRow("i-2", "lab-2", "stopped", "g4dn.xlarge", None, 0.0, 0.0),
            StatusRow("i-3", "lab-3", "running", "x9.weird", timedelta(hours=1), None, None)]
    found = classreport.aws_columns(rows, {"lab-1": "i-1", "lab-2": "i-2", "lab-3": "i-3", "lab-4": "i-4"})
    assert found == {"lab-1": ("running g4dn.xlarge", "$1.05 ($0.526/h)"),
                     "lab-2": ("stopped g4dn.xlarge", "$0.00 ($0.000/h)"),
                     "lab-3": ("running x9.weird", "price unknown"),
                     "lab-4": ("i-4: not found", "-")}


def test_last_provision_is_recorded_per_host(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    when = datetime(2026, 12, 2, 9, 30, tzinfo=timezone.utc)
    run = RunResult({"h1": HostResult("h1", "changed", steps=[StepResult("j", "a", "changed", "m")]),
                     "h2": HostResult("h2", "failed", steps=[StepResult("j", "a", "failed", "m")])})
    history.record("inv.yml", run, now=when)
    later = RunResult({"h1": HostResult("h1", "ok"), "h2": HostResult("h2", "skipped")})
    history.record("inv.yml", later, now=when + timedelta(hours=1))
    found = history.last("inv.yml")
    assert found["h1"] == {"time": "2026-12-02T10:30:00+00:00", "status": "ok", "changed": 0, "failed": 0}
    assert found["h2"] == {"time": "2026-12-02T09:30:00+00:00", "status": "failed", "changed": 0, "failed": 1}
    assert history.last("other.yml") == {}
    assert os.path.exists(tmp_path / "last-provision.json")


# ------------------------------------------------------------------ AWS courses, against moto over HTTP

from tests.aws.test_cloud import CIDR, aws, ami, moto_url  # noqa: E402,F401 (fixtures)


def test_aws_course_shows_instance_state_and_cost(aws, ami, tmp_path, monkeypatch):  # noqa: F811
    from fleet.aws import cloud

    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    cloud.launch("art101", 2, ami=ami, cidr=CIDR, wait_ssh=False, instance_type="t3.micro")
    names = sorted(cloud.inventory_hosts("art101")["hosts"])
    # statuses from a run file: the instances' addresses lead nowhere, so nothing is probed
    run = RunResult({n: HostResult(n, "unreachable", error="timed out") for n in names}, check=True)
    (tmp_path / "run.json").write_text(json.dumps(run.to_json()))
    done = classreport.build("all", "aws:art101", str(tmp_path / "aws.html"), json_path=str(tmp_path / "run.json"))
    html = (tmp_path / "aws.html").read_text()
    hourly = cloud.load_prices().hourly["t3.micro"]
    assert done["counts"] == {"unreachable": 2} and done["cost"] is not None
    cells = re.findall(r'<td class="instance small">([^<]*)</td><td class="cost small">([^<]*)</td>', html)
    assert [c[0] for c in cells] == ["running t3.micro"] * 2, cells
    assert all(c[1].startswith("$") and c[1].endswith(f"(${hourly:.3f}/h)") for c in cells), cells
    assert 'id="summary-cost"' in html
    assert '<div class="group" data-hosts="' + " ".join(names) + '">' in html   # grouped as unreachable


@pytest.mark.parametrize("recording, cell, fits", [
    ("h200.txt", "1 x NVIDIA H200 (cc 9.0)", "refused: "),
    ("t4.txt", "1 x Tesla T4 (cc 7.5)", "fits: mxnet-cu"),
    ("no-driver.txt", "-", "fits: mxnet"),
])
def test_gpu_cell_from_recorded_probes(recording, cell, fits):
    from roles.mxnet.gpu import parse_gpu_probe

    facts = parse_gpu_probe((Path(__file__).parent / "data" / "gpu" / recording).read_text())
    found = classreport.gpu_text("h1", facts, {"mxnet_build": "auto"})
    assert found[0] == cell and found[1].startswith(fits), found


@pytest.mark.parametrize("text, expected", [("12 3456\n", (12, 3456)), ("ABSENT\n", None), ("0 0", (0, 0))])
def test_work_size(text, expected):
    fact = classreport.work_fact("student", ["/home/student/notebooks", "projects"])
    assert fact.parse(text) == expected
    # read as the course user; find never follows a link (no -L)
    assert fact.command.startswith("__read_as student ") and "find /home/student/notebooks projects -type f" in fact.command
