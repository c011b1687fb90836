"""The course's EC2 key pair: created or imported once, its private key kept 0400 under .fleet/keys."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fleet.aws.common import DEFAULT_KEY_DIR, CloudError, key_name, key_path, tag_spec

# ------------------------------------------------------------------- key pair


def public_key_openssh(private_key_file: Path) -> str:
    """The 'ssh-rsa AAAA…' / 'ssh-ed25519 AAAA…' line for a PEM or OpenSSH private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

    data = private_key_file.read_bytes()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            pem = serialization.load_pem_private_key(data, password=None)
            # A PEM file may hold a key SSH has no line for (DH, X25519, ...): refused here, with the message below.
            if not isinstance(pem, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey,
                                    dsa.DSAPrivateKey)):
                raise ValueError(f"a {type(pem).__name__}, which SSH cannot use")
            key = pem
    except (TypeError, ValueError) as exc:
        raise CloudError(
            f"cannot read private key {private_key_file} ({exc}); it must be an unencrypted "
            "RSA or Ed25519 key"
        ) from None
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def _write_private_key(path: Path, material: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0400 in the open() itself, so the key is never readable by others even
    # for an instant; O_EXCL so we never overwrite a key someone else depends on.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o400)
    with os.fdopen(fd, "w") as fh:
        fh.write(material if material.endswith("\n") else material + "\n")
    os.chmod(path, 0o400)  # in case an odd umask/ACL widened it


def ensure_key_pair(ec2: Any, course: str, key_dir: Path | str = DEFAULT_KEY_DIR) -> tuple[str, Path, str]:
    """Make the local key file and the EC2 key pair agree; returns (name, path, action)."""
    name, path = key_name(course), key_path(course, key_dir)
    try:
        ec2.describe_key_pairs(KeyNames=[name])
        in_ec2 = True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "InvalidKeyPair.NotFound":
            raise
        in_ec2 = False
    local = path.exists()
    if local and in_ec2:
        return name, path, "existing"
    if local:
        ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_key_openssh(path).encode(),
            TagSpecifications=[tag_spec("key-pair", course)],
        )
        return name, path, "imported"
    if in_ec2:
        raise CloudError(
            f"EC2 key pair {name!r} exists but the private key {path} is missing here. "
            f"Copy the key from whoever launched the course to {path} (mode 0400), or, if it is "
            f"lost, delete the pair (`aws ec2 delete-key-pair --key-name {name}`) and run "
            "launch again (existing instances keep the old key and need it to log in)"
        )
    created = ec2.create_key_pair(
        KeyName=name, KeyType="rsa", TagSpecifications=[tag_spec("key-pair", course)]
    )
    try:
        _write_private_key(path, created["KeyMaterial"])
    except OSError as exc:
        # Without the private key the pair is useless and blocks the next run: undo it.
        with contextlib.suppress(ClientError):
            ec2.delete_key_pair(KeyName=name)
        raise CloudError(f"cannot write the private key to {path}: {exc.strerror}") from None
    return name, path, "created"
