"""CurveZMQ keys for a cluster, derived on the controller from the course secret.

A Curve25519 secret key is any 32 bytes (the scalar is clamped where it is used), so the
controller's keypair can be derived like every other course secret: stable across runs,
nothing to store, and no file to copy from the head to the workers. ZeroMQ writes keys in
Z85 (RFC 32/Z85: 4 bytes -> 5 characters), which is what ipyparallel's connection files hold.
"""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def z85(data: bytes) -> str:
    if len(data) % 4:
        raise ValueError("Z85 encodes a multiple of 4 bytes")
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chunk.append(Z85[digit])
        out.append("".join(reversed(chunk)))
    return "".join(out)


def keypair(secret: bytes) -> tuple[str, str]:
    """(public, secret) in Z85 for a 32-byte secret, as zmq.curve_keypair() returns them."""
    if len(secret) != 32:
        raise ValueError("a Curve25519 secret key is 32 bytes")
    public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return z85(public), z85(secret)
