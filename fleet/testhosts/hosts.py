"""Real Debian 12 test hosts: systemd-nspawn containers on this Linux controller.

Each host is a full bookworm userland booted with systemd, on an overlay of one shared
debootstrapped base image (so installs on one host never leak to another), in a network
namespace of its own (so every host has a private 127.0.0.1, as real machines do). The
recipe and its measurements are in /work/shared/TEST-HOSTS.md. Everything here needs root.

Host I is called hI and answers ssh at 10.211.I.2 (controller side 10.211.I.1/30). Every
host also reaches the controller at CONTROLLER_ALIAS through its default route, so a test
can serve something (git daemon, HTTP) on one address that all hosts see.

Longer than 400 lines because booting, the faults tests inject (power cut, rebuild in place)
and teardown all work on the same host's private state (its overlay, netns, cgroup, pid).

Who owns which index: a process owns host I while it holds an flock on
/run/jupyter-fleet-hosts/I.lock; hosts booted with `up --detach` are owned by the JSON
registry instead (a flock dies with its process). Anything else left over is stale and
cleanup_stale() removes it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

from fleet.testhosts import cgroups
from fleet.testhosts.base import controller_setup, ensure_base
from fleet.testhosts.common import (BASE, BASE_LOCK, CONTROLLER_ALIAS, HELD,  # noqa: F401 (for users of this module)
                                    HOSTS_DIR, KEY, PIP_CACHE, REQUIRED_TOOLS, RUN, SSH_TIMEOUT, STATE, STOP_TIMEOUT,
                                    HostError, TestHost, alive, child_pids, file_lock, kill, layer_stamp, log_tail,
                                    mountpoints, proc_cmdline, proc_start, sh, wipe)
from fleet.testhosts.inventories import write_inventory
from fleet.testhosts.registry import (allocate, claim_indices, live_detached, read_registry, register_host, registered,
                                      release, try_lock, unregister_host)

log = logging.getLogger(__name__)


# What the tests, the demo and the benchmark use: `from fleet.testhosts import hosts as testhosts`.
__all__ = ["CONTROLLER_ALIAS", "KEY", "REQUIRED_TOOLS", "RUN", "SSH_TIMEOUT", "STATE", "HostError", "TestHost",
           "allocate", "boot", "boot_again", "cleanup_stale", "controller_setup", "detach", "down", "ensure_base",
           "power_cut", "registered", "release", "teardown", "write_inventory"]

# --------------------------------------------------------------------------- boot

def _require_root() -> None:
    if os.geteuid() != 0:
        raise HostError("test hosts need root")
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
    if missing:
        raise HostError(f"missing tools: {', '.join(missing)} (apt-get install debootstrap "
                        "systemd-container iptables openssh-client)")


def boot(hosts: int | Sequence[int], timeout: float = SSH_TIMEOUT, layer: Path | None = None) -> list[TestHost]:
    """Boot a number of hosts (or these indices) in parallel; return once all answer ssh.

    With `layer` (from bake_layer) the hosts boot from that baked layer over the base.
    """
    _require_root()
    if layer is not None and not layer_stamp(Path(layer)).exists():
        raise HostError(f"{layer} is not a complete baked layer (bake_layer writes {layer_stamp(Path(layer))} last)")
    controller_setup()
    ensure_base()
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    cleanup_stale()
    indices = allocate(hosts) if isinstance(hosts, int) else claim_indices(hosts)
    booted = [TestHost.for_index(i) for i in indices]
    try:
        for h in booted:
            _prepare(h)
        with file_lock(BASE_LOCK, fcntl.LOCK_SH):   # no apt refresh of the lower layer mid-mount
            for h in booted:
                _mount(h, layer)
        for h in booted:
            _start(h)
        _wait_all(booted, timeout)
    except BaseException:
        teardown(booted)
        raise
    return booted


def _prepare(h: TestHost) -> None:
    _prepare_disk(h)
    _network(h)


def _prepare_disk(h: TestHost) -> None:
    for d in (h.dir, h.upper, h.upper / "etc", h.work, h.root):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)                     # upper/etc becomes the host's /etc: a strict umask would break it
    _write(h.upper / "etc/hostname", f"{h.name}\n")
    # the base's machine-id would be shared by every host; a populated one is no "first boot"
    _write(h.upper / "etc/machine-id", f"{uuid.uuid4().hex}\n")
    # without 127.0.1.1 sudo warns "unable to resolve host"
    _write(h.upper / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {h.name}\n")


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o644)                      # world-readable in the host whatever our umask is


def _network(h: TestHost) -> None:
    sh("ip", "netns", "add", h.netns)
    sh("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
    sh("ip", "addr", "add", f"{h.gateway}/30", "dev", h.veth)
    sh("ip", "link", "set", h.veth, "up")
    ns = ("ip", "-n", h.netns)
    sh(*ns, "addr", "add", f"{h.address}/30", "dev", "eth0")
    sh(*ns, "link", "set", "eth0", "up")
    sh(*ns, "link", "set", "lo", "up")
    sh(*ns, "route", "add", "default", "via", h.gateway)


def _mount(h: TestHost, layer: Path | None = None) -> None:
    # nspawn's --overlay= does not work for /, so mount the overlay ourselves
    lower = f"{layer}:{BASE}" if layer is not None else str(BASE)
    sh("mount", "-t", "overlay", "overlay",
       "-o", f"lowerdir={lower},upperdir={h.upper},workdir={h.work}", h.root)


def _nspawn_command(h: TestHost) -> list[str]:
    # --register=no --keep-unit: the controller need not run systemd itself
    return ["systemd-nspawn", "-q", "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{h.netns}",
            f"--bind={PIP_CACHE}:/root/.cache/pip",    # shared download cache; installs stay real
            "-D", str(h.root), "-M", h.name, "-b", "--console=pipe"]


def _start(h: TestHost) -> None:
    with open(h.console, "ab") as out:
        # own session: a Ctrl-C in the caller's terminal must not reach the containers
        h._proc = subprocess.Popen(cgroups.start_inside(h.name, _nspawn_command(h)), stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    h.pid, h._start = h._proc.pid, proc_start(h._proc.pid)
    h._torn_down = False
    register_host(h)


def _wait_all(hosts: Sequence[TestHost], timeout: float) -> None:
    abort = threading.Event()              # one failure stops the others' waiting

    def wait(h: TestHost) -> None:
        try:
            try:
                _wait_ssh(h, timeout, abort)
            except HostError:
                if abort.is_set():
                    raise
                # Seen rarely under heavy load: a boot stalls with /run/nologin in place (sshd
                # refuses `ubuntu` by PAM). Record what systemd was waiting for, then boot it once more.
                jobs = subprocess.run(h.ssh_command("")[:-2] + [f"root@{h.address}", _STALL_STATE],
                                      text=True, capture_output=True).stdout.strip()
                log.warning("%s: no ssh after %.0f s; what root sees:\n%s\nbooting it again", h.name, timeout, jobs)
                power_cut(h)
                boot_again(h, timeout)
            _wait_running(h, timeout)
        except BaseException:
            abort.set()
            raise

    with ThreadPoolExecutor(max_workers=min(32, len(hosts) or 1)) as ex:
        for f in [ex.submit(wait, h) for h in hosts]:
            f.result()


# What a stalled boot was doing, asked as root (whom pam_nologin lets in): its jobs, failed units, nologin.
_STALL_STATE = ("systemctl list-jobs --no-pager | head -20; systemctl --failed --no-legend --no-pager; "
                "test -e /run/nologin && echo '/run/nologin is still there'")

# The boot's end state, then, unless it is "running", what failed and what the boot logged.
_BOOT_STATE = ('state=$(systemctl is-system-running --wait); echo "$state"; [ "$state" = running ] || '
               '{ systemctl --failed --no-legend --no-pager; sudo -n journalctl -b -p warning --no-pager | tail -30; }')


def _boot_state(h: TestHost, timeout: float) -> tuple[bool, str]:
    try:
        p = h.run(_BOOT_STATE, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"the boot had not finished after {timeout:.0f} s"
    return p.stdout.partition("\n")[0] == "running", (p.stdout + p.stderr).strip()


def _wait_running(h: TestHost, timeout: float) -> None:
    """A host is handed out with its boot finished and no unit failed ("running"), as tests and
    provisioning expect; a degraded boot is logged and booted once more, and a second one fails
    the boot with what failed. (Degraded boots came from hosts sharing one cgroup, which
    cgroups.py ended; this stays so that another cause shows its units rather than a flaky test.)"""
    running, report = _boot_state(h, 2 * timeout)
    if running:
        return
    log.warning("%s: the boot ended %s\nbooting it again", h.name, report)
    power_cut(h)
    boot_again(h, timeout)
    running, report = _boot_state(h, 2 * timeout)
    if not running:
        raise HostError(f"{h.name}: systemd is not running after a second boot: {report}")


def _wait_ssh(h: TestHost, timeout: float, abort: threading.Event | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if h._proc is not None and h._proc.poll() is not None:
            raise HostError(f"{h.name}: systemd-nspawn exited {h._proc.returncode} while booting; "
                            f"{_diagnostics(h)}")
        p = subprocess.run(h.ssh_command("true", connect_timeout=2), text=True, capture_output=True)
        if p.returncode == 0:
            return
        if abort is not None and abort.is_set():
            raise HostError(f"{h.name}: boot aborted, another host failed")
        if time.monotonic() > deadline:
            raise HostError(f"{h.name}: no ssh to {h.user}@{h.address} after {timeout:.0f} s "
                            f"({p.stderr.strip()}); {_diagnostics(h)}")
        time.sleep(0.2)


def _diagnostics(h: TestHost) -> str:
    """nspawn's own output, then the host's journal: with --console=pipe the container has
    no /dev/console, so systemd's boot messages only reach the (persistent) journal."""
    out = f"nspawn output:\n{log_tail(h.console) or '(none)'}"
    journal = h.root / "var/log/journal"
    if shutil.which("journalctl") and journal.is_dir():
        p = sh("journalctl", "-D", journal, "-n", "40", "--no-pager", check=False)
        out += f"\njournal tail:\n{(p.stdout or p.stderr).strip()}"
    return out


