"""A class at a glance on 4 real hosts (roles jupyter and autostop): a script changed a student-
facing setting on 3 of them the same way and on 1 differently; `check` shows exactly two groups,
its JSON has them, and the `invoke report` page, opened in headless Chromium, shows every host's
status as the run has it, the kernels the servers list, and no secret."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet.transport import keeper

from fleet.testhosts import hosts as testhosts
from fleet.engine.drift import compact
from tests.fixtures import fleet, sh

pytestmark = pytest.mark.hosts

CONFIG = "/etc/jupyter/jupyter_server_config.py"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def classroom(hosts_factory, tmp_path_factory):
    hosts = hosts_factory(4)
    state = tmp_path_factory.mktemp("classreport")
    inventory = state / "class.yml"
    testhosts.write_inventory(hosts, inventory, vars={
        "roles": ["jupyter", "autostop"],
        # never stops a test host: a long idle time, and a harmless command if it ever fired
        "autostop_idle_minutes": 600, "autostop_poweroff_command": "touch /run/would-power-off",
    })
    first = fleet("provision", state=state, inventory=inventory)
    assert first.rc == 0, first.output[-3000:]
    # The same edit on three machines, another on the fourth: the config is a secret file (it
    # holds the token), so only the digest of its masked diff can tell the two apart.
    for host in hosts[1:]:
        sh(host, f"echo 'c.ServerApp.shutdown_no_activity_timeout = 600' >> {CONFIG}")
    sh(hosts[0], f"echo 'c.ServerApp.open_browser = True' >> {CONFIG}")
    yield hosts, state, inventory, first
    keeper.stop(state)
    testhosts.teardown(hosts)


def secrets_of(state: Path, inventory: Path) -> list[str]:
    handout = fleet("handout", "--format", "csv", state=state, inventory=inventory)
    assert handout.rc == 0, handout.output
    found = re.findall(r"token=([0-9a-f]+)", handout.output)
    assert len(found) == 4, handout.output
    key = next((state / "secrets").glob("*.key")).read_bytes()
    return found + [key.hex()]


@pytest.mark.parametrize("command", [("check",), ("provision", "--check", "--diff")])
def test_check_shows_exactly_two_groups(classroom, command):
    hosts, state, inventory, _ = classroom
    names = [h.name for h in hosts]
    run = fleet(*command, state=state, inventory=inventory)
    assert run.rc == 4, run.output[-3000:]
    groups = run.report["drift_groups"]
    assert [g["hosts"] for g in groups] == [names[1:], names[:1]], groups
    for group in groups:
        assert [c["message"] for c in group["changes"]] == [f"update {CONFIG}"], group
        assert group["handlers"] == ["restart jupyter"]
    lines = run.output.splitlines()
    assert "2 distinct change sets over 4 hosts:" in lines, run.output
    assert f"3 hosts: {compact(names[1:])}" in lines and f"1 host: {names[0]}" in lines, run.output
    assert lines.index("unlike any other:") < lines.index(f"1 host: {names[0]}")
    # each change is shown once per group, not once per host
    assert sum(1 for line in lines if line.strip().endswith(f"update {CONFIG}")) == 2, run.output
    # one summary line per host
    for name in names:
        assert sum(1 for line in lines if re.match(rf"\s*drift {name} ok=\d+ changed=1 failed=0 \(", line)) == 1


def read_table(page_file: Path, screenshot: Path | None = None) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The rendered page's host table as Chromium shows it, and any request beyond the file itself."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            table = {}
            for row in page.locator("#hosts tbody tr").all():
                # each cell's first class names its column
                cells = {c.get_attribute("class").split()[0]: c.inner_text().strip() for c in row.locator("td").all()}
                table[row.get_attribute("data-host")] = cells
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return table, [u for u in requests if u != page_file.as_uri()]


def test_report_page_in_headless_chromium(classroom):
    hosts, state, inventory, first = classroom
    names = [h.name for h in hosts]
    check = fleet("check", state=state, inventory=inventory)
    assert check.rc == 4, check.output[-3000:]
    statuses = {n: r["status"] for n, r in check.report["hosts"].items()}
    assert statuses == dict.fromkeys(names, "drift")

    ARTIFACTS.mkdir(exist_ok=True)
    fresh, from_file = state / "class.html", state / "from-run.html"
    made = fleet("report", "--output", str(fresh), state=state, inventory=inventory)
    assert made.rc == 0, made.output[-3000:]
    assert "4 hosts (4 drift), 2 drift groups, Jupyter answering on 4 of 4" in made.output, made.output
    run_file = max(state.glob("report-*.json"), key=lambda p: p.stat().st_mtime)   # the check's above
    again = fleet("report", "--json", str(run_file), "--output", str(from_file), state=state, inventory=inventory)
    assert again.rc == 0, again.output[-3000:]

    shot = ARTIFACTS / "class-report.png"
    table, requests = read_table(fresh, shot)
    assert shot.stat().st_size > 10_000
    assert requests == [], requests                                   # nothing fetched: self-contained
    assert {h: cells["status"].splitlines()[0] for h, cells in table.items()} == statuses
    provisioned = {n: r["status"] for n, r in first.report["hosts"].items()}
    for name in names:
        cells = table[name]
        assert cells["jupyter"].startswith("answering, server 2."), cells
        assert "Python 3 (ipykernel) (python3)" in cells["kernels"], cells
        assert cells["roles"] == "jupyter, autostop"
        assert cells["autostop"].startswith("enabled, timer on"), cells
        assert cells["last"].endswith(f"{provisioned[name]} ({_changed(first, name)} changed, 0 failed)"), cells
        assert cells["gpu"] == "-" and cells["mxnet"] == "-"           # no GPU here, no mxnet role

    from_run, _ = read_table(from_file)
    assert {h: c["status"].splitlines()[0] for h, c in from_run.items()} == statuses

    html = fresh.read_text()
    assert f'data-hosts="{" ".join(names[1:])}"' in html and f'data-hosts="{names[0]}"' in html
    for secret in secrets_of(state, inventory):
        assert secret not in html and secret not in from_file.read_text()


def _changed(run, name: str) -> int:
    return sum(1 for s in run.report["hosts"][name]["steps"] if s["status"] == "changed")
