"""The test hosts themselves: real systemd, ssh, sudo, apt, private loopback, NAT, faults."""
from __future__ import annotations

import functools
import http.server
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from fleet.testhosts import cgroups
from fleet.testhosts import hosts as testhosts
from fleet.testhosts import layers
from fleet.testhosts.common import child_pids
from fleet.testhosts.hosts import CONTROLLER_ALIAS, TestHost


@pytest.fixture(scope="module")
def two_hosts(hosts_factory: Callable[[int], list[TestHost]]) -> Iterator[list[TestHost]]:
    hosts = hosts_factory(2)
    yield hosts
    testhosts.teardown(hosts)


def test_write_inventory_shape(tmp_path: Path) -> None:
    h1, h2 = TestHost.for_index(1), TestHost.for_index(2)
    path = testhosts.write_inventory([h1, h2], tmp_path / "inv.yml", vars={"python": "3.11"},
                                     groups={"web": [h1], "db": {"hosts": ["h2"], "vars": {"x": 1}}})
    assert yaml.safe_load(path.read_text()) == {
        "vars": {"python": "3.11"},
        "groups": {"web": {"hosts": ["h1"], "vars": {}}, "db": {"hosts": ["h2"], "vars": {"x": 1}}},
        "hosts": {
            "h1": {"address": "10.211.1.2", "user": "ubuntu", "port": 22, "key": str(testhosts.KEY)},
            "h2": {"address": "10.211.2.2", "user": "ubuntu", "port": 22, "key": str(testhosts.KEY)},
        },
    }
    minimal = yaml.safe_load(testhosts.write_inventory([h1], tmp_path / "min.yml").read_text())
    assert list(minimal) == ["hosts"]


@pytest.mark.hosts
def test_systemd_is_running(two_hosts: list[TestHost]) -> None:
    for h in two_hosts:
        state = h.run("systemctl is-system-running --wait", check=False).stdout.strip()
        # on failure, say which units and what they logged: a bare "degraded" cannot be debugged
        why = "" if state == "running" else h.run(
            "systemctl --failed --no-legend --no-pager; systemctl list-jobs --no-pager; "
            "journalctl -b -p warning --no-pager | tail -40", check=False).stdout
        assert state == "running", f"{h.name}: {state}\n{why}"


@pytest.mark.hosts
def test_each_host_has_cgroups_of_its_own(two_hosts: list[TestHost]) -> None:
    # Sharing one, the hosts' systemds made and removed each other's unit cgroups (degraded boots).
    seen = []
    for h in two_hosts:
        container = child_pids(h.pid)             # nspawn's children: the container's init
        assert container, h.name
        for pid in container:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            managed = [line for line in lines if line.split(":")[1] in ("", "name=systemd")]
            assert managed and all(f"/fleet-{h.name}/payload" in line for line in managed), lines
            seen.append(managed)
    assert seen[0] != seen[-1]


@pytest.mark.hosts
def test_a_hosts_cgroups_go_with_it() -> None:
    [h] = testhosts.boot(1)
    groups = cgroups.for_host(h.name)
    assert groups and all((g / "payload").is_dir() for g in groups)
    testhosts.teardown([h])
    assert [g for g in groups if g.exists()] == []


@pytest.mark.hosts
def test_each_host_has_its_own_hostname(two_hosts: list[TestHost]) -> None:
    assert [h.run("hostname").stdout.strip() for h in two_hosts] == [h.name for h in two_hosts]
    assert len({h.name for h in two_hosts}) == 2


@pytest.mark.hosts
def test_passwordless_sudo(two_hosts: list[TestHost]) -> None:
    for h in two_hosts:
        assert h.run("sudo -n true").returncode == 0
        assert h.run("sudo -n id -u").stdout.strip() == "0"


