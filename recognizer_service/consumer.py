"""The service's MQTT side: shared subscriptions in, events out, acknowledgements by hand.

- MQTT v5, persistent session: a stable client id, ``clean_start=False`` and a session expiry,
  so faces queued or in flight while the service is down wait for it (Mosquitto keeps the
  in-flight messages of a shared subscriber for that same session; they are not handed to the
  other members of the group).
- QoS 1 with manual acknowledgement (paho ``manual_ack``): a face is acknowledged only after it
  is processed; acknowledgements go in arrival order. The broker hands out at most its
  ``max_inflight_messages`` unacknowledged faces, which caps a micro-batch.
- paho's ``message_callback_add`` does not match ``$share/...`` filters, so every message goes
  through ``on_message`` into one queue. An acknowledgement belongs to the connection that
  delivered the message: after a reconnect, messages of the old connection are not acknowledged
  (their packet ids may be reused); the broker delivers them again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from recognizer_service.metrics import Metrics
from recognizer_service.pipeline import Delivery, TransientError
from rllfpr import mqtt
from rllfpr.config import MqttSettings
from rllfpr.wire import topics

log = logging.getLogger(__name__)
QOS = 1


class RecognizerLink:
    """The recognizer's broker link: faces in through shared subscriptions, acknowledged by
    hand after processing; events out."""

    def __init__(
        self,
        settings: MqttSettings,
        group: str,
        metrics: Metrics,
        client_id: str | None = None,
        publish_timeout_s: float = 10.0,
        event_expiry_s: int = 3600,
    ) -> None:
        self.settings = settings
        self.filters = [
            topics.shared(topics.ALL_FACES, group),
            topics.shared(topics.ALL_ENROLLMENTS, group),
        ]
        self.metrics = metrics
        self.publish_timeout_s = publish_timeout_s
        self.event_properties = mqtt.publish_properties(event_expiry_s)
        self.client_id = client_id or settings.client_id or mqtt.default_client_id("recognizer")
        self.client = mqtt.make_client(
            settings, "recognizer", manual_ack=True, client_id=self.client_id
        )
        self.intake: queue.Queue[Delivery] = queue.Queue()
        self._generation = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._subscribed = threading.Event()

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect (resuming the session) and subscribe; returns once the broker confirmed."""
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # The generation moves before connecting: a resumed session's faces arrive right after
        # the CONNACK, and a face stamped with the old generation would never be acknowledged.
        with self._lock:
            self._generation += 1
        mqtt.connect(self.client, self.settings, clean_start=False)
        mqtt.on_connection_changes(self.client, self._reconnected, self._disconnected)
        self.metrics.mqtt_connected.set(1)
        self._subscribe()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise mqtt.MqttError(f"no SUBACK for {self.filters} within {timeout_s} s")

    def stop(self, end_session: bool = False) -> None:
        """Disconnect. The broker keeps the session (and the faces in flight or queued for it)
        for this client id's return, unless ``end_session``: then it is discarded."""
        self._stopping = True
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
        self.client.disconnect(properties=properties)
        self.client.loop_stop()
        self.metrics.mqtt_connected.set(0)

    def leave_group(self, timeout_s: float = 10.0) -> None:
        """Unsubscribe: the broker stops assigning new faces to this member (those already
        assigned to its session are still delivered)."""
        done = threading.Event()
        self.client.on_unsubscribe = lambda *_: done.set()
        result, _ = self.client.unsubscribe(self.filters)
        if result != paho.MQTT_ERR_SUCCESS or not done.wait(timeout_s):
            raise mqtt.MqttError(f"could not unsubscribe from {self.filters}")

    def is_connected(self) -> bool:
        return bool(self.client.is_connected())

    def _subscribe(self) -> None:
        result, _ = self.client.subscribe([(topic_filter, QOS) for topic_filter in self.filters])
        if result != paho.MQTT_ERR_SUCCESS:
            log.error("subscribing to %s failed: %s", self.filters, paho.error_string(result))

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: object,
    ) -> None:
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            log.error("broker refused subscriptions %s: %s", self.filters, refused)
            return
        self._subscribed.set()

    def _reconnected(self, session_present: bool) -> None:
        with self._lock:
            self._generation += 1
        self.metrics.mqtt_connected.set(1)
        log.info("reconnected to the broker (session present: %s)", session_present)
        self._subscribe()  # the session may be gone (broker restarted without persistence)

    def _disconnected(self, reason: ReasonCode) -> None:
        with self._lock:
            self._generation += 1
        self.metrics.mqtt_connected.set(0)
        if self._stopping:  # stop(): a normal shutdown
            log.info("disconnected from the broker")
        else:
            log.warning("lost the broker (%s); reconnecting", reason)

    def _on_message(
        self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        self.metrics.received.inc()
        self.intake.put(
            Delivery(message.topic, bytes(message.payload), message.mid, self.generation)
        )

    def acknowledge(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge, in arrival order, what this connection delivered; returns how many."""
        current = self.generation
        acknowledged = 0
        for delivery in deliveries:
            if delivery.generation != current:
                continue  # delivered on an earlier connection: the broker sends it again
            self.client.ack(delivery.mid, QOS)
            acknowledged += 1
        self.metrics.acknowledged.inc(acknowledged)
        return acknowledged

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish events with QoS 1; return once the broker confirmed every one."""
        if not messages:
            return
        if not self.client.is_connected():
            raise TransientError("mqtt", "not connected to the broker")
        infos = [
            self.client.publish(topic, payload, qos=QOS, properties=self.event_properties)
            for topic, payload in messages
        ]
        for info in infos:
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise TransientError("mqtt", f"publish failed: {paho.error_string(info.rc)}")
            try:
                info.wait_for_publish(self.publish_timeout_s)
            except (RuntimeError, ValueError) as error:
                raise TransientError("mqtt", f"publish failed: {error}") from error
            if not info.is_published():
                raise TransientError("mqtt", "broker did not confirm an event in time")
