"""The base image every test host boots from (debootstrapped once, cached) and the
controller's one-time network setup."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

from fleet.testhosts.common import (APT_MAX_AGE, APT_STAMP, BASE, BASE_DONE, BASE_LOCK, CONTROLLER_ALIAS, KEY, PACKAGES,
                                    RUN, STATE, SUBNET, USER, HostError, file_lock, log_tail, sh, umount_under, wipe)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- base image

def ensure_base() -> Path:
    """Build the base image once; concurrent callers wait on the lock instead of building twice."""
    STATE.mkdir(parents=True, exist_ok=True)
    with file_lock(BASE_LOCK):
        if not (BASE_DONE.exists() and KEY.exists()):
            _build_base()
        elif time.time() - _mtime(APT_STAMP) > APT_MAX_AGE:
            _refresh_apt_lists()
    return BASE


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def lower_dirs() -> list[list[str]]:
    """The lower layers of every mounted overlay."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            if m := re.search(r"lowerdir=([^,\s]+)", line):
                found.append(m.group(1).split(":"))
    return found


def _base_in_use() -> bool:
    """An overlay on BASE is mounted: changing a lower layer under it is undefined."""
    return any(str(BASE) in lowers for lowers in lower_dirs())


def _build_base() -> None:
    if _base_in_use():
        raise HostError(f"{BASE} is incomplete but hosts are mounted on it; run `down` first")
    log.warning("building test host base image in %s (once, about 1-2 minutes)", BASE)
    t0 = time.monotonic()
    BASE_DONE.unlink(missing_ok=True)
    _ensure_key()
    _debootstrap()
    _configure_base()
    _apt_update(tries=3)
    APT_STAMP.touch()
    BASE_DONE.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))   # last: an interrupted build is redone
    log.warning("base image ready in %.0f s", time.monotonic() - t0)


def _ensure_key() -> None:
    pub = KEY.with_name(KEY.name + ".pub")
    if KEY.exists() and pub.exists():
        return
    KEY.unlink(missing_ok=True)
    pub.unlink(missing_ok=True)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "jupyter-fleet-test", "-f", KEY)


def _debootstrap(tries: int = 3) -> None:
    """Retried a few times because a slow or flaky network is the usual cause of failure."""
    logfile = STATE / "debootstrap.log"
    for attempt in range(1, tries + 1):
        umount_under(BASE)
        wipe(BASE)
        with open(logfile, "w") as out:
            # no mirror argument: debootstrap's default mirror, no host name in this repo
            rc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                                 "bookworm", str(BASE)], stdout=out, stderr=subprocess.STDOUT).returncode
        if rc == 0:
            return
        log.warning("debootstrap attempt %d/%d failed (%d)", attempt, tries, rc)
        time.sleep(5 * attempt)
    umount_under(BASE)
    raise HostError(f"debootstrap failed {tries} times; last output:\n{log_tail(logfile)}")


def _configure_base() -> None:
    # The controller's CA bundle lets pip and git inside hosts verify TLS behind an inspecting proxy.
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():
        dest = BASE / "usr/local/share/ca-certificates/controller.crt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, dest)
        sh("chroot", BASE, "update-ca-certificates")
    (BASE / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")

    pub = KEY.with_name(KEY.name + ".pub").read_text()
    _authorize(BASE / "root/.ssh", pub)
    if sh("chroot", BASE, "id", USER, check=False).returncode:
        sh("chroot", BASE, "useradd", "-m", "-s", "/bin/bash", USER)
    _authorize(BASE / f"home/{USER}/.ssh", pub)
    sh("chroot", BASE, "chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh")
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
        p = sh("chroot", BASE, "apt-get", "update", check=False, timeout=600)
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
        APT_STAMP.touch()


# --------------------------------------------------------------------------- controller

def controller_setup() -> None:
    """Idempotent per-boot controller settings: forwarding, NAT, inotify, the alias address."""
    with file_lock(RUN / "controller.lock"):
        _sysctl("net/ipv4/ip_forward", 1)
        # each container holds inotify instances; the default 128 breaks boots past ~23 hosts
        _sysctl("fs/inotify/max_user_instances", 1024)
        rule = ["POSTROUTING", "-s", SUBNET, "!", "-o", "vh-+", "-j", "MASQUERADE"]
        if sh("iptables", "-w", "-t", "nat", "-C", *rule, check=False).returncode:
            sh("iptables", "-w", "-t", "nat", "-A", *rule)
        if f" {CONTROLLER_ALIAS}/32 " not in sh("ip", "-o", "addr", "show", "dev", "lo").stdout:
            sh("ip", "addr", "add", f"{CONTROLLER_ALIAS}/32", "dev", "lo")


def _sysctl(key: str, at_least: int) -> None:
    path = Path("/proc/sys") / key
    if int(path.read_text().split()[0]) < at_least:   # never lower a value someone raised
        path.write_text(f"{at_least}\n")
