"""One download per class: the course lock's wheels, fetched once by the controller and sent to
each host over the SSH connection Fleet already holds (`package_source: controller`).

The controller downloads with pip (`pip download --require-hashes --no-deps --only-binary`), for
the lock's own Python and platform, into a cache in the state folder kept between runs; every host
of the class is then sent the files it lacks from that cache (fleet.engine.sending) and installs them with `--no-index --find-links`, still
hash-checked by its installer. Hosts need no route to the internet for the course's Python packages.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from fleet.engine.pylock import LockedVenv
from fleet.errors import FleetError

HOST_DIR = "/var/lib/jupyter-fleet/wheels"       # where hosts keep the set they were sent
DOWNLOAD_TRIES = 3


class WheelsUnavailable(FleetError):
    """The controller could not get a wheel of the lock (no wheel for the platform, no network)."""


_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def pip_target(python: str, platform: str) -> list[str]:
    """pip's options for the lock's Python ("3.11") and uv's platform name ("x86_64-manylinux_2_28").
    Every older glibc's manylinux tag is named too: a manylinux_2_28 host runs manylinux2014 wheels,
    and pip expands only some versions' tags by itself."""
    arch, _, libc = platform.partition("-")
    digits = python.replace(".", "")
    target = ["--python-version", python, "--implementation", "cp", "--abi", f"cp{digits}"]
    found = re.fullmatch(r"manylinux_2_([0-9]+)", libc)
    if not found:
        return target + ["--platform", f"{libc}_{arch}" if libc else arch]
    for minor in range(int(found.group(1)), 4, -1):
        target += ["--platform", f"manylinux_2_{minor}_{arch}"]
        if minor in _LEGACY:
            target += ["--platform", f"{_LEGACY[minor]}_{arch}"]
    return target


class WheelCache:
    """The controller's wheels, a folder per Python and platform; safe to share between the
    threads that run hosts: the first host that needs a lock's wheels downloads them, the others
    wait for it and then read the same files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._complete: set[str] = set()         # fingerprints of locks fully downloaded

    def folder(self, locked: LockedVenv) -> Path:
        return self.root / f"py{locked.python}-{locked.platform}"

    def files(self, locked: LockedVenv, names: Iterable[str]) -> list[tuple[Path, str]]:
        """(controller path, file name) of the wheels of these canonical names, as the lock pins them."""
        self._download(locked)
        found = self._cached(locked, names)
        missing = sorted(set(names) - set(found))
        if missing:
            raise WheelsUnavailable(f"the controller's wheel cache {self.folder(locked)} lacks {', '.join(missing)}")
        return [found[name] for name in sorted(found)]

    def _cached(self, locked: LockedVenv, names: Iterable[str]) -> dict[str, tuple[Path, str]]:
        """Canonical name -> the cached wheel of the version the lock pins (hosts check its hash)."""
        pins = locked.pins()
        wanted = {name: Version(pins[name]) for name in names}
        found: dict[str, tuple[Path, str]] = {}
        for path in self.folder(locked).glob("*.whl"):
            try:
                name, version, _, _ = parse_wheel_filename(path.name)
            except InvalidWheelFilename:
                continue
            if wanted.get(canonicalize_name(name)) == version:
                found[canonicalize_name(name)] = (path, path.name)
        return found

    def _download(self, locked: LockedVenv) -> None:
        with self._lock:
            if locked.fingerprint in self._complete:
                return
            if len(self._cached(locked, locked.pins())) == len(locked.pins()):
                # Every pin is already here (an earlier class): no index is asked, so a controller
                # offline since then still serves it.
                self._complete.add(locked.fingerprint)
                return
            folder = self.folder(locked)
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
                requirements.write(locked.requirements)
                requirements.flush()
                argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary=:all:", "--require-hashes", "--dest", str(folder),
                        *pip_target(locked.python, locked.platform), "-r", requirements.name]
                done = None
                for _ in range(DOWNLOAD_TRIES):    # pip skips what it already holds
                    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                          env=dict(os.environ, PIP_NO_INPUT="1"))
                    if done.returncode == 0:
                        break
            assert done is not None
            if done.returncode:
                raise WheelsUnavailable(
                    f"the controller could not download the lock's wheels of {locked.venv} for Python {locked.python} "
                    f"on {locked.platform} (with `package_source: index` each host downloads them itself): "
                    f"{_last_lines(done.stderr)}")
            self._complete.add(locked.fingerprint)


def _last_lines(text: str, count: int = 4) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])
