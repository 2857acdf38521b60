"""Against a real Mosquitto: MQTT v5 shared subscriptions and the face codec end to end."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import paho.mqtt.client as paho
import pytest

from rllfpr import mqtt
from rllfpr.config import MqttSettings
from rllfpr.local_services import Endpoint
from rllfpr.wire import codec, topics
from tests.test_wire_codec import make_header

pytestmark = pytest.mark.integration


def settings_for(endpoint: Endpoint) -> MqttSettings:
    return MqttSettings(host=endpoint.host, port=endpoint.port)


class Collector:
    """A subscriber that records every payload it receives (dispatch in on_message)."""

    def __init__(self, endpoint: Endpoint, name: str, topic_filter: str) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.make_client(settings_for(endpoint), name, client_id=name)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        mqtt.connect(self.client, settings_for(endpoint), clean_start=True)
        self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(5), f"{name} was not subscribed"

    def _on_message(
        self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_shared_subscription_delivers_each_message_to_exactly_one_consumer(
    mqtt_broker: Endpoint,
) -> None:
    shared_filter = topics.shared(topics.ALL_FACES, group="test-share")
    consumers = [Collector(mqtt_broker, f"consumer-{i}", shared_filter) for i in range(2)]
    publisher = mqtt.make_client(settings_for(mqtt_broker), "publisher", client_id="publisher")
    mqtt.connect(publisher, settings_for(mqtt_broker), clean_start=True)
    sent = []
    try:
        for index in range(200):
            pixels = np.full((8, 8), index % 256, np.uint8)
            payload = codec.encode(make_header(height=8, width=8, track_id=index), pixels)
            sent.append(payload)
            camera = f"cam-{index % 3}"
            info = publisher.publish(topics.faces("lobby", camera), payload, qos=1)
            info.wait_for_publish(5)
        wait_until(lambda: sum(len(c.payloads) for c in consumers) >= len(sent))
        time.sleep(0.3)  # would surface late duplicates
        received = consumers[0].payloads + consumers[1].payloads
        assert Counter(received) == Counter(sent)  # every message once, none twice
        assert all(len(c.payloads) > 0 for c in consumers)  # both members took a share
        decoded = [codec.decode(p).header.track_id for p in received]
        assert sorted(decoded) == list(range(200))
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        for consumer in consumers:
            consumer.close()


def test_connect_to_absent_broker_is_a_clear_error() -> None:
    from rllfpr.local_services import free_port

    settings = MqttSettings(host="127.0.0.1", port=free_port())
    client = mqtt.make_client(settings, "nobody")
    with pytest.raises(mqtt.MqttError, match="cannot reach MQTT broker"):
        mqtt.connect(client, settings, clean_start=True, timeout_s=2)
