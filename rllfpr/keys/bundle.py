"""Key bundles: one scrambler key (SN weights and BN statistics) signed and encrypted.

File and message layout (integers big-endian)::

    magic b"RLKB" | format_version uint16 | header length uint32 | header (UTF-8 JSON)
    | ciphertext length uint32 | ciphertext | Ed25519 signature (64 bytes)

The signature covers every byte before it. The ciphertext is AES-256-GCM of an ``.npz``
archive of the SN state (numpy, no pickle), with the prefix and header as associated data,
so neither can be altered or moved to another bundle. Verification order: structure,
signature (before any decryption), then decryption, then the key-ring policy.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import struct
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from rllfpr.keys.material import FleetKey, signer_id
from rllfpr.wire.messages import Epoch, TopicLevel, new_id, utc_now

MAGIC = b"RLKB"
FORMAT_VERSION: Final = 1
SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 64 * 1024
MAX_STATE_BYTES = 512 * 1024 * 1024
_PREFIX = struct.Struct(">4sHI")
_LENGTH = struct.Struct(">I")
# What reading a corrupt .npz can raise: zip structure, compression, .npy header, truncation.
_ARCHIVE_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
)


class BundleError(ValueError):
    """A bundle is malformed, unsigned, forged, undecryptable or refused by policy."""


class BundleHeader(BaseModel):
    """Public metadata of a key bundle (signed, not encrypted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = FORMAT_VERSION
    bundle_id: uuid.UUID = Field(default_factory=new_id)
    epoch: Epoch
    scope: TopicLevel = Field(description="`fleet` or the site this key is for.")
    created_at: AwareDatetime = Field(default_factory=utc_now)
    recognizer_id: str = Field(
        min_length=1, max_length=128, description="Id of the recognizer trained for this key."
    )
    architecture: dict[str, Any] = Field(description="SN configuration that the state fits.")
    signer: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the signing key.")
    fleet_key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the encryption key.")
    nonce: str = Field(pattern=r"^[0-9a-f]{24}$", description="AES-GCM nonce, hex.")


@dataclass(frozen=True)
class KeyBundle:
    header: BundleHeader
    state: dict[str, np.ndarray]
    sha256: str  # of the whole signed bundle, as announcements reference it


def _pack_state(state: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {name: np.asarray(array) for name, array in state.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack_state(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive: a zip of plain ``.npy`` members (never a pickle),
    at most ``MAX_STATE_BYTES`` once uncompressed. Only signed bundles get here, yet a
    malformed archive is a ``BundleError`` like any other defect."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except _ARCHIVE_ERRORS as error:
        raise BundleError(f"bundle state is not a valid array archive: {error}") from error
    if unpacked > MAX_STATE_BYTES:
        raise BundleError(f"bundle state unpacks to more than {MAX_STATE_BYTES} bytes")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except _ARCHIVE_ERRORS as error:
        raise BundleError(f"bundle state is not a valid array archive: {error}") from error


def seal(
    *,
    epoch: int,
    scope: str,
    recognizer_id: str,
    architecture: Mapping[str, Any],
    state: Mapping[str, np.ndarray],
    signing_key: Ed25519PrivateKey,
    fleet_key: FleetKey,
    created_at: datetime | None = None,
) -> bytes:
    """Encrypt and sign one key; returns the bundle bytes."""
    nonce = secrets.token_bytes(12)
    header = BundleHeader(
        epoch=epoch,
        scope=scope,
        recognizer_id=recognizer_id,
        architecture=dict(architecture),
        signer=signer_id(signing_key.public_key()),
        fleet_key_id=fleet_key.key_id,
        nonce=nonce.hex(),
        **({"created_at": created_at} if created_at else {}),
    )
    header_bytes = header.model_dump_json().encode()
    signed_head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    ciphertext = AESGCM(fleet_key.secret).encrypt(nonce, _pack_state(state), signed_head)
    body = signed_head + _LENGTH.pack(len(ciphertext)) + ciphertext
    return body + signing_key.sign(body)


def read_header(data: bytes) -> BundleHeader:
    """Parse the public header without verifying anything (for display only)."""
    header, _, _ = _split(data)
    return header


def _split(data: bytes) -> tuple[BundleHeader, bytes, bytes]:
    """Return (header, signed head, ciphertext); checks structure only."""
    if len(data) < _PREFIX.size + _LENGTH.size + SIGNATURE_BYTES:
        raise BundleError(f"truncated bundle: {len(data)} bytes")
    magic, version, header_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BundleError(f"not a key bundle: magic {magic!r}")
    if version != FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format_version {version}")
    if header_length > MAX_HEADER_BYTES:
        raise BundleError(f"bundle header of {header_length} bytes is too large")
    head_end = _PREFIX.size + header_length
    if len(data) < head_end + _LENGTH.size + SIGNATURE_BYTES:
        raise BundleError("truncated bundle header")
    (cipher_length,) = _LENGTH.unpack_from(data, head_end)
    cipher_start = head_end + _LENGTH.size
    if (
        cipher_length > MAX_STATE_BYTES
        or len(data) != cipher_start + cipher_length + SIGNATURE_BYTES
    ):
        raise BundleError("bundle length does not match its declared ciphertext length")
    try:
        header = BundleHeader.model_validate_json(data[_PREFIX.size : head_end])
    except ValidationError as error:
        raise BundleError(f"invalid bundle header: {error}") from error
    return header, data[:head_end], data[cipher_start : cipher_start + cipher_length]


def open_bundle(
    data: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    fleet_keys: Mapping[str, FleetKey],
) -> KeyBundle:
    """Check structure and signature, then decrypt. No epoch policy here: see ``KeyRing``."""
    data = bytes(data)
    header, signed_head, ciphertext = _split(data)
    public_key = trusted.get(header.signer)
    if public_key is None:
        raise BundleError(f"bundle signed by untrusted key {header.signer}")
    try:
        public_key.verify(data[-SIGNATURE_BYTES:], data[:-SIGNATURE_BYTES])
    except InvalidSignature as error:
        raise BundleError("forged bundle: signature does not verify") from error
    fleet_key = fleet_keys.get(header.fleet_key_id)
    if fleet_key is None:
        raise BundleError(f"no decryption key {header.fleet_key_id} for scope {header.scope}")
    try:
        plaintext = AESGCM(fleet_key.secret).decrypt(
            bytes.fromhex(header.nonce), ciphertext, signed_head
        )
    except InvalidTag as error:
        raise BundleError("bundle does not decrypt with the fleet key") from error
    return KeyBundle(header, _unpack_state(plaintext), hashlib.sha256(data).hexdigest())
