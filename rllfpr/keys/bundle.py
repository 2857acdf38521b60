"""Key bundles: one scrambler key (SN architecture, seed, weights and BN statistics) signed
and encrypted.

File and message layout, format 2 (integers big-endian)::

    magic b"RLKB" | format_version uint16 | header length uint32 | header (UTF-8 JSON)
    | ciphertext length uint32 | ciphertext | Ed25519 signature (64 bytes)

    plaintext of the ciphertext:
    architecture length uint32 | architecture (UTF-8 JSON: SN configuration and seed) | .npz

The signature covers every byte before it. The ciphertext is AES-256-GCM of the plaintext
above (the ``.npz`` archive holds the SN state: numpy, no pickle), with the prefix and header
as associated data, so neither can be altered or moved to another bundle. Verification order:
structure, signature (before any decryption), then decryption, then the key-ring policy.

The public header carries only what routing and the key-ring policy need before decrypting
(format, ids, epoch, scope, creation time, signer, fleet key id, nonce): nothing from which a
kernel or a statistic of the SN could be derived. Format 1 carried the architecture *with the
kernel seed* in that header, so every reader of a key topic or a bundle file could rebuild the
key (issue 21); it is refused unless the caller asks for it (``accept_format_1``), to keep a
fleet running until its first format-2 epoch is active.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import struct
import tokenize
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from rllfpr.keys.material import FleetKey, signer_id
from rllfpr.wire.messages import Epoch, new_id, utc_now
from rllfpr.wire.topics import TopicLevel

MAGIC = b"RLKB"
FORMAT_VERSION: Final = 2
LEGACY_FORMAT_VERSION: Final = 1  # the architecture and seed in clear (issue 21)
SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 64 * 1024
MAX_ARCHITECTURE_BYTES = 64 * 1024
MAX_STATE_BYTES = 512 * 1024 * 1024
_PREFIX = struct.Struct(">4sHI")
_LENGTH = struct.Struct(">I")
# What reading a corrupt .npz can raise: zip structure, compression, .npy header, truncation;
# RuntimeError is zipfile's "encrypted member", tokenize.TokenError numpy's fallback parse of
# a header that is not a literal (both found by fuzzing), struct.error and OverflowError
# zipfile's reading of out-of-range fields.
_ARCHIVE_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    struct.error,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
)

FORMAT_1_REFUSED = (
    "key bundle format 1 is refused: it carries its key's seed in the public header, so anyone "
    "who has seen the bundle (any subscriber of the key topics, any copy of the file) can "
    "rebuild that SN key (issue 21). Build and activate a new epoch with this release's trainer "
    "(`rllfpr keys rotate --activate`), then revoke the format-1 epochs; until then "
    "`keys.accept_format_1: true` lets a process use them"
)


class BundleError(ValueError):
    """A bundle is malformed, unsigned, forged, undecryptable or refused by policy."""


class BundleHeader(BaseModel):
    """Public metadata of a key bundle (signed, not encrypted). Nothing here derives the SN."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1, 2] = FORMAT_VERSION
    bundle_id: uuid.UUID = Field(default_factory=new_id)
    epoch: Epoch
    scope: TopicLevel = Field(description="`fleet` or the site this key is for.")
    created_at: AwareDatetime = Field(default_factory=utc_now)
    recognizer_id: str = Field(
        min_length=1, max_length=128, description="Id of the recognizer trained for this key."
    )
    signer: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the signing key.")
    fleet_key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the encryption key.")
    nonce: str = Field(pattern=r"^[0-9a-f]{24}$", description="AES-GCM nonce, hex.")


class _Format1Header(BundleHeader):
    """Format 1's header: the same fields plus the architecture, seed included, in clear."""

    architecture: dict[str, Any]


@dataclass(frozen=True)
class KeyBundle:
    header: BundleHeader
    # The secret part, decrypted: never in a repr, a log line or an error message.
    architecture: dict[str, Any] = field(repr=False)  # SN configuration and seed
    state: dict[str, np.ndarray] = field(repr=False)
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