# --------------------------------------------------------------------------- faults

def power_cut(h: TestHost) -> None:
    """Kill the container's init at once (its disk stays); SIGKILL to nspawn would orphan it."""
    if h.pid is None or not alive(h.pid, h._start):
        raise HostError(f"{h.name} is not running")
    for child in child_pids(h.pid):
        kill(child, signal.SIGKILL)
    if not _wait_gone(h, STOP_TIMEOUT):
        raise HostError(f"{h.name}: systemd-nspawn {h.pid} did not exit after its init was killed")


def boot_again(h: TestHost, timeout: float = SSH_TIMEOUT) -> None:
    """Boot a powered-off host from its kept disk with the same nspawn command."""
    if alive(h.pid, h._start):
        raise HostError(f"{h.name} is still running")
    _start(h)
    _wait_ssh(h, timeout)


def rebuild(h: TestHost, timeout: float = SSH_TIMEOUT, layer: Path | None = None) -> None:
    """Rebuild a host in place, as a machine re-imaged at the same address: its power is cut, its
    disk replaced by a fresh one (first boot: new SSH host keys and machine-id, nothing that was
    installed on it), its network kept."""
    if alive(h.pid, h._start):
        power_cut(h)
    unmount(h)
    wipe(h.upper)
    wipe(h.work)
    _prepare_disk(h)
    with file_lock(BASE_LOCK, fcntl.LOCK_SH):
        _mount(h, layer)
    # Every test host boots with the base's host keys; a re-imaged machine makes its own at first boot.
    for kind in ("ed25519", "ecdsa", "rsa"):
        key = h.root / f"etc/ssh/ssh_host_{kind}_key"
        for path in (key, key.with_name(key.name + ".pub")):
            path.unlink(missing_ok=True)
        sh("ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{h.name}", "-f", key)
    boot_again(h, timeout)


