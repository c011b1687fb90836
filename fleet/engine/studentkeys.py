"""Per-student SSH keys, made on the controller.

Each student gets an ed25519 key pair of their own unless the roster gives their public key:
the private key stays in the state folder (`students/<course>/<student>`, mode 0600, never
committed) until `handout --bundle` hands it to that student; its public half is authorised on
that student's machine only, for the course user only (roles/jupyter).
"""
from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet import atomic
from fleet.errors import FleetError


class StudentKeys:
    def __init__(self, directory: Path, course: str) -> None:
        self.directory = directory
        self.course = course
        self._public: dict[str, str] = {}
        self._lock = threading.Lock()

    def private_path(self, student: str) -> Path:
        return self.directory / student

    def public_key(self, student: str) -> str:
        """`ssh-ed25519 AAAA...` of the student's key, made (once, by one of racing runs) on first use."""
        with self._lock:
            if student not in self._public:
                self._public[student] = self._load_or_create(student)
            return self._public[student]

    def _load_or_create(self, student: str) -> str:
        path = self.private_path(student)
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
            atomic.create(path, pem, mode=0o600)  # a racing run that wins keeps its key; we read it below
        try:
            loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except (ValueError, OSError) as exc:
            raise FleetError(f"{path}: not a readable OpenSSH private key ({exc}). Remove it to make a new "
                             f"one for {student}, then hand out their new bundle") from None
        public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return public.decode()
