"""Secrets: per-host values derived from one course secret, and masking of every known secret.

The course secret is 32 random bytes in a 0600 file under the project's state folder
(outside version control). A host's token is HMAC(course secret, host/purpose): stable
across runs, different per host, and nothing per host needs storing.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _random
import threading
from pathlib import Path
from typing import Any, overload

from fleet import atomic
from fleet.engine.studentkeys import StudentKeys
from fleet.errors import FleetError
from fleet.shell import redact_url

MASK = "********"
KEY_BYTES = 32
SECRET_NAME = re.compile(r"(token|password|passwd|secret|passphrase|hashed)", re.I)


class Masker:
    """Replaces every registered secret value in text shown to people or written to reports."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: object) -> None:
        text = str(value)
        if len(text) >= 4:
            with self._lock:
                if text not in self._values:
                    self._values.add(text)
                    self._pattern = None

    def add_vars(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if SECRET_NAME.search(key) and isinstance(value, (str, int)) and value not in ("", None):
                self.add(value)

    def found_in(self, text: str) -> list[str]:
        """The registered secrets that occur in text, longest first."""
        with self._lock:
            return sorted((v for v in self._values if v in text), key=len, reverse=True)

    @overload
    def __call__(self, text: str) -> str: ...
    @overload
    def __call__(self, text: None) -> None: ...
    @overload
    def __call__(self, text: str | None) -> str | None: ...

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        text = redact_url(text)
        if not self._values:
            return text
        with self._lock:
            if self._pattern is None:
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            pattern = self._pattern
        return pattern.sub(MASK, text)


class CourseSecrets:
    def __init__(self, directory: Path, course: str, masker: Masker) -> None:
        if "/" in course or course in ("", ".", ".."):  # the inventory checks names; never a path here
            raise ValueError(f"not a course name: {course!r}")
        self.path = directory / f"{course}.key"
        self.masker = masker
        self.students = StudentKeys(directory.parent / "students" / course, course)
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _course_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = self._load_or_create()
            return self._key

    def _load_or_create(self) -> bytes:
        # Runs started together: the lock makes one of them create the key; the key is put in
        # place whole (link of a synced temp file), so no reader ever sees a part or an empty file.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic.locked(self.path.with_name(f".{self.path.name}.lock")):
            if not self.path.exists():
                atomic.create(self.path, _random.token_bytes(KEY_BYTES), mode=0o600)
            key = self.path.read_bytes()
        if len(key) != KEY_BYTES:
            raise FleetError(f"{self.path}: expected a {KEY_BYTES}-byte course secret, found {len(key)} bytes. "
                             f"Restore it from a backup, or remove it to make a new one (every token changes)")
        return key

    def host_secret(self, host: str, purpose: str = "jupyter", length: int = 48) -> str:
        digest = hmac.new(self._course_key(), f"{host}/{purpose}".encode(), hashlib.sha256).hexdigest()
        value = digest[:length]
        self.masker.add(value)
        return value

    def argon2_hash(self, host: str, password: str) -> str:
        """Jupyter's `argon2:` password hash with a salt derived from the course secret, so the
        config file is byte-for-byte stable across runs (a random salt would change it each time)."""
        from argon2.low_level import Type, hash_secret

        self.masker.add(password)
        salt = hmac.new(self._course_key(), f"{host}/salt".encode(), hashlib.sha256).digest()[:16]
        encoded = hash_secret(password.encode(), salt, time_cost=3, memory_cost=10240, parallelism=8,
                              hash_len=32, type=Type.ID).decode()
        self.masker.add(encoded)
        return "argon2:" + encoded