# --------------------------------------------------------------------------- teardown

def teardown(hosts: Iterable[TestHost]) -> None:
    """Destroy hosts, in parallel; never raises, also on half-made hosts."""
    todo = [h for h in hosts if not h._torn_down]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=min(32, len(todo))) as ex:
        list(ex.map(_destroy, todo))
    for h in todo:
        h._torn_down = True
        release(h.index)


def _destroy(h: TestHost) -> None:
    steps = (stop, _kill_netns_pids, lambda h: cgroups.remove(h.name), unmount, _del_network, lambda h: wipe(h.dir),
             lambda h: unregister_host(h.index))
    for step in steps:
        try:
            step(h)
        except Exception as e:  # keep going: a half-made host must still be cleaned as far as possible
            log.warning("teardown %s: %s", h.name, e)


def _wait_gone(h: TestHost, timeout: float) -> bool:
    if h._proc is not None:                 # our child: wait() also reaps it
        try:
            h._proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while alive(h.pid, h._start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop(h: TestHost) -> None:
    if h.pid is None or not alive(h.pid, h._start):
        return
    kill(h.pid, signal.SIGTERM)            # nspawn turns this into an orderly shutdown
    if _wait_gone(h, STOP_TIMEOUT):
        return
    log.warning("%s: still shutting down after %.0f s; killing it", h.name, STOP_TIMEOUT)
    for child in child_pids(h.pid):
        kill(child, signal.SIGKILL)        # init first: killing only nspawn would orphan the container
    kill(h.pid, signal.SIGKILL)
    _wait_gone(h, 10)


def _kill_netns_pids(h: TestHost) -> None:
    """Whatever still runs in the host's netns belongs to an orphaned container."""
    if h.netns in _netns_names():
        for pid in sh("ip", "netns", "pids", h.netns, check=False).stdout.split():
            kill(int(pid), signal.SIGKILL)


def unmount(h: TestHost) -> None:
    if str(h.root) in mountpoints():
        for _ in range(20):                 # the container's last processes may hold it briefly
            if sh("umount", h.root, check=False).returncode == 0:
                return
            time.sleep(0.25)
        sh("umount", "-l", h.root)


def _del_network(h: TestHost) -> None:
    if h.netns in _netns_names():
        sh("ip", "netns", "del", h.netns)
    if h.veth in _links():                  # usually gone with the netns that held its peer (asynchronously)
        sh("ip", "link", "del", h.veth, check=False)


def _netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()}