def _pack_secret(architecture: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> bytes:
    text = json.dumps(dict(architecture), sort_keys=True).encode()
    if len(text) > MAX_ARCHITECTURE_BYTES:
        raise BundleError(f"architecture of {len(text)} bytes is too large")
    return _LENGTH.pack(len(text)) + text + _pack_state(state)


def _unpack_secret(plaintext: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(architecture, state); error messages never quote the plaintext."""
    if len(plaintext) < _LENGTH.size:
        raise BundleError("bundle plaintext is truncated")
    (length,) = _LENGTH.unpack_from(plaintext)
    end = _LENGTH.size + length
    if length > MAX_ARCHITECTURE_BYTES or end > len(plaintext):
        raise BundleError("bundle plaintext: architecture length out of range")
    try:
        architecture = json.loads(plaintext[_LENGTH.size : end])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError("bundle plaintext: the architecture is not JSON") from None
    if not isinstance(architecture, dict):
        raise BundleError("bundle plaintext: the architecture is not a JSON object")
    return architecture, _unpack_state(plaintext[end:])


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
    """Encrypt and sign one key (``architecture`` and ``state`` both go in the ciphertext);
    returns the bundle bytes, format 2."""
    nonce = secrets.token_bytes(12)
    header = BundleHeader(
        epoch=epoch,
        scope=scope,
        recognizer_id=recognizer_id,
        signer=signer_id(signing_key.public_key()),
        fleet_key_id=fleet_key.key_id,
        nonce=nonce.hex(),
        **({"created_at": created_at} if created_at else {}),
    )
    header_bytes = header.model_dump_json().encode()
    signed_head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    plaintext = _pack_secret(architecture, state)
    ciphertext = AESGCM(fleet_key.secret).encrypt(nonce, plaintext, signed_head)
    body = signed_head + _LENGTH.pack(len(ciphertext)) + ciphertext
    return body + signing_key.sign(body)


def read_header(data: bytes) -> BundleHeader:
    """Parse the public header without verifying anything (for sorting and display only).
    A format-1 header is returned without its architecture."""
    header, _, _ = _split(data)
    return _public(header)


def _public(header: BundleHeader) -> BundleHeader:
    if isinstance(header, _Format1Header):
        return BundleHeader.model_validate(header.model_dump(exclude={"architecture"}))
    return header


def _split(data: bytes) -> tuple[BundleHeader, bytes, bytes]:
    """Return (header, signed head, ciphertext); checks structure only. A format-1 header is
    a ``_Format1Header``."""
    if len(data) < _PREFIX.size + _LENGTH.size + SIGNATURE_BYTES:
        raise BundleError(f"truncated bundle: {len(data)} bytes")
    magic, version, header_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BundleError(f"not a key bundle: magic {magic!r}")
    if version not in (LEGACY_FORMAT_VERSION, FORMAT_VERSION):
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
    model = _Format1Header if version == LEGACY_FORMAT_VERSION else BundleHeader
    try:
        header = model.model_validate_json(data[_PREFIX.size : head_end])
    except ValidationError as error:
        raise BundleError(f"invalid bundle header: {error}") from error
    if header.format_version != version:
        raise BundleError(
            f"bundle header says format_version {header.format_version}, its prefix {version}"
        )
    return header, data[:head_end], data[cipher_start : cipher_start + cipher_length]


def open_bundle(
    data: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    fleet_keys: Mapping[str, FleetKey],
    *,
    accept_format_1: bool = False,
) -> KeyBundle:
    """Check structure and signature, then decrypt. No epoch policy here: see ``KeyRing``.
    Format-1 bundles are refused (``FORMAT_1_REFUSED``) unless ``accept_format_1``."""
    data = bytes(data)
    header, signed_head, ciphertext = _split(data)
    if header.format_version == LEGACY_FORMAT_VERSION and not accept_format_1:
        raise BundleError(FORMAT_1_REFUSED)
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
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(header, _Format1Header):
        state = _unpack_state(plaintext)
        return KeyBundle(_public(header), dict(header.architecture), state, digest)
    architecture, state = _unpack_secret(plaintext)
    return KeyBundle(header, architecture, state, digest)
