"""What the test-host modules share: where their state lives, the addresses, one host's
paths (TestHost), and small helpers for commands, locks, mounts and processes."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


STATE = Path(os.environ.get("FLEET_TESTHOSTS_DIR", "/var/lib/jupyter-fleet"))
BASE = STATE / "base"
KEY = STATE / "testkey"
PIP_CACHE = STATE / "pip-cache"
HOSTS_DIR = STATE / "hosts"
LAYERS = STATE / "layers"                 # baked layers: a provisioned host's upper dir, over BASE
BASE_LOCK = STATE / "base.lock"
BASE_DONE = STATE / "base.complete"      # outside BASE so hosts never see it
APT_STAMP = STATE / "base.apt-updated"   # apt sets list mtimes from the server, so keep our own

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
HELD: dict[int, int] = {}


class HostError(RuntimeError):
    """A test host could not be built, booted or reached."""


# --------------------------------------------------------------------------- helpers

def sh(*cmd: str | Path, check: bool = True, timeout: float | None = None,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its stderr, which CalledProcessError hides."""
    args = [str(c) for c in cmd]
    p = subprocess.run(args, text=True, capture_output=True, timeout=timeout, input=stdin)
    if check and p.returncode:
        out = (p.stderr or p.stdout).strip()[-3000:]
        raise HostError(f"{' '.join(args)} exited {p.returncode}: {out}")
    return p


@contextlib.contextmanager
def file_lock(path: Path, kind: int = fcntl.LOCK_EX) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, kind)
        yield


def wipe(path: Path) -> None:
    # --one-file-system: never delete through a mount that is still there (overlay, /proc)
    if path.exists() or path.is_symlink():
        sh("rm", "-rf", "--one-file-system", path)


def mountpoints() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1].encode().decode("unicode_escape") for line in f]


def umount_under(path: Path) -> None:
    """Unmount everything at or below path, deepest first (an interrupted debootstrap leaves /proc)."""
    prefix = str(path)
    for mp in sorted((m for m in mountpoints() if m == prefix or m.startswith(prefix + "/")),
                     key=len, reverse=True):
        if sh("umount", mp, check=False).returncode:
            sh("umount", "-l", mp, check=False)


def log_tail(path: Path, lines: int = 40) -> str:
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


def proc_start(pid: int) -> int | None:
    st = _proc_stat(pid)
    return int(st[19]) if st else None   # field 22: start time, guards against pid reuse


def alive(pid: int | None, start: int | None = None) -> bool:
    st = _proc_stat(pid) if pid else None
    if not st or st[0] == "Z":
        return False
    return start is None or int(st[19]) == start


def child_pids(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(int(d))
            if st and int(st[1]) == pid:
                kids.append(int(d))
    return kids


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


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


def layer_stamp(layer: Path) -> Path:
    # beside the layer, not in it: inside, every host booted from it would see the file at /
    return layer.with_name(layer.name + ".json")