def _links() -> set[str]:
    out = sh("ip", "-o", "link", "show").stdout
    return {m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)}


# --------------------------------------------------------------------------- stale cleanup

def _leftover_indices() -> set[int]:
    found: set[int] = set()
    found |= {int(m.group(1)) for n in _netns_names() if (m := re.fullmatch(r"fleet-h(\d+)", n))}
    found |= {int(m.group(1)) for n in _links() if (m := re.fullmatch(r"vh-h(\d+)", n))}
    hosts_prefix = f"{HOSTS_DIR}/h"
    found |= {int(m.group(1)) for mp in mountpoints() if mp.startswith(hosts_prefix)
              and (m := re.match(r"(\d+)/", mp[len(hosts_prefix):] + "/"))}
    if HOSTS_DIR.is_dir():
        found |= {int(d.name[1:]) for d in HOSTS_DIR.iterdir() if re.fullmatch(r"h\d+", d.name)}
    found |= {int(k) for k in read_registry()}
    return found


def _find_nspawn(h: TestHost) -> int | None:
    """The nspawn process of a host whose owner crashed (it may not be in the registry)."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            args = proc_cmdline(int(d))
            if args and args[0].endswith("systemd-nspawn") and str(h.root) in args:
                return int(d)
    return None


def cleanup_stale() -> list[int]:
    """Remove leftovers of crashed runs: indices no live process locks and no detached host owns."""
    detached = live_detached()
    cleaned = []
    for i in sorted(_leftover_indices()):
        if i in HELD or i in detached or not try_lock(i):
            continue
        try:
            h = TestHost.for_index(i)
            h.pid = _find_nspawn(h)
            h._start = proc_start(h.pid) if h.pid else None
            log.warning("removing stale test host %s", h.name)
            _destroy(h)
            cleaned.append(i)
        finally:
            release(i)
    return cleaned


# --------------------------------------------------------------------------- CLI

def down() -> list[str]:
    """Tear down every registered host on this machine, then any stale leftovers."""
    hosts = registered()
    teardown(hosts)
    cleanup_stale()
    return [h.name for h in hosts]


def mark_detached(hosts: Sequence[TestHost]) -> None:
    for h in hosts:
        register_host(h, detached=True)


def detach(hosts: Sequence[TestHost]) -> None:
    """Leave hosts up after this process ends (owned by the registry until `down`)."""
    mark_detached(hosts)
