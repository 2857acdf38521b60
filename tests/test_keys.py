from __future__ import annotations

import io
import json
import os
import struct
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rllfpr.keys import bundle, envelope, material
from rllfpr.keys.bundle import BundleError
from rllfpr.keys.envelope import SignatureError
from rllfpr.keys.keyring import KeyRing
from rllfpr.keys.material import FleetKey, KeyMaterialError
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from rllfpr.wire.messages import KeyAnnouncement, KeyState, Revocation
from trainer.studies.privacy.attacks.key_rebuild import seal_format_1

SIGNER = Ed25519PrivateKey.generate()
FLEET = FleetKey.generate()
TRUSTED = {material.signer_id(SIGNER.public_key()): SIGNER.public_key()}
STATE = {
    "encoder.0.weight": np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32),
    "encoder.0.bn.running_mean": np.arange(16, dtype=np.float32),
}


def make_bundle(epoch: int = 1, scope: str = "fleet", **changes: object) -> bytes:
    arguments: dict[str, object] = {
        "epoch": epoch,
        "scope": scope,
        "recognizer_id": f"resnet18-e{epoch}",
        "architecture": {"levels": 5, "widths": [16, 32, 64, 64, 64]},
        "state": STATE,
        "signing_key": SIGNER,
        "fleet_key": FLEET,
    }
    arguments.update(changes)
    return bundle.seal(**arguments)  # type: ignore[arg-type]


def new_ring(tmp_path: Path | None = None, **kwargs: object) -> KeyRing:
    state_file = tmp_path / "keyring.json" if tmp_path else None
    return KeyRing(TRUSTED, [FLEET], state_file=state_file, **kwargs)  # type: ignore[arg-type]


def test_bundle_round_trip_restores_state_and_metadata() -> None:
    opened = bundle.open_bundle(make_bundle(epoch=4), TRUSTED, {FLEET.key_id: FLEET})
    assert opened.header.epoch == 4
    assert opened.architecture["levels"] == 5  # the architecture comes from the ciphertext
    assert set(opened.state) == set(STATE)
    for name, array in STATE.items():
        assert np.array_equal(opened.state[name], array)


def test_weights_are_not_readable_in_the_bundle_bytes() -> None:
    data = make_bundle()
    assert STATE["encoder.0.weight"].tobytes()[:64] not in data
    assert b"encoder.0.weight" not in data  # even the layer names are encrypted


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda d: d.index(b'"epoch":') + 8, "forged|invalid"),  # header tampered
        (lambda d: len(d) - 100, "forged"),  # ciphertext tampered
        (lambda d: len(d) - 1, "forged"),  # signature tampered
    ],
)
def test_tampering_anywhere_is_detected(where, reason: str) -> None:
    data = make_bundle()
    with pytest.raises(BundleError, match=reason):
        bundle.open_bundle(flip(data, where(data)), TRUSTED, {FLEET.key_id: FLEET})


def test_unsigned_truncated_and_foreign_bundles_are_rejected() -> None:
    data = make_bundle()
    keys = {FLEET.key_id: FLEET}
    with pytest.raises(BundleError, match=r"truncated|length"):
        bundle.open_bundle(data[:-64], TRUSTED, keys)  # signature stripped
    with pytest.raises(BundleError, match="not a key bundle"):
        bundle.open_bundle(b"PK\x03\x04" + data[4:], TRUSTED, keys)
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(BundleError, match="untrusted"):
        bundle.open_bundle(make_bundle(signing_key=stranger), TRUSTED, keys)
    with pytest.raises(BundleError, match="no decryption key"):
        bundle.open_bundle(make_bundle(fleet_key=FleetKey.generate()), TRUSTED, keys)


def test_signed_by_trusted_key_but_encrypted_under_same_id_wrong_secret_fails() -> None:
    data = make_bundle()
    impostor = FleetKey.generate()
    with pytest.raises(BundleError, match="decrypt"):
        bundle.open_bundle(data, TRUSTED, {FLEET.key_id: impostor})


