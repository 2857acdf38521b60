"""``rllfpr keys rotate | activate | revoke | status``: the trainer's side of key rotation.

A rotation is three steps, each a signed, retained message (``trainer/rotation.py``):
``rotate`` builds and gates epoch e+1 and stages it (agents and recognizers load it, enrollment
stations re-scramble their photos for it); ``activate`` switches the fleet to it (recognizers
still accept e during the grace window); ``revoke`` deletes epoch e everywhere.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.table import Table

from rllfpr import mqtt
from rllfpr.cli_support import ConfigOption, console, fail, settings_or_fail
from rllfpr.config import Settings
from rllfpr.keys import envelope, material
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, Revocation

if TYPE_CHECKING:  # torch loads only when a command runs, so --help answers at once
    from rllfpr.models.scrambler import ScramblerNetwork
    from rllfpr.models.store import ModelStore
    from trainer.rotation import KeyPublisher

ScopeOption = typer.Option(None, help="Key scope (default: keys.scope of the configuration).")


@contextmanager
def _publisher(settings: Settings) -> Iterator[KeyPublisher]:
    from trainer.rotation import KeyPublisher

    signing = _signing_key(settings)
    client = mqtt.make_client(settings.mqtt, "trainer", client_id=f"trainer-{uuid.uuid4().hex[:8]}")
    try:
        mqtt.connect(client, settings.mqtt, clean_start=True)
    except mqtt.MqttError as error:
        raise fail(str(error)) from error
    try:
        yield KeyPublisher(client, signing)
    finally:
        client.disconnect()
        client.loop_stop()


def _signing_key(settings: Settings) -> Ed25519PrivateKey:
    path = settings.trainer.signing_key_file
    if path is None:
        raise fail("no signing key configured (trainer.signing_key_file)")
    try:
        return material.load_signing_key(path)
    except material.KeyMaterialError as error:
        raise fail(str(error)) from error


def _bundle_file(settings: Settings, scope: str, epoch: int) -> Path:
    return settings.trainer.work_directory / scope / f"epoch-{epoch:08d}.rlkb"


def _built_epochs(settings: Settings, scope: str) -> list[int]:
    folder = settings.trainer.work_directory / scope
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.rlkb"))


def _open_own_bundle(settings: Settings, scope: str, epoch: int) -> ScramblerNetwork:
    public = _signing_key(settings).public_key()
    if settings.keys.fleet_key_file is None:
        raise fail("no fleet key configured (keys.fleet_key_file)")
    from trainer.rotation import open_own_bundle

    fleet = material.load_fleet_key(settings.keys.fleet_key_file)
    return open_own_bundle(_bundle_file(settings, scope, epoch).read_bytes(), public, fleet)


def keys_rotate(
    scope: str | None = ScopeOption,
    activate: bool = typer.Option(False, help="Activate the new epoch right after staging it."),
    config: Path | None = ConfigOption,
) -> None:
    """Build, gate and stage the next key epoch of a scope (trained on the trainer's corpus)."""
    from rllfpr.models.store import ModelStore
    from trainer.experiment import load_dataset
    from trainer.rotation import EpochBuilder, GateError, RotationConfig, teacher_descriptors

    settings = settings_or_fail(config)
    scope = scope or settings.keys.scope
    if settings.keys.fleet_key_file is None:
        raise fail("no fleet key configured (keys.fleet_key_file)")
    path = settings.trainer.rotation_config
    if path is None:
        raise fail(
            "no rotation config (trainer.rotation_config): the corpus, recipe and gates of a "
            "new epoch; the deployed one is deploy/config/rotation.yaml"
        )
    try:
        rotation = RotationConfig.from_yaml(path)
    except (OSError, ValueError) as error:
        raise fail(f"cannot read the rotation config {path}: {error}") from error
    store = ModelStore(settings.recognizer.model_store)
    built = _built_epochs(settings, scope)
    epoch = max(built + store.epochs(scope) + [0]) + 1
    previous_key = _open_own_bundle(settings, scope, built[-1]) if built else None
    corpus = load_dataset(rotation.experiment, settings.data, settings.cache)
    builder = EpochBuilder(
        rotation,
        corpus,
        store,
        _signing_key(settings),
        material.load_fleet_key(settings.keys.fleet_key_file),
        settings.trainer.work_directory,
        teacher_descriptors(rotation.experiment, corpus, settings.data, settings.cache),
    )
    console.print(f"building epoch {epoch} of scope {scope}")
    try:
        result = builder.build(scope, epoch, previous_key)
    except GateError as error:
        folder = settings.trainer.work_directory
        raise fail(f"{error}; nothing was staged (report in {folder})") from error
    gates = result.report.gates
    assert gates is not None  # a built epoch passed its gates
    linkage = gates.template_linkage_accuracy  # None for a scope's first epoch
    console.print(
        f"gates passed: accuracy {gates.closed_set_accuracy:.1%} (floor "
        f"{gates.accuracy_floor:.0%}), cross-key {gates.cross_key_accuracy:.1%}"
        + ("" if linkage is None else f", old templates {linkage:.1%}")
        + f" (limit {gates.cross_key_limit:.1%})"
    )
    with _publisher(settings) as publisher:
        publisher.stage(result.bundle)
        console.print(f"staged epoch {epoch} (recognizer {result.recognizer_id})")
        if activate:
            publisher.activate(result.bundle, rotation.grace_s)
            console.print(f"activated epoch {epoch}")


def keys_activate(
    epoch: int = typer.Argument(..., min=1, help="A staged epoch."),
    scope: str | None = ScopeOption,
    grace_s: int = typer.Option(600, min=0, help="How long recognizers accept the old epoch."),
    config: Path | None = ConfigOption,
) -> None:
    """Switch agents and recognizers to a staged epoch."""
    settings = settings_or_fail(config)
    scope = scope or settings.keys.scope
    path = _bundle_file(settings, scope, epoch)
    if not path.exists():
        raise fail(f"epoch {epoch} of scope {scope} was not built here ({path} is missing)")
    with _publisher(settings) as publisher:
        publisher.activate(path.read_bytes(), grace_s)
    console.print(f"activated epoch {epoch} of scope {scope} (grace {grace_s} s)")


def keys_revoke(
    epoch: int = typer.Argument(..., min=1, help="The epoch to revoke."),
    scope: str | None = ScopeOption,
    reason: str = typer.Option("rotation", help="Recorded in the signed revocation."),
    config: Path | None = ConfigOption,
) -> None:
    """Revoke an epoch: agents forget its SN, recognizers delete its gallery and model."""
    from rllfpr.models.store import ModelStore

    settings = settings_or_fail(config)
    scope = scope or settings.keys.scope
    with _publisher(settings) as publisher:
        publisher.revoke(scope, epoch, reason)
    ModelStore(settings.recognizer.model_store).revoke(scope, epoch, reason)
    _bundle_file(settings, scope, epoch).unlink(missing_ok=True)
    console.print(f"revoked epoch {epoch} of scope {scope}")


def _retained_key_messages(settings: Settings, scope: str, wait_s: float) -> dict[str, bytes]:
    client = mqtt.make_client(settings.mqtt, "status", client_id=f"status-{uuid.uuid4().hex[:8]}")
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        with lock:
            received[message.topic] = bytes(message.payload)

    client.on_message = on_message
    try:
        mqtt.connect(client, settings.mqtt, clean_start=True)
    except mqtt.MqttError as error:
        raise fail(str(error)) from error
    client.subscribe(topics.keys_of_scope(scope), qos=1)
    time.sleep(wait_s)  # retained messages arrive right after the subscription
    client.disconnect()
    client.loop_stop()
    with lock:
        return dict(received)


def keys_status(
    scope: str | None = ScopeOption,
    wait_s: float = typer.Option(1.0, help="How long to collect retained messages."),
    config: Path | None = ConfigOption,
) -> None:
    """Every epoch of a scope as the broker, the model store and this trainer see it."""
    from rllfpr.models.store import ModelStore

    settings = settings_or_fail(config)
    scope = scope or settings.keys.scope
    retained = _retained_key_messages(settings, scope, wait_s)
    trusted = material.trusted_signers(settings.keys.trusted_signers)
    store = ModelStore(settings.recognizer.model_store)
    epochs = set(_built_epochs(settings, scope)) | set(store.epochs(scope))
    rows: dict[int, dict[str, str]] = {}
    for topic, payload in retained.items():
        try:
            parsed = topics.parse(topic)
        except topics.TopicError:
            continue  # not a key topic of the contract
        if parsed.epoch is None:
            continue
        epochs.add(parsed.epoch)
        row = rows.setdefault(parsed.epoch, {})
        if parsed.kind == "key_bundle":
            row["bundle"] = "retained"
        elif parsed.kind == "key_announcement":
            row["state"] = _announced_state(payload, trusted)
        elif parsed.kind == "key_revocation":
            row["state"] = "revoked" if _verifies(payload, trusted) else "FORGED"
    table = Table("epoch", "announced", "bundle on broker", "model store", "built here")
    for epoch in sorted(epochs):
        row = rows.get(epoch, {})
        table.add_row(
            str(epoch),
            row.get("state", "-"),
            row.get("bundle", "-"),
            _store_state(store, scope, epoch),
            "yes" if _bundle_file(settings, scope, epoch).exists() else "-",
        )
    console.print(table)


Trusted = Mapping[str, Ed25519PublicKey]


def _verifies(payload: bytes, trusted: Trusted) -> bool:
    try:
        envelope.open_signed(payload, Revocation, trusted)
    except envelope.SignatureError:
        return False
    return True


def _announced_state(payload: bytes, trusted: Trusted) -> str:
    try:
        return envelope.open_signed(payload, KeyAnnouncement, trusted).state.value
    except envelope.SignatureError:
        return "FORGED"


def _store_state(store: ModelStore, scope: str, epoch: int) -> str:
    if store.is_revoked(scope, epoch):
        return "revoked"
    return "yes" if epoch in store.epochs(scope) else "-"