@pytest.mark.hosts
def test_loopback_is_private(two_hosts: list[TestHost]) -> None:
    # Both hosts serve 127.0.0.1:8888 at once, each its own content: as on real machines.
    for h in two_hosts:
        h.run("sudo mkdir -p /srv/www && hostname | sudo tee /srv/www/who >/dev/null && "
              "sudo systemd-run --unit=web8888 -p WorkingDirectory=/srv/www "
              "python3 -m http.server --bind 127.0.0.1 8888")
    for h in two_hosts:
        out = h.run("for i in $(seq 50); do curl -sf http://127.0.0.1:8888/who && exit; sleep 0.1; done; exit 1")
        assert out.stdout.strip() == h.name
        h.run("sudo systemctl stop web8888")


@pytest.mark.hosts
def test_package_install_stays_on_its_host(two_hosts: list[TestHost]) -> None:
    a, b = two_hosts
    a.run("sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends sl", timeout=300)
    assert a.run("dpkg -s sl && test -x /usr/games/sl", check=False).returncode == 0
    assert b.run("dpkg -s sl || test -e /usr/games/sl", check=False).returncode != 0


@pytest.mark.hosts
def test_hosts_reach_the_controller_alias(two_hosts: list[TestHost], tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("from the controller\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer((CONTROLLER_ALIAS, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{CONTROLLER_ALIAS}:{server.server_address[1]}/hello"
        for h in two_hosts:
            assert h.run(f"curl -sf --max-time 10 {url}").stdout == "from the controller\n"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.hosts
def test_allocation_skips_indices_in_use(two_hosts: list[TestHost]) -> None:
    got = testhosts.allocate(2)
    try:
        assert not set(got) & {h.index for h in two_hosts}
    finally:
        for i in got:
            testhosts.release(i)


@pytest.mark.hosts
def test_power_cut_keeps_the_disk(two_hosts: list[TestHost]) -> None:
    h = two_hosts[1]
    boot_id = h.run("cat /proc/sys/kernel/random/boot_id").stdout
    h.run("echo before-the-cut > ~/marker")
    testhosts.power_cut(h)
    assert h.run("true", check=False).returncode != 0          # really down
    t0 = time.monotonic()
    testhosts.boot_again(h)
    assert time.monotonic() - t0 < testhosts.SSH_TIMEOUT
    assert h.run("cat ~/marker").stdout == "before-the-cut\n"
    assert h.run("cat /proc/sys/kernel/random/boot_id").stdout != boot_id


def _layer_with_failing_unit(name: str, once: bool) -> Path:
    """A hand-made layer whose one unit fails at boot: on the first boot only, or on every boot."""
    layer = layers.LAYERS / name
    units = layer / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    guard = "ConditionPathExists=!/var/lib/failed-once\n" if once else ""
    (units / "fail-at-boot.service").write_text(
        f"[Unit]\n{guard}[Service]\nType=oneshot\nExecStart=/bin/sh -c 'touch /var/lib/failed-once; exit 3'\n"
        "[Install]\nWantedBy=multi-user.target\n")
    (units / "multi-user.target.wants/fail-at-boot.service").symlink_to("../fail-at-boot.service")
    for path in [layer, *layer.rglob("*")]:      # world-readable in the host whatever our umask is
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    layers.layer_stamp(layer).write_text(json.dumps({"name": name}))
    return layer


@pytest.mark.hosts
@pytest.mark.parametrize("once", [True, False], ids=["fails-once", "fails-always"])
def test_a_degraded_boot_is_booted_again_or_refused(once: bool, caplog: pytest.LogCaptureFixture) -> None:
    layer = _layer_with_failing_unit(f"test-degraded-{uuid.uuid4().hex[:8]}", once)
    try:
        if once:
            [h] = testhosts.boot(1, layer=layer)
            try:
                assert h.run("systemctl is-system-running").stdout.strip() == "running"
                assert h.run("test -e /var/lib/failed-once", check=False).returncode == 0   # it did fail, once
                assert "fail-at-boot.service" in caplog.text and "booting it again" in caplog.text
            finally:
                testhosts.teardown([h])
        else:
            refused = r"(?s)not running after a second boot.*fail-at-boot\.service"
            with pytest.raises(testhosts.HostError, match=refused):
                testhosts.boot(1, layer=layer)
    finally:
        layers.remove_layer(layer)