def test_keyring_accepts_newer_epochs_and_rejects_stale_or_replayed() -> None:
    ring = new_ring()
    first = make_bundle(epoch=1)
    assert ring.accept(first).is_new
    assert not ring.accept(first).is_new  # retained redelivery is a no-op
    assert ring.accept(make_bundle(epoch=2)).is_new
    assert not ring.accept(first).is_new  # epoch 1 stays usable until it is revoked
    with pytest.raises(BundleError, match="stale or replayed"):
        ring.accept(make_bundle(epoch=2))  # a second, different bundle for the same epoch
    with pytest.raises(BundleError, match="stale or replayed"):
        ring.accept(make_bundle(epoch=1))  # an older epoch this ring never accepted

    joined_later = new_ring()
    joined_later.accept(make_bundle(epoch=2))
    with pytest.raises(BundleError, match="stale or replayed"):
        joined_later.accept(first)  # a genuinely signed old bundle replayed to a newer ring
    ring.revoke(envelope.sign(Revocation(scope="fleet", epoch=1), SIGNER))
    with pytest.raises(BundleError, match="revoked"):
        ring.accept(first)  # replayed after its revocation


def test_keyring_rejects_revoked_epochs_and_foreign_scopes() -> None:
    ring = new_ring()
    ring.accept(make_bundle(epoch=1))
    revocation = envelope.sign(Revocation(scope="fleet", epoch=2), SIGNER)
    assert ring.revoke(revocation).epoch == 2
    assert ring.is_revoked("fleet", 2)
    with pytest.raises(BundleError, match="revoked"):
        ring.accept(make_bundle(epoch=2))
    with pytest.raises(BundleError, match="scope"):
        ring.accept(make_bundle(epoch=5, scope="site-a"))
    assert ring.accept(make_bundle(epoch=3)).is_new


def test_keyring_rejects_bundles_from_the_future() -> None:
    ring = new_ring()
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    with pytest.raises(BundleError, match="future"):
        ring.accept(make_bundle(created_at=future))


def test_forged_revocation_is_rejected() -> None:
    ring = new_ring()
    forged = envelope.sign(Revocation(scope="fleet", epoch=1), Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="untrusted"):
        ring.revoke(forged)
    genuine = envelope.sign(Revocation(scope="fleet", epoch=1), SIGNER)
    tampered = genuine.replace(b'\\"epoch\\":1', b'\\"epoch\\":9')
    assert tampered != genuine
    with pytest.raises(SignatureError, match="forged"):
        ring.revoke(tampered)
    assert not ring.is_revoked("fleet", 1)


def test_announcements_must_name_their_bundle_unless_revoking() -> None:
    with pytest.raises(ValueError, match="name their bundle"):
        KeyAnnouncement(scope="fleet", epoch=2, state=KeyState.STAGED)
    assert KeyAnnouncement(scope="fleet", epoch=2, state=KeyState.REVOKED).bundle_id is None


def test_envelope_round_trip_and_kind_confusion() -> None:
    announcement = KeyAnnouncement(
        scope="fleet",
        epoch=2,
        state=KeyState.ACTIVE,
        bundle_id=uuid.uuid4(),
        bundle_sha256="0" * 64,
    )
    data = envelope.sign(announcement, SIGNER)
    assert envelope.open_signed(data, KeyAnnouncement, TRUSTED) == announcement
    with pytest.raises(SignatureError, match="expected revocation"):
        envelope.open_signed(data, Revocation, TRUSTED)
    with pytest.raises(SignatureError, match="malformed or unsigned"):
        envelope.open_signed(announcement.model_dump_json().encode(), KeyAnnouncement, TRUSTED)


def test_keyring_state_survives_a_restart(tmp_path: Path) -> None:
    ring = new_ring(tmp_path)
    old = make_bundle(epoch=1)
    ring.accept(old)
    ring.accept(make_bundle(epoch=2))
    ring.revoke(envelope.sign(Revocation(scope="fleet", epoch=1), SIGNER))
    assert (tmp_path / "keyring.json").stat().st_mode & 0o777 == 0o600
    restarted = new_ring(tmp_path)
    assert restarted.state("fleet").highest_epoch == 2
    with pytest.raises(BundleError, match="revoked"):
        restarted.accept(old)


