"""Signed JSON messages (key announcements and revocations) on retained MQTT topics."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rllfpr.keys.material import signer_id
from rllfpr.wire.messages import KeyAnnouncement, Revocation

SignedModel = TypeVar("SignedModel", KeyAnnouncement, Revocation)
Kind = Literal["key-announcement", "revocation"]
_KINDS: dict[type[BaseModel], Kind] = {
    KeyAnnouncement: "key-announcement",
    Revocation: "revocation",
}


class SignatureError(ValueError):
    """An envelope is malformed, unsigned, signed by an unknown key, or forged."""


class SignedEnvelope(BaseModel):
    """A payload (JSON text, signed byte for byte) with its Ed25519 signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = Field(description="Type of the payload.")
    signer: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the signing public key.")
    payload: str = Field(description="The signed message, as JSON text.")
    signature: str = Field(description="Ed25519 signature, base64, of `kind` NUL `payload`.")


def _signed_bytes(kind: str, payload: str) -> bytes:
    return kind.encode() + b"\0" + payload.encode()


def sign(message: KeyAnnouncement | Revocation, key: Ed25519PrivateKey) -> bytes:
    """Serialize ``message`` inside a signed envelope, ready to publish."""
    kind = _KINDS[type(message)]
    payload = message.model_dump_json()
    signature = key.sign(_signed_bytes(kind, payload))
    envelope = SignedEnvelope(
        kind=kind,
        signer=signer_id(key.public_key()),
        payload=payload,
        signature=base64.b64encode(signature).decode(),
    )
    return envelope.model_dump_json().encode()


def open_signed(
    data: bytes, expected: type[SignedModel], trusted: Mapping[str, Ed25519PublicKey]
) -> SignedModel:
    """Verify an envelope against trusted signers and return its payload as ``expected``."""
    try:
        envelope = SignedEnvelope.model_validate_json(data)
    except ValidationError as error:
        raise SignatureError(f"malformed or unsigned envelope: {error}") from error
    if envelope.kind != _KINDS[expected]:
        raise SignatureError(f"envelope holds a {envelope.kind}, expected {_KINDS[expected]}")
    public_key = trusted.get(envelope.signer)
    if public_key is None:
        raise SignatureError(f"envelope signed by untrusted key {envelope.signer}")
    try:
        public_key.verify(
            base64.b64decode(envelope.signature, validate=True),
            _signed_bytes(envelope.kind, envelope.payload),
        )
    except (InvalidSignature, ValueError) as error:
        raise SignatureError("forged envelope: signature does not verify") from error
    try:
        return expected.model_validate_json(envelope.payload)
    except ValidationError as error:
        raise SignatureError(
            f"signed payload is not a valid {_KINDS[expected]}: {error}"
        ) from error
