"""The recognizer follows the trainer's signed key announcements and revocations.

It subscribes to the retained key topics of every scope it serves (its own MQTT connection,
apart from the face consumer) and acts on what verifies against the trusted signers:

- ``active`` epoch e: every loaded epoch below e of that scope is retired at the announcement's
  ``issued_at + grace_s``: its faces are still recognized until then (agents switch at slightly
  different moments, and faces already queued carry e-1), rejected after;
- a ``Revocation`` (or a ``revoked`` announcement) of epoch e: the gallery of e is deleted and its
  model dropped; its faces are rejected from then on;
- ``staged`` needs nothing here: the trainer publishes the model to the model store, which the
  service rescans (``EpochModels.refresh``).

Bundles are ignored: a recognizer never needs the SN key. Unsigned, forged or malformed messages
are logged and counted, never acted on. The latest verified announcement and revocation of each
epoch are kept (``announcements()``, ``revocations()``) for the console's Keys page.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.keys import envelope, material
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, KeyState, Revocation

log = logging.getLogger(__name__)

Retire = Callable[[str, int, float], None]  # scope, epoch below the active one, not_after
Drop = Callable[[str, int], object]  # scope, revoked epoch
Loaded = Callable[[str], list[int]]  # scope -> epochs loaded now


class KeyWatch:
    def __init__(
        self,
        settings: Settings,
        loaded: Loaded,
        retire: Retire,
        drop: Drop,
        on_refused: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.settings = settings
        self.trusted: dict[str, Ed25519PublicKey] = material.trusted_signers(
            settings.keys.trusted_signers
        )
        self.loaded, self.retire, self.drop, self.on_refused = loaded, retire, drop, on_refused
        self.client = mqtt.make_client(
            settings.mqtt, "recognizer-keys", client_id=f"keys-{uuid.uuid4().hex[:12]}"
        )
        self.client.on_message = self._on_message
        self._lock = threading.Lock()
        self._announcements: dict[tuple[str, int], KeyAnnouncement] = {}
        self._revocations: dict[tuple[str, int], Revocation] = {}

    def announcements(self) -> dict[tuple[str, int], KeyAnnouncement]:
        """The latest verified announcement of each (scope, epoch)."""
        with self._lock:
            return dict(self._announcements)

    def revocations(self) -> dict[tuple[str, int], Revocation]:
        """Every verified revocation, by (scope, epoch)."""
        with self._lock:
            return dict(self._revocations)

    def start(self) -> None:
        mqtt.connect(self.client, self.settings.mqtt, clean_start=True)
        self._subscribe()
        # connect() installs its own on_connect; ours resubscribes after a reconnection
        mqtt.on_connection_changes(self.client, lambda _session_present: self._subscribe())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _subscribe(self) -> None:
        for scope in self.settings.recognizer.scopes:
            self.client.subscribe(topics.keys_of_scope(scope), qos=1)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return  # a cleared retained topic
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except envelope.SignatureError as error:
            log.warning("refused key message on %s: %s", msg.topic, error)
            self.on_refused("signature")
        except Exception:  # a callback must not kill paho's network thread
            log.exception("cannot apply key message on %s", msg.topic)
            self.on_refused("error")

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            kind = topics.parse(topic).kind
        except topics.TopicError:
            kind = None
        if kind == "key_bundle":
            return  # the SN is not needed here
        if kind == "key_revocation":
            revocation = envelope.open_signed(payload, Revocation, self.trusted)
            with self._lock:
                self._revocations[(revocation.scope, revocation.epoch)] = revocation
            self._revoke(revocation.scope, revocation.epoch, topic)
            return
        if kind != "key_announcement":
            log.warning("ignoring a message on %s: not a key topic of the contract", topic)
            return
        announcement = envelope.open_signed(payload, KeyAnnouncement, self.trusted)
        with self._lock:
            key = (announcement.scope, announcement.epoch)
            latest = self._announcements.get(key)
            if latest is None or latest.issued_at <= announcement.issued_at:
                self._announcements[key] = announcement
        if announcement.state is KeyState.REVOKED:
            self._revoke(announcement.scope, announcement.epoch, topic)
        elif announcement.state is KeyState.ACTIVE:
            not_after = announcement.issued_at.timestamp() + announcement.grace_s
            for epoch in self.loaded(announcement.scope):
                if epoch < announcement.epoch:
                    log.info(
                        "scope %s epoch %d active: epoch %d accepted for %d s more",
                        announcement.scope,
                        announcement.epoch,
                        epoch,
                        announcement.grace_s,
                    )
                    self.retire(announcement.scope, epoch, not_after)

    def _revoke(self, scope: str, epoch: int, topic: str) -> None:
        if scope not in self.settings.recognizer.scopes:
            log.warning("ignoring a revocation for scope %s on %s: not served here", scope, topic)
            return
        log.info("scope %s epoch %d revoked: deleting its gallery and model", scope, epoch)
        self.drop(scope, epoch)