def test_key_files_are_private_and_round_trip(tmp_path: Path) -> None:
    material.save_fleet_key(FLEET, tmp_path / "keys" / "fleet.key")
    material.save_signing_key(SIGNER, tmp_path / "keys" / "signing.pem")
    material.save_public_key(SIGNER.public_key(), tmp_path / "keys" / "signing.pub.pem")
    assert material.load_fleet_key(tmp_path / "keys" / "fleet.key") == FLEET
    loaded = material.load_signing_key(tmp_path / "keys" / "signing.pem")
    assert material.signer_id(loaded.public_key()) == material.signer_id(SIGNER.public_key())
    assert set(material.trusted_signers([tmp_path / "keys" / "signing.pub.pem"])) == set(TRUSTED)
    os.chmod(tmp_path / "keys" / "fleet.key", 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        material.load_fleet_key(tmp_path / "keys" / "fleet.key")
    assert "secret" not in repr(FLEET)
    assert FLEET.secret.hex() not in repr(FLEET)


def test_a_production_key_with_a_63_bit_seed_survives_its_bundle() -> None:
    config = ScramblerConfig(levels=2, widths=(4, 8), input_size=32)
    network = ScramblerNetwork(config, 2**63 - 1)
    key = network.key_state()
    sealed = make_bundle(architecture=key["architecture"], state=key["state"])
    opened = bundle.open_bundle(sealed, TRUSTED, {FLEET.key_id: FLEET})
    restored = ScramblerNetwork.from_key_state(opened.architecture, opened.state)
    assert restored.seed == 2**63 - 1
    faces = torch.rand(2, 3, 32, 32)
    assert torch.equal(restored.scramble(faces), network.scramble(faces))


def _archive_marked_encrypted() -> bytes:
    """A valid state archive whose member claims to be encrypted (zip flag bit 0)."""
    archive = bytearray(bundle._pack_state(STATE))
    archive[6] |= 1  # the local file header's flags
    central = archive.index(b"PK\x01\x02")
    archive[central + 8] |= 1  # the central directory's flags, which zipfile reads
    return bytes(archive)


def _archive_with_a_broken_array_header() -> bytes:
    """A zip holding one .npy whose header is not a Python literal (numpy's reader raised
    tokenize.TokenError): the header a long fuzzing run produced by mutating a real one."""
    header = b"{'descr': '<f4', 'fortran_order': False, (sha9e': (2, 1, 3, 3), }"
    header = header.ljust(117) + b"\n"
    array = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(72)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("encoder.0.weight.npy", array)
    return archive.getvalue()


@pytest.mark.parametrize(
    "state",
    [
        b"",  # np.load raised EOFError
        b"PK\x03\x04" + b"\0" * 40,  # a broken zip: zipfile.BadZipFile
        b"\x93NUMPY\x01\x00",  # a lone .npy, not an archive
        b"garbage",
        _archive_marked_encrypted(),  # zipfile raised RuntimeError ("password required")
        _archive_with_a_broken_array_header(),  # numpy raised tokenize.TokenError
    ],
)
def test_a_signed_bundle_with_a_broken_state_archive_is_a_bundle_error(state: bytes) -> None:
    """Found by fuzzing (tests/test_fuzz.py): a trusted signer's bundle whose encrypted state
    is not an array archive raised EOFError, zipfile errors, RuntimeError and
    tokenize.TokenError past the key ring."""
    header = bundle.read_header(make_bundle()).model_dump_json().encode()
    head = bundle._PREFIX.pack(bundle.MAGIC, bundle.FORMAT_VERSION, len(header)) + header
    nonce = bytes.fromhex(json.loads(header)["nonce"])
    plaintext = bundle._LENGTH.pack(2) + b"{}" + state  # a valid architecture part, format 2
    ciphertext = AESGCM(FLEET.secret).encrypt(nonce, plaintext, head)
    body = head + bundle._LENGTH.pack(len(ciphertext)) + ciphertext
    with pytest.raises(BundleError, match="not a valid array archive"):
        bundle.open_bundle(body + SIGNER.sign(body), TRUSTED, {FLEET.key_id: FLEET})


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (b"\0\0", "truncated"),
        (b"\xff\xff\xff\xff{}", "architecture length out of range"),
        (b"\0\0\0\x09{}", "architecture length out of range"),
        (b"\0\0\0\x02\xff\xfe", "not JSON"),
        (b"\0\0\0\x02[]", "not a JSON object"),
    ],
)
def test_a_signed_bundle_with_a_broken_architecture_part_is_a_bundle_error(
    plaintext: bytes, reason: str
) -> None:
    header = bundle.read_header(make_bundle()).model_dump_json().encode()
    head = bundle._PREFIX.pack(bundle.MAGIC, bundle.FORMAT_VERSION, len(header)) + header
    nonce = bytes.fromhex(json.loads(header)["nonce"])
    ciphertext = AESGCM(FLEET.secret).encrypt(nonce, plaintext, head)
    body = head + bundle._LENGTH.pack(len(ciphertext)) + ciphertext
    with pytest.raises(BundleError, match=reason):
        bundle.open_bundle(body + SIGNER.sign(body), TRUSTED, {FLEET.key_id: FLEET})


