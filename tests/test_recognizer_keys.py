"""The recognizer follows signed key activations (grace window) and revocations."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recognizer_service.epochs import EpochModels
from recognizer_service.keywatch import KeyWatch
from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.keys import envelope, material
from rllfpr.local_services import Endpoint
from rllfpr.models.store import ModelStore
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, KeyState, Revocation


def _publish(endpoint: Endpoint, topic: str, payload: bytes) -> None:
    settings = Settings.model_validate({"mqtt": {"host": endpoint.host, "port": endpoint.port}})
    client = mqtt.make_client(settings.mqtt, "trainer", client_id=f"t-{uuid.uuid4().hex[:8]}")
    mqtt.connect(client, settings.mqtt, clean_start=True)
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _wait(condition: threading.Event, what: str) -> None:
    assert condition.wait(5), f"timed out waiting for {what}"


def test_activation_retires_older_epochs_and_revocation_drops(
    mqtt_broker: Endpoint, tmp_path: Path
) -> None:
    signing, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    material.save_public_key(signing.public_key(), tmp_path / "signing.pub.pem")
    scope = f"site{uuid.uuid4().hex[:6]}"
    settings = Settings.model_validate(
        {
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
            "keys": {"trusted_signers": [str(tmp_path / "signing.pub.pem")]},
            "recognizer": {"scopes": [scope]},
        }
    )
    retired: list[tuple[str, int, float]] = []
    dropped: list[tuple[str, int]] = []
    refused: list[str] = []
    events = {name: threading.Event() for name in ("retired", "dropped", "refused")}

    def retire(s: str, e: int, not_after: float) -> None:
        retired.append((s, e, not_after))
        events["retired"].set()

    def drop(s: str, e: int) -> None:
        dropped.append((s, e))
        events["dropped"].set()

    def on_refused(reason: str) -> None:
        refused.append(reason)
        events["refused"].set()

    watch = KeyWatch(settings, lambda _s: [1, 2, 3], retire, drop, on_refused)
    active = KeyAnnouncement(
        scope=scope,
        epoch=3,
        state=KeyState.ACTIVE,
        bundle_id=uuid.uuid4(),
        bundle_sha256="0" * 64,
        grace_s=45,
    )
    _publish(mqtt_broker, topics.key_announcements(scope, 3), envelope.sign(active, signing))
    watch.start()
    try:
        _wait(events["retired"], "the retained activation")
        time.sleep(0.3)
        assert [(s, e) for s, e, _ in retired] == [(scope, 1), (scope, 2)]
        assert retired[0][2] == pytest.approx(active.issued_at.timestamp() + 45)

        forged = Revocation(scope=scope, epoch=3)
        _publish(mqtt_broker, topics.key_revocation(scope, 3), envelope.sign(forged, forger))
        _wait(events["refused"], "the forged revocation to be refused")
        assert refused == ["signature"]
        assert dropped == []

        revocation = Revocation(scope=scope, epoch=2)
        _publish(mqtt_broker, topics.key_revocation(scope, 2), envelope.sign(revocation, signing))
        _wait(events["dropped"], "the revocation")
        assert dropped == [(scope, 2)]
    finally:
        watch.close()


def test_retired_epochs_are_accepted_until_their_deadline_only(tmp_path: Path) -> None:
    import torch

    models = EpochModels(ModelStore(tmp_path), ["fleet"], torch.device("cpu"))
    assert not models.is_retired("fleet", 1)
    models.retire("fleet", 1, time.time() + 60)
    assert not models.is_retired("fleet", 1)
    models.retire("fleet", 1, time.time() + 3600)  # a replay cannot extend the window
    models.retire("fleet", 1, time.time() - 1)
    assert models.is_retired("fleet", 1)
    assert models.get("fleet", 1) is None
