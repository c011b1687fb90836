"""A course lock on 3 real hosts: every host installs the same packages, exactly the lock's; a
changed lock repairs exactly the packages that changed; a host changed by hand is drift. The
wheels come from the controller (package_source: controller, the default): a host with no route
to the internet installs the lock all the same; with `package_source: index` each host downloads."""
from __future__ import annotations


import pytest
import yaml
from packaging.utils import canonicalize_name, parse_wheel_filename

from fleet.engine import pylock
from fleet.testhosts import hosts as testhosts
from fleet.testhosts.offline import without_internet
from tests.fixtures import fleet, sh

pytestmark = pytest.mark.hosts
STEP = "pip requests==2.32.3"   # the name goes on with the extras, then " in /opt/locked"


@pytest.fixture(scope="module")
def locked(hosts_factory, tmp_path_factory):
    hosts = hosts_factory(3)
    state = tmp_path_factory.mktemp("state")
    inventory = state / "course.yml"
    testhosts.write_inventory(hosts, inventory, vars={"roles": ["locked"]})
    made = fleet("lock", state=state, inventory=inventory, roles_path=True)
    assert made.rc == 0, made.output
    yield hosts, state, inventory
    testhosts.teardown(hosts)


def freeze(host) -> dict[str, str]:
    out = sh(host, "/opt/locked/bin/pip freeze --all --disable-pip-version-check").stdout
    pairs = (line.split("==") for line in out.split() if "==" in line)
    return {name.lower().replace("_", "-"): version for name, version in pairs if name not in ("pip", "setuptools", "wheel")}


def messages(run, hosts) -> dict[str, str]:
    return {h.name: next(s["message"] for s in run.report["hosts"][h.name]["steps"] if s["name"].startswith(STEP) and s["name"].endswith(" in /opt/locked")) for h in hosts}


def uv_messages(run, hosts) -> dict[str, str]:
    return {h.name: next(s["message"] for s in run.report["hosts"][h.name]["steps"]
                         if s["name"].startswith("pip uv==")) for h in hosts}


def sent_wheels(host) -> dict[str, str]:
    """Canonical name -> version of the wheels the controller sent the host."""
    out = sh(host, "ls -1 /var/lib/jupyter-fleet/wheels 2>/dev/null; true").stdout.split()
    return {canonicalize_name(parse_wheel_filename(f)[0]): str(parse_wheel_filename(f)[1]) for f in out}


def test_every_host_installs_exactly_the_lock(locked):
    hosts, state, inventory = locked
    lock = pylock.load(state / "course.lock.yml")["/opt/locked"]
    uv = pylock.load(state / "course.lock.yml")["/var/lib/jupyter-fleet/uv"]
    first = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert first.rc == 0, first.output
    # One download per class: the controller's cache holds one wheel per pin, and every host was
    # sent exactly those (uv's and the course venv's) over its SSH connection.
    cached = list((state / "wheels" / f"py{lock.python}-{lock.platform}").glob("*.whl"))
    assert len(cached) == len(lock.pins() | uv.pins())
    assert all(sent_wheels(h) == lock.pins() | uv.pins() for h in hosts)
    assert set(messages(first, hosts).values()) == {
        f"create venv, install {len(lock.pins())} locked packages ({', '.join(f'{n} {v}' for n, v in sorted(lock.pins().items()))})"
        f" (lock {lock.fingerprint})"}
    installed = [freeze(h) for h in hosts]
    assert installed[0] == installed[1] == installed[2] == lock.pins()
    # uv itself came out of its sent wheel: the binary alone, no venv and no pip run for it.
    assert set(uv_messages(first, hosts).values()) == {
        f"put in place uv {uv.pins()['uv']} from its locked wheel (lock {uv.fingerprint})"}
    assert all(sh(h, "/var/lib/jupyter-fleet/uv/bin/uv --version; test ! -e /var/lib/jupyter-fleet/uv/bin/python"
                  ).stdout.split()[:2] == ["uv", uv.pins()["uv"]] for h in hosts)
    again = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert again.rc == 0 and set(messages(again, hosts).values()) == {
        f"/opt/locked matches the course lock {lock.fingerprint} ({len(lock.pins())} packages)"}
    assert set(uv_messages(again, hosts).values()) == {f"uv {uv.pins()['uv']} in place (/var/lib/jupyter-fleet/uv/bin/uv)"}


