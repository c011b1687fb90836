"""One download per class for apt: the .debs a host's apt would fetch (`apt-get --print-uris`
on that host, from its own lists: fleet.engine.steps.packages.apt_uris_fact) are downloaded once
by the controller, checked against the hash apt's lists give, kept in the state folder, and sent
into the host's own apt cache (/var/cache/apt/archives) before the apply, where apt finds them
and downloads nothing. A host whose lists name a file the controller cannot get fetches it
itself (the step's fallback), so a controller without a route to the mirror still works for
hosts that have one.
"""
from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
from pathlib import Path

from fleet import atomic
from fleet.engine.steps.base import Deb
from fleet.errors import FleetError

HOST_DIR = "/var/cache/apt/archives"
DOWNLOAD_TRIES = 3
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-_~%:")


class DebUnavailable(FleetError):
    """The controller could not get a .deb whole (network, or a hash that does not match)."""


class DebCache:
    """The controller's .debs, by file name; one download per file however many hosts ask."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._checked: set[Deb] = set()    # verified in this run: not hashed again for every host

    def file(self, deb: Deb) -> Path:
        if not deb.file.endswith(".deb") or set(deb.file) - _SAFE or deb.file.startswith("."):
            raise DebUnavailable(f"apt named an odd file: {deb.file!r}")
        if not deb.url.startswith(("http://", "https://")):
            raise DebUnavailable(f"{deb.file}: the controller fetches only http(s), not {deb.url.split(':')[0]}")
        with self._guard:
            lock = self._locks.setdefault(deb.file, threading.Lock())
        path = self.root / deb.file
        with lock:
            if deb in self._checked or (path.exists() and _matches(path.read_bytes(), deb)):
                self._checked.add(deb)
                return path
            self.root.mkdir(parents=True, exist_ok=True)
            data = _download(deb)
            atomic.replace(path, data, mode=0o644)
            self._checked.add(deb)
            return path


def _matches(data: bytes, deb: Deb) -> bool:
    kind = {"md5sum": "md5"}.get(deb.hash_kind, deb.hash_kind)
    try:
        return len(data) == deb.size and hashlib.new(kind, data).hexdigest() == deb.digest
    except ValueError:
        return False


def _download(deb: Deb) -> bytes:
    problem = ""
    for attempt in range(DOWNLOAD_TRIES):
        try:
            with urllib.request.urlopen(deb.url, timeout=60) as answer:
                data: bytes = answer.read()
            if _matches(data, deb):
                return data
            problem = f"its {deb.hash_kind} does not match the host's lists"
        except OSError as exc:
            problem = str(exc)
        time.sleep(attempt)
    raise DebUnavailable(f"{deb.file}: {problem}")
