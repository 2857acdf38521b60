"""Key material: the trainer's Ed25519 signing key and the fleet's AES-256-GCM key.

Secrets are written with mode 0600 inside directories of mode 0700 and refused when a file
is readable by others. Public keys are PEM files anyone may read.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rllfpr.files import write_private

FLEET_KEY_BYTES = 32


class KeyMaterialError(ValueError):
    """A key file is missing, malformed or too widely readable."""


def key_id(raw: bytes) -> str:
    """Short public identifier of a key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(raw).hexdigest()[:16]


def signer_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id(raw)


@dataclass(frozen=True)
class FleetKey:
    """Symmetric key that encrypts bundles for one key scope."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != FLEET_KEY_BYTES:
            raise KeyMaterialError(f"fleet key must be {FLEET_KEY_BYTES} bytes")

    @property
    def key_id(self) -> str:
        return key_id(b"rllfpr-fleet-key" + self.secret)

    @classmethod
    def generate(cls) -> FleetKey:
        return cls(secrets.token_bytes(FLEET_KEY_BYTES))

    def __repr__(self) -> str:  # never print the secret
        return f"FleetKey(key_id={self.key_id})"


def _read_secret(path: Path) -> bytes:
    if not path.is_file():
        raise KeyMaterialError(f"key file not found: {path}")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(
            f"{path} is accessible by group or others (mode {oct(mode & 0o777)}); chmod 600 it"
        )
    return path.read_bytes()


def save_fleet_key(key: FleetKey, path: Path) -> None:
    write_private(path, key.secret.hex().encode() + b"\n")


def load_fleet_key(path: Path) -> FleetKey:
    text = _read_secret(path).strip()
    try:
        return FleetKey(bytes.fromhex(text.decode()))
    except (ValueError, UnicodeDecodeError) as error:
        raise KeyMaterialError(f"{path}: expected {FLEET_KEY_BYTES} bytes as hex") from error


def save_signing_key(key: Ed25519PrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read_secret(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 private key")
    return key


def save_public_key(key: Ed25519PublicKey, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    if not path.is_file():
        raise KeyMaterialError(f"public key file not found: {path}")
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 public key")
    return key


def trusted_signers(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by signer id, as the verifier wants them."""
    keys = (load_public_key(path) for path in paths)
    return {signer_id(key): key for key in keys}