def format_1_bundle(epoch: int = 1) -> tuple[bytes, ScramblerNetwork]:
    network = ScramblerNetwork(ScramblerConfig(levels=2, widths=(4, 8), input_size=32), 7)
    return seal_format_1(
        network, epoch=epoch, scope="fleet", signing_key=SIGNER, fleet_key=FLEET
    ), network


def test_a_format_1_bundle_is_refused_with_the_reason_unless_asked_for() -> None:
    legacy, network = format_1_bundle()
    with pytest.raises(BundleError, match=r"format 1 is refused: .* seed .* keys rotate"):
        bundle.open_bundle(legacy, TRUSTED, {FLEET.key_id: FLEET})
    with pytest.raises(BundleError, match="format 1 is refused"):
        new_ring().accept(legacy)
    header = bundle.read_header(legacy)  # for sorting and display: no architecture, no seed
    assert header.format_version == 1
    assert "architecture" not in header.model_dump()
    opened = bundle.open_bundle(legacy, TRUSTED, {FLEET.key_id: FLEET}, accept_format_1=True)
    restored = ScramblerNetwork.from_key_state(opened.architecture, opened.state)
    faces = torch.rand(2, 3, 32, 32)
    assert torch.equal(restored.scramble(faces), network.scramble(faces))
    assert new_ring(accept_format_1=True).accept(legacy).is_new


def test_a_header_must_agree_with_its_prefix_on_the_format() -> None:
    data = make_bundle()
    behind_format_1 = data[:4] + (1).to_bytes(2, "big") + data[6:]
    with pytest.raises(BundleError, match="invalid bundle header"):  # no architecture
        bundle.read_header(behind_format_1)
    claims_format_1 = data.replace(b'"format_version":2', b'"format_version":1')
    with pytest.raises(BundleError, match="says format_version 1, its prefix 2"):
        bundle.read_header(claims_format_1)
    legacy = format_1_bundle()[0]
    behind_format_2 = legacy[:4] + (2).to_bytes(2, "big") + legacy[6:]
    with pytest.raises(BundleError, match="invalid bundle header"):  # an architecture
        bundle.read_header(behind_format_2)


def test_the_trainer_never_publishes_a_format_1_bundle_again() -> None:
    import paho.mqtt.client as paho

    from trainer.rotation import KeyPublisher

    client = paho.Client(paho.CallbackAPIVersion.VERSION2)  # never connected: nothing may go out
    with pytest.raises(BundleError, match="format 1 is refused"):
        KeyPublisher(client, SIGNER).stage(format_1_bundle()[0])