def test_a_changed_lock_repairs_exactly_the_packages_that_changed(locked):
    hosts, state, inventory = locked
    before = pylock.load(state / "course.lock.yml")["/opt/locked"].pins()
    data = yaml.safe_load(inventory.read_text())
    data["vars"]["locked_extra"] = ["urllib3==2.2.3"]     # older than the lock's: one pin moves
    inventory.write_text(yaml.safe_dump(data))
    stale = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert stale.rc == 1 and "the lock is stale for /opt/locked" in " ".join(stale.output.split()), stale.output
    relock = fleet("lock", state=state, inventory=inventory, roles_path=True)
    assert relock.rc == 0, relock.output
    lock = pylock.load(state / "course.lock.yml")["/opt/locked"]
    moved = sorted(n for n, v in lock.pins().items() if before.get(n) != v)
    assert moved == ["urllib3"] and lock.pins()["urllib3"] == "2.2.3"
    run = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    assert set(messages(run, hosts).values()) == {f"install 1 locked package (urllib3 2.2.3) (lock {lock.fingerprint})"}
    assert all(freeze(h) == lock.pins() for h in hosts)


def test_a_host_changed_by_hand_is_drift_and_is_repaired(locked):
    hosts, state, inventory = locked
    lock = pylock.load(state / "course.lock.yml")["/opt/locked"]
    sh(hosts[1], "/opt/locked/bin/pip install -q --disable-pip-version-check idna==3.6 six==1.16.0")
    check = fleet("check", state=state, inventory=inventory, roles_path=True)
    assert check.rc == 4, check.output
    said = messages(check, hosts)
    assert said[hosts[1].name] == (f"install 1 locked package (idna {lock.pins()['idna']}) and remove 1 not in the "
                                   f"lock (six) (lock {lock.fingerprint})")
    assert said[hosts[0].name] == said[hosts[2].name] == \
        f"/opt/locked matches the course lock {lock.fingerprint} ({len(lock.pins())} packages)"
    fixed = fleet("provision", state=state, inventory=inventory, roles_path=True)
    assert fixed.rc == 0, fixed.output
    assert freeze(hosts[1]) == lock.pins()


def test_a_host_without_internet_installs_the_lock_from_the_controller(locked):
    """Cold, as far as the course goes: no python3-venv, no venvs, no uv, and no route beyond the
    controller. The .debs its apt names and the lock's wheels both come over SSH."""
    hosts, state, inventory = locked
    lock = pylock.load(state / "course.lock.yml")["/opt/locked"]
    offline = hosts[2]
    with without_internet([offline]):
        # The host's own installers, asked for a package, cannot reach the index or the mirror now.
        tried = sh(offline, "env UV_NO_CONFIG=1 UV_NATIVE_TLS=1 /var/lib/jupyter-fleet/uv/bin/uv pip install "
                            "--no-cache --dry-run --python /opt/locked/bin/python six 2>&1", check=False)
        assert tried.returncode != 0, tried.stdout
        sh(offline, "rm -rf /opt/locked /var/lib/jupyter-fleet/uv /var/lib/jupyter-fleet/wheels; "
                    "apt-get purge -y -q python3-venv python3.11-venv >/dev/null; apt-get clean")
        fetched = sh(offline, "apt-get download -q python3-venv 2>&1", check=False)
        assert fetched.returncode != 0, fetched.stdout
        run = fleet("provision", "--hosts", offline.name, state=state, inventory=inventory, roles_path=True)
        assert run.rc == 0, run.output
        steps = {s["name"]: s["message"] for s in run.report["hosts"][offline.name]["steps"]}
        assert steps["apt python3-venv"].startswith("install python3-venv (") and \
            steps["apt python3-venv"].endswith("packages sent by the controller)"), steps
        assert messages(run, [offline])[offline.name].startswith(f"create venv, install {len(lock.pins())} locked")
        assert freeze(offline) == lock.pins()
    assert any((state / "debs").glob("python3.11-venv_*.deb")), "the controller keeps the .debs it fetched"


def test_with_package_source_index_each_host_downloads_the_lock(locked):
    hosts, state, inventory = locked
    lock = pylock.load(state / "course.lock.yml")["/opt/locked"]
    host = hosts[1]
    sh(host, "rm -rf /opt/locked /var/lib/jupyter-fleet/wheels /var/lib/jupyter-fleet/uv")
    run = fleet("provision", "--hosts", host.name, "--set", "package_source=index", state=state,
                inventory=inventory, roles_path=True)
    assert run.rc == 0, run.output
    assert freeze(host) == lock.pins()
    # uv from the index comes the way any package does: pip, into a venv of its own, hash-checked.
    assert uv_messages(run, [host])[host.name].startswith("create venv, install 1 locked package (uv ")
    assert sent_wheels(host) == {}, "nothing is sent when each host downloads"
