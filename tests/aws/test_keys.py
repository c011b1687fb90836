"""The course key's public line (fleet.aws.keys.public_key_openssh): RSA and Ed25519 keys in
either file format give their OpenSSH line; a key SSH has no line for is refused by name."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from fleet.aws.common import CloudError
from fleet.aws.keys import public_key_openssh

PEM, OPENSSH = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.OpenSSH


@pytest.mark.parametrize("make, fmt, prefix", [
    (lambda: rsa.generate_private_key(65537, 2048), PEM, "ssh-rsa "),
    (ed25519.Ed25519PrivateKey.generate, PEM, "ssh-ed25519 "),
    (ed25519.Ed25519PrivateKey.generate, OPENSSH, "ssh-ed25519 "),
])
def test_ssh_keys_give_their_line(tmp_path, make, fmt, prefix):
    key = tmp_path / "key"
    key.write_bytes(make().private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    assert public_key_openssh(key).startswith(prefix)


def test_a_key_ssh_cannot_use_is_refused_by_name(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(x25519.X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, PEM,
                                                                     serialization.NoEncryption()))
    with pytest.raises(CloudError, match=r"cannot read private key .*key \(a X25519PrivateKey, which SSH cannot use\)"):
        public_key_openssh(key)
