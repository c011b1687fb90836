"""Real Debian 12 test hosts: systemd-nspawn containers on this Linux controller.

Each host is a full bookworm userland booted with systemd, on an overlay of one shared
debootstrapped base image (so installs on one host never leak to another), in a network
namespace of its own (so every host has a private 127.0.0.1, as real machines do). The
recipe and its measurements are in /work/shared/TEST-HOSTS.md. Everything here needs root.

Host I is called hI and answers ssh at 10.211.I.2 (controller side 10.211.I.1/30). Every
host also reaches the controller at CONTROLLER_ALIAS through its default route, so a test
can serve something (git daemon, HTTP) on one address that all hosts see.

Who owns which index: a process owns host I while it holds an flock on
/run/jupyter-fleet-hosts/I.lock; hosts booted with `up --detach` are owned by the JSON
registry instead (a flock dies with its process). Anything else left over is stale and
cleanup_stale() removes it.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

log = logging.getLogger(__name__)

STATE = Path(os.environ.get("FLEET_TESTHOSTS_DIR", "/var/lib/jupyter-fleet"))
BASE = STATE / "base"
KEY = STATE / "testkey"
PIP_CACHE = STATE / "pip-cache"
HOSTS_DIR = STATE / "hosts"
LAYERS = STATE / "layers"                 # baked layers: a provisioned host's upper dir, over BASE
_BASE_LOCK = STATE / "base.lock"
_BASE_DONE = STATE / "base.complete"      # outside BASE so hosts never see it
_APT_STAMP = STATE / "base.apt-updated"   # apt sets list mtimes from the server, so keep our own

RUN = Path("/run/jupyter-fleet-hosts")    # tmpfs: locks and registry vanish with a reboot, as hosts do
REGISTRY = RUN / "registry.json"

CONTROLLER_ALIAS = "10.211.255.254"
SUBNET = "10.211.0.0/16"
MAX_INDEX = 250                           # keeps 10.211.255.x free for the alias
USER = "ubuntu"
PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,ca-certificates,curl,gnupg"
SSH_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
APT_MAX_AGE = 24 * 3600
REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "iptables", "ip", "ssh", "ssh-keygen", "mount")

# index -> fd of its flock'ed lock file; closing the fd (or dying) releases the index
_HELD: dict[int, int] = {}


class HostError(RuntimeError):
    """A test host could not be built, booted or reached."""


# --------------------------------------------------------------------------- helpers

def _sh(*cmd: str | Path, check: bool = True, timeout: float | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its stderr, which CalledProcessError hides."""
    args = [str(c) for c in cmd]
    p = subprocess.run(args, text=True, capture_output=True, timeout=timeout, input=stdin)
    if check and p.returncode:
        out = (p.stderr or p.stdout).strip()[-3000:]
        raise HostError(f"{' '.join(args)} exited {p.returncode}: {out}")
    return p


@contextlib.contextmanager
def _flock(path: Path, kind: int = fcntl.LOCK_EX) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, kind)
        yield


def _wipe(path: Path) -> None:
    # --one-file-system: never delete through a mount that is still there (overlay, /proc)
    if path.exists() or path.is_symlink():
        _sh("rm", "-rf", "--one-file-system", path)


def _mountpoints() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1].encode().decode("unicode_escape") for line in f]


def _umount_under(path: Path) -> None:
    """Unmount everything at or below path, deepest first (an interrupted debootstrap leaves /proc)."""
    prefix = str(path)
    for mp in sorted((m for m in _mountpoints() if m == prefix or m.startswith(prefix + "/")),
                     key=len, reverse=True):
        if _sh("umount", mp, check=False).returncode:
            _sh("umount", "-l", mp, check=False)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- processes

def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _proc_start(pid: int) -> int | None:
    st = _proc_stat(pid)
    return int(st[19]) if st else None   # field 22: start time, guards against pid reuse


