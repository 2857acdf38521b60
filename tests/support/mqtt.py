"""The one MQTT capture of the tests: a plain subscriber that records every message it gets."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from rllfpr import mqtt
from rllfpr.config import MqttSettings
from rllfpr.local_services import Endpoint


def wait_until(condition: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@dataclass(frozen=True)
class Captured:
    topic: str
    payload: bytes
    retain: bool
    expiry_s: int | None  # the MQTT v5 message expiry left when delivered


class Capture:
    """Subscribes to ``filters`` ('#' by default), waits for the SUBACK, and records every
    message in arrival order. ``client`` can publish too (as a user's client would)."""

    def __init__(self, endpoint: Endpoint, *filters: str, name: str = "capture") -> None:
        self.messages: list[Captured] = []
        self._lock = threading.Lock()
        settings = MqttSettings(host=endpoint.host, port=endpoint.port)
        client_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.make_client(settings, name, client_id=client_id)
        self.client.on_message = self._on_message
        mqtt.connect(self.client, settings, clean_start=True)
        mqtt.subscribe(self.client, [(topic_filter, 1) for topic_filter in filters or ("#",)])

    def _on_message(self, _client: paho.Client, _userdata: object, msg: Any) -> None:
        expiry = getattr(msg.properties, "MessageExpiryInterval", None)
        captured = Captured(msg.topic, bytes(msg.payload), bool(msg.retain), expiry)
        with self._lock:
            self.messages.append(captured)

    def all(self) -> list[Captured]:
        with self._lock:
            return list(self.messages)

    def on(self, prefix: str) -> list[Captured]:
        """The messages whose topic starts with ``prefix``, in arrival order."""
        return [m for m in self.all() if m.topic.startswith(prefix)]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the broker's acknowledgement."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"the broker did not acknowledge {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