def _alive(pid: int | None, start: int | None = None) -> bool:
    st = _proc_stat(pid) if pid else None
    if not st or st[0] == "Z":
        return False
    return start is None or int(st[19]) == start


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(int(d))
            if st and int(st[1]) == pid:
                kids.append(int(d))
    return kids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- base image

def ensure_base() -> Path:
    """Build the base image once; concurrent callers wait on the lock instead of building twice."""
    STATE.mkdir(parents=True, exist_ok=True)
    with _flock(_BASE_LOCK):
        if not (_BASE_DONE.exists() and KEY.exists()):
            _build_base()
        elif time.time() - _mtime(_APT_STAMP) > APT_MAX_AGE:
            _refresh_apt_lists()
    return BASE


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _lower_dirs() -> list[list[str]]:
    """The lower layers of every mounted overlay."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            if m := re.search(r"lowerdir=([^,\s]+)", line):
                found.append(m.group(1).split(":"))
    return found


def _base_in_use() -> bool:
    """An overlay on BASE is mounted: changing a lower layer under it is undefined."""
    return any(str(BASE) in lowers for lowers in _lower_dirs())


def _build_base() -> None:
    if _base_in_use():
        raise HostError(f"{BASE} is incomplete but hosts are mounted on it; run `down` first")
    log.warning("building test host base image in %s (once, about 1-2 minutes)", BASE)
    t0 = time.monotonic()
    _BASE_DONE.unlink(missing_ok=True)
    _ensure_key()
    _debootstrap()
    _configure_base()
    _apt_update(tries=3)
    _APT_STAMP.touch()
    _BASE_DONE.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))   # last: an interrupted build is redone
    log.warning("base image ready in %.0f s", time.monotonic() - t0)


def _ensure_key() -> None:
    pub = KEY.with_name(KEY.name + ".pub")
    if KEY.exists() and pub.exists():
        return
    KEY.unlink(missing_ok=True)
    pub.unlink(missing_ok=True)
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "jupyter-fleet-test", "-f", KEY)


def _debootstrap(tries: int = 3) -> None:
    """Retried a few times because a slow or flaky network is the usual cause of failure."""
    logfile = STATE / "debootstrap.log"
    for attempt in range(1, tries + 1):
        _umount_under(BASE)
        _wipe(BASE)
        with open(logfile, "w") as out:
            # no mirror argument: debootstrap's default mirror, no host name in this repo
            rc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                                 "bookworm", str(BASE)], stdout=out, stderr=subprocess.STDOUT).returncode
        if rc == 0:
            return
        log.warning("debootstrap attempt %d/%d failed (%d)", attempt, tries, rc)
        time.sleep(5 * attempt)
    _umount_under(BASE)
    raise HostError(f"debootstrap failed {tries} times; last output:\n{_tail(logfile)}")


def _configure_base() -> None:
    # The controller's CA bundle lets pip and git inside hosts verify TLS behind an inspecting proxy.
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():
        dest = BASE / "usr/local/share/ca-certificates/controller.crt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, dest)
        _sh("chroot", BASE, "update-ca-certificates")
    (BASE / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")

    pub = KEY.with_name(KEY.name + ".pub").read_text()
    _authorize(BASE / "root/.ssh", pub)
    if _sh("chroot", BASE, "id", USER, check=False).returncode:
        _sh("chroot", BASE, "useradd", "-m", "-s", "/bin/bash", USER)
    _authorize(BASE / f"home/{USER}/.ssh", pub)
    _sh("chroot", BASE, "chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh")
    sudoers = BASE / f"etc/sudoers.d/{USER}"
    sudoers.write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)


def _authorize(ssh_dir: Path, pub: str) -> None:
    ssh_dir.mkdir(parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(pub)
    keys.chmod(0o600)


def _apt_update(tries: int = 1) -> bool:
    """Fresh apt lists in the base, as a cloud image has; hosts then install without an update."""
    for attempt in range(1, tries + 1):
        p = _sh("chroot", BASE, "apt-get", "update", check=False, timeout=600)
        if p.returncode == 0:
            return True
        log.warning("apt-get update in base failed (%d/%d): %s", attempt, tries, p.stdout[-500:] + p.stderr[-500:])
        if attempt < tries:
            time.sleep(5 * attempt)
    if tries > 1:
        raise HostError("apt-get update in the base image failed")
    return False


def _refresh_apt_lists() -> None:
    if _base_in_use():
        log.info("base apt lists are over a day old; not refreshed while hosts run on the base")
        return
    log.warning("refreshing apt lists in the base image")
    if _apt_update():
        _APT_STAMP.touch()


# --------------------------------------------------------------------------- controller

def controller_setup() -> None:
    """Idempotent per-boot controller settings: forwarding, NAT, inotify, the alias address."""
    with _flock(RUN / "controller.lock"):
        _sysctl("net/ipv4/ip_forward", 1)
        # each container holds inotify instances; the default 128 breaks boots past ~23 hosts
        _sysctl("fs/inotify/max_user_instances", 1024)
        rule = ["POSTROUTING", "-s", SUBNET, "!", "-o", "vh-+", "-j", "MASQUERADE"]
        if _sh("iptables", "-w", "-t", "nat", "-C", *rule, check=False).returncode:
            _sh("iptables", "-w", "-t", "nat", "-A", *rule)
        if f" {CONTROLLER_ALIAS}/32 " not in _sh("ip", "-o", "addr", "show", "dev", "lo").stdout:
            _sh("ip", "addr", "add", f"{CONTROLLER_ALIAS}/32", "dev", "lo")


def _sysctl(key: str, at_least: int) -> None:
    path = Path("/proc/sys") / key
    if int(path.read_text().split()[0]) < at_least:   # never lower a value someone raised
        path.write_text(f"{at_least}\n")


# --------------------------------------------------------------------------- hosts

@dataclass
class TestHost:
    """One booted (or bootable) test host; paths derive from the index."""

    __test__ = False   # not a pytest test class despite the name

    name: str
    index: int
    address: str
    user: str = USER
    key: Path = KEY
    port: int = 22
    pid: int | None = None                      # the systemd-nspawn process
    _start: int | None = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    _torn_down: bool = field(default=False, repr=False)

    @classmethod
    def for_index(cls, index: int) -> TestHost:
        return cls(name=f"h{index}", index=index, address=f"10.211.{index}.2")

    @property
    def dir(self) -> Path:
        return HOSTS_DIR / self.name

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def netns(self) -> str:
        return f"fleet-{self.name}"

    @property
    def veth(self) -> str:
        return f"vh-{self.name}"       # the vh- prefix is what the MASQUERADE rule excludes

    @property
    def gateway(self) -> str:
        return f"10.211.{self.index}.1"

    def ssh_command(self, command: str, connect_timeout: int = 5) -> list[str]:
        return ["ssh", "-i", str(self.key), "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={connect_timeout}",
                f"{self.user}@{self.address}", command]

    def run(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over real ssh, as the tool under test would."""
        p = subprocess.run(self.ssh_command(command), text=True, capture_output=True, timeout=timeout)
        if check and p.returncode:
            raise HostError(f"{self.name}: {command!r} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        return p


# --------------------------------------------------------------------------- index allocation

def _try_lock(index: int) -> bool:
    RUN.mkdir(parents=True, exist_ok=True)
    fd = os.open(RUN / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _HELD[index] = fd
    return True


def release(index: int) -> None:
    """Give up this process's claim on an index (teardown does this)."""
    fd = _HELD.pop(index, None)
    if fd is not None:
        os.close(fd)


def allocate(n: int) -> list[int]:
    """Claim n free indices for this process; tests, demos and benchmarks never collide."""
    detached = _live_detached()
    got: list[int] = []
    for i in range(1, MAX_INDEX + 1):
        if len(got) == n:
            break
        if i not in _HELD and i not in detached and _try_lock(i):
            if i in _live_detached():      # detached between our look and the lock
                release(i)
                continue
            got.append(i)
    if len(got) < n:
        for i in got:
            release(i)
        raise HostError(f"only {len(got)} of {n} host indices are free (1..{MAX_INDEX})")
    return got


def _claim(indices: Sequence[int]) -> list[int]:
    detached = _live_detached()
    got: list[int] = []
    for i in indices:
        if not 1 <= i <= MAX_INDEX or i in _HELD or i in detached or not _try_lock(i):
            for j in got:
                release(j)
            raise HostError(f"host index {i} is out of range or in use")
        got.append(i)
    return got


# --------------------------------------------------------------------------- registry

def _registry() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(REGISTRY.read_text())
    except (FileNotFoundError, ValueError):
        return {}


@contextlib.contextmanager
def _registry_edit() -> Iterator[dict[str, dict[str, Any]]]:
    with _flock(RUN / "registry.lock"):
        reg = _registry()
        yield reg
        tmp = REGISTRY.with_suffix(".tmp")
        tmp.write_text(json.dumps(reg, indent=1, sort_keys=True))
        tmp.replace(REGISTRY)             # atomic: readers without the lock never see half a file


def _register(h: TestHost, detached: bool = False) -> None:
    with _registry_edit() as reg:
        old = reg.get(str(h.index), {})
        reg[str(h.index)] = {"name": h.name, "address": h.address, "pid": h.pid, "start": h._start,
                             "owner": os.getpid(), "detached": detached or old.get("detached", False)}


def _unregister(index: int) -> None:
    with _registry_edit() as reg:
        reg.pop(str(index), None)


def _live_detached() -> set[int]:
    """Indices owned by the registry: detached and their nspawn still running."""
    return {int(k) for k, e in _registry().items()
            if e.get("detached") and _alive(e.get("pid"), e.get("start"))}


def registered(detached_only: bool = False) -> list[TestHost]:
    """Hosts this machine has registered, whoever booted them (or only detached ones: a demo's)."""
    hosts = []
    for k, e in sorted(_registry().items(), key=lambda kv: int(kv[0])):
        if detached_only and not e.get("detached"):
            continue
        h = TestHost.for_index(int(k))
        h.pid, h._start = e.get("pid"), e.get("start")
        hosts.append(h)
    return hosts


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
    if layer is not None and not _layer_stamp(Path(layer)).exists():
        raise HostError(f"{layer} is not a complete baked layer (bake_layer writes {_layer_stamp(Path(layer))} last)")
    controller_setup()
    ensure_base()
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    cleanup_stale()
    indices = allocate(hosts) if isinstance(hosts, int) else _claim(hosts)
    booted = [TestHost.for_index(i) for i in indices]
    try:
        for h in booted:
            _prepare(h)
        with _flock(_BASE_LOCK, fcntl.LOCK_SH):   # no apt refresh of the lower layer mid-mount
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
    for d in (h.dir, h.upper, h.upper / "etc", h.work, h.root):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)                     # upper/etc becomes the host's /etc: a strict umask would break it
    _write(h.upper / "etc/hostname", f"{h.name}\n")
    # the base's machine-id would be shared by every host; a populated one is no "first boot"
    _write(h.upper / "etc/machine-id", f"{uuid.uuid4().hex}\n")
    # without 127.0.1.1 sudo warns "unable to resolve host"
    _write(h.upper / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {h.name}\n")
    _network(h)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o644)                      # world-readable in the host whatever our umask is


def _network(h: TestHost) -> None:
    _sh("ip", "netns", "add", h.netns)
    _sh("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
    _sh("ip", "addr", "add", f"{h.gateway}/30", "dev", h.veth)
    _sh("ip", "link", "set", h.veth, "up")
    ns = ("ip", "-n", h.netns)
    _sh(*ns, "addr", "add", f"{h.address}/30", "dev", "eth0")
    _sh(*ns, "link", "set", "eth0", "up")
    _sh(*ns, "link", "set", "lo", "up")
    _sh(*ns, "route", "add", "default", "via", h.gateway)


def _mount(h: TestHost, layer: Path | None = None) -> None:
    # nspawn's --overlay= does not work for /, so mount the overlay ourselves
    lower = f"{layer}:{BASE}" if layer is not None else str(BASE)
    _sh("mount", "-t", "overlay", "overlay",
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
        h._proc = subprocess.Popen(_nspawn_command(h), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    h.pid, h._start = h._proc.pid, _proc_start(h._proc.pid)
    h._torn_down = False
    _register(h)


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
                jobs = subprocess.run(h.ssh_command("systemctl list-jobs --no-pager | head -20")[:-2]
                                      + [f"root@{h.address}", "systemctl list-jobs --no-pager | head -20"],
                                      text=True, capture_output=True).stdout.strip()
                log.warning("%s: no ssh after %.0f s; pending jobs:\n%s\nbooting it again", h.name, timeout, jobs)
                power_cut(h)
                boot_again(h, timeout)
        except BaseException:
            abort.set()
            raise

    with ThreadPoolExecutor(max_workers=min(32, len(hosts) or 1)) as ex:
        for f in [ex.submit(wait, h) for h in hosts]:
            f.result()


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
    out = f"nspawn output:\n{_tail(h.console) or '(none)'}"
    journal = h.root / "var/log/journal"
    if shutil.which("journalctl") and journal.is_dir():
        p = _sh("journalctl", "-D", journal, "-n", "40", "--no-pager", check=False)
        out += f"\njournal tail:\n{(p.stdout or p.stderr).strip()}"
    return out


# --------------------------------------------------------------------------- baked layers

# written per host by _prepare, so they must not come from a layer
_PER_HOST_FILES = ("etc/hostname", "etc/hosts", "etc/machine-id")


def bake_layer(h: TestHost, name: str, prepare: str, info: Mapping[str, Any] | None = None) -> Path:
    """Turn a provisioned host into a cached layer that hosts can boot from; the host is torn down.

    `prepare` is the prepare-for-imaging script (fleet.engine.imageprep), run as root on the host.
    Then the host shuts down and its upper dir, renamed (same filesystem: no copy), becomes
    LAYERS/name, an extra lower layer over the base. Overlayfs honours the whiteouts and
    opaque dirs a lower layer carries, so what the provision deleted stays deleted.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}", name):
        raise HostError(f"bad layer name {name!r}: letters, digits, '.', '_' and '-'")
    dest = LAYERS / name
    if dest.exists():
        if any(str(dest) in lowers for lowers in _lower_dirs()):
            raise HostError(f"layer {name} exists and hosts are booted from it; tear them down first")
        _layer_stamp(dest).unlink(missing_ok=True)
        _wipe(dest)
    p = subprocess.run(h.ssh_command("sudo -n bash -s"), input=prepare, text=True, capture_output=True,
                       timeout=300)
    if p.returncode:
        raise HostError(f"{h.name}: preparing for imaging failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    _stop(h)
    if _alive(h.pid, h._start):
        raise HostError(f"{h.name} did not shut down; not baked")
    _unmount(h)
    LAYERS.mkdir(parents=True, exist_ok=True)
    tmp = LAYERS / f".{name}.tmp"
    _wipe(tmp)
    h.upper.rename(tmp)
    for rel in _PER_HOST_FILES:
        (tmp / rel).unlink(missing_ok=True)
    tmp.rename(dest)
    stamp = {"name": name, "from": h.name, "baked": time.strftime("%Y-%m-%dT%H:%M:%S"), **dict(info or {})}
    _layer_stamp(dest).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")   # last: marks it complete
    teardown([h])
    return dest


def _layer_stamp(layer: Path) -> Path:
    # beside the layer, not in it: inside, every host booted from it would see the file at /
    return layer.with_name(layer.name + ".json")


def layer_info(layer: Path) -> dict[str, Any]:
    try:
        return json.loads(_layer_stamp(Path(layer)).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def remove_layer(layer: Path) -> None:
    layer = Path(layer)
    if any(str(layer) in lowers for lowers in _lower_dirs()):
        raise HostError(f"{layer} is in use by booted hosts")
    _layer_stamp(layer).unlink(missing_ok=True)
    _wipe(layer)


# --------------------------------------------------------------------------- faults

def power_cut(h: TestHost) -> None:
    """Kill the container's init at once (its disk stays); SIGKILL to nspawn would orphan it."""
    if not _alive(h.pid, h._start):
        raise HostError(f"{h.name} is not running")
    for child in _children(h.pid):
        _kill(child, signal.SIGKILL)
    if not _wait_gone(h, STOP_TIMEOUT):
        raise HostError(f"{h.name}: systemd-nspawn {h.pid} did not exit after its init was killed")


def boot_again(h: TestHost, timeout: float = SSH_TIMEOUT) -> None:
    """Boot a powered-off host from its kept disk with the same nspawn command."""
    if _alive(h.pid, h._start):
        raise HostError(f"{h.name} is still running")
    _start(h)
    _wait_ssh(h, timeout)


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
    steps = (_stop, _kill_netns_pids, _unmount, _del_network, lambda h: _wipe(h.dir),
             lambda h: _unregister(h.index))
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
    while _alive(h.pid, h._start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _stop(h: TestHost) -> None:
    if not _alive(h.pid, h._start):
        return
    _kill(h.pid, signal.SIGTERM)            # nspawn turns this into an orderly shutdown
    if _wait_gone(h, STOP_TIMEOUT):
        return
    log.warning("%s: still shutting down after %.0f s; killing it", h.name, STOP_TIMEOUT)
    for child in _children(h.pid):
        _kill(child, signal.SIGKILL)        # init first: killing only nspawn would orphan the container
    _kill(h.pid, signal.SIGKILL)
    _wait_gone(h, 10)


def _kill_netns_pids(h: TestHost) -> None:
    """Whatever still runs in the host's netns belongs to an orphaned container."""
    if h.netns in _netns_names():
        for pid in _sh("ip", "netns", "pids", h.netns, check=False).stdout.split():
            _kill(int(pid), signal.SIGKILL)


def _unmount(h: TestHost) -> None:
    if str(h.root) in _mountpoints():
        for _ in range(20):                 # the container's last processes may hold it briefly
            if _sh("umount", h.root, check=False).returncode == 0:
                return
            time.sleep(0.25)
        _sh("umount", "-l", h.root)


def _del_network(h: TestHost) -> None:
    if h.netns in _netns_names():
        _sh("ip", "netns", "del", h.netns)
    if h.veth in _links():                  # usually gone with the netns that held its peer (asynchronously)
        _sh("ip", "link", "del", h.veth, check=False)


def _netns_names() -> set[str]:
    return {line.split()[0] for line in _sh("ip", "netns", "list").stdout.splitlines() if line.strip()}


def _links() -> set[str]:
    out = _sh("ip", "-o", "link", "show").stdout
    return {m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)}


# --------------------------------------------------------------------------- stale cleanup

def _leftover_indices() -> set[int]:
    found: set[int] = set()
    found |= {int(m.group(1)) for n in _netns_names() if (m := re.fullmatch(r"fleet-h(\d+)", n))}
    found |= {int(m.group(1)) for n in _links() if (m := re.fullmatch(r"vh-h(\d+)", n))}
    hosts_prefix = f"{HOSTS_DIR}/h"
    found |= {int(m.group(1)) for mp in _mountpoints() if mp.startswith(hosts_prefix)
              and (m := re.match(r"(\d+)/", mp[len(hosts_prefix):] + "/"))}
    if HOSTS_DIR.is_dir():
        found |= {int(d.name[1:]) for d in HOSTS_DIR.iterdir() if re.fullmatch(r"h\d+", d.name)}
    found |= {int(k) for k in _registry()}
    return found


def _find_nspawn(h: TestHost) -> int | None:
    """The nspawn process of a host whose owner crashed (it may not be in the registry)."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            args = _cmdline(int(d))
            if args and args[0].endswith("systemd-nspawn") and str(h.root) in args:
                return int(d)
    return None


def cleanup_stale() -> list[int]:
    """Remove leftovers of crashed runs: indices no live process locks and no detached host owns."""
    detached = _live_detached()
    cleaned = []
    for i in sorted(_leftover_indices()):
        if i in _HELD or i in detached or not _try_lock(i):
            continue
        try:
            h = TestHost.for_index(i)
            h.pid = _find_nspawn(h)
            h._start = _proc_start(h.pid) if h.pid else None
            log.warning("removing stale test host %s", h.name)
            _destroy(h)
            cleaned.append(i)
        finally:
            release(i)
    return cleaned


# --------------------------------------------------------------------------- inventory

def write_inventory(hosts: Iterable[TestHost], path: str | Path, vars: Mapping[str, Any] | None = None,
                    groups: Mapping[str, Any] | None = None) -> Path:
    """Write our tool's native YAML inventory: optional all-level vars and groups, then hosts.

    A group is a list of hosts (TestHost or name) or a mapping {hosts: [...], vars: {...}}.
    """
    doc: dict[str, Any] = {}
    if vars is not None:
        doc["vars"] = dict(vars)
    if groups is not None:
        doc["groups"] = {name: _group(spec) for name, spec in groups.items()}
    doc["hosts"] = {h.name: {"address": h.address, "user": h.user, "port": h.port, "key": str(h.key)}
                    for h in hosts}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    return path


def _group(spec: Any) -> dict[str, Any]:
    members, gvars = (spec.get("hosts", []), spec.get("vars", {})) if isinstance(spec, Mapping) else (spec, {})
    return {"hosts": [m.name if isinstance(m, TestHost) else str(m) for m in members], "vars": dict(gvars)}


# --------------------------------------------------------------------------- CLI

def down() -> list[str]:
    """Tear down every registered host on this machine, then any stale leftovers."""
    hosts = registered()
    teardown(hosts)
    cleanup_stale()
    return [h.name for h in hosts]


def _mark_detached(hosts: Sequence[TestHost]) -> None:
    for h in hosts:
        _register(h, detached=True)


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt   # both signals tear down the same way


def detach(hosts: Sequence[TestHost]) -> None:
    """Leave hosts up after this process ends (owned by the registry until `down`)."""
    _mark_detached(hosts)


def _up(n: int, inventory: Path | None, detach: bool) -> int:
    # explicit for SIGINT too: a shell starts background jobs with SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_on_signal)
    hosts: list[TestHost] = []
    keep = False                     # only a completed --detach leaves hosts up
    try:
        t0 = time.monotonic()
        hosts = boot(n)
        log.info("booted %d hosts in %.1f s: %s", len(hosts), time.monotonic() - t0,
                 ", ".join(f"{h.name}={h.address}" for h in hosts))
        if inventory:
            write_inventory(hosts, inventory)
            log.info("inventory: %s", inventory)
        if detach:
            _mark_detached(hosts)
            keep = True
            log.info("detached; `python -m fleet.testhosts.hosts down` tears them down")
            return 0
        log.info("up until Ctrl-C / SIGTERM")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    finally:
        if not keep:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut teardown short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            teardown(hosts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fleet.testhosts.hosts", description="Debian 12 test hosts")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot N hosts; stay up until SIGINT/SIGTERM (or --detach)")
    up.add_argument("n", type=int)
    up.add_argument("--inventory", type=Path, help="write a fleet inventory here")
    up.add_argument("--detach", action="store_true", help="return and leave the hosts up until `down`")
    sub.add_parser("down", help="tear down every registered host and stale leftovers")
    sub.add_parser("list", help="show registered hosts")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "up":
            return _up(args.n, args.inventory, args.detach)
        if args.cmd == "down":
            log.info("torn down: %s", ", ".join(down()) or "nothing")
            return 0
        for h in registered():
            state = "up" if _alive(h.pid, h._start) else "down"
            print(f"{h.name}\t{h.address}\t{state}")
        return 0
    except HostError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
