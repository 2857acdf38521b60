"""Against a real Mosquitto: MQTT v5 shared subscriptions and the face codec end to end."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from rllfpr import mqtt
from rllfpr.config import MqttSettings
from rllfpr.local_services import Endpoint
from rllfpr.wire import codec, topics
from tests.support.mqtt import Capture, wait_until
from tests.support.wire import make_header

pytestmark = pytest.mark.integration


def settings_for(endpoint: Endpoint) -> MqttSettings:
    return MqttSettings(host=endpoint.host, port=endpoint.port)


def test_shared_subscription_delivers_each_message_to_exactly_one_consumer(
    mqtt_broker: Endpoint,
) -> None:
    shared_filter = topics.shared(topics.ALL_FACES, group="test-share")
    consumers = [Capture(mqtt_broker, shared_filter, name=f"consumer-{i}") for i in range(2)]
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
        wait_until(lambda: sum(len(c.all()) for c in consumers) >= len(sent))
        time.sleep(0.3)  # would surface late duplicates
        received = [m.payload for c in consumers for m in c.all()]
        assert Counter(received) == Counter(sent)  # every message once, none twice
        assert all(len(c.all()) > 0 for c in consumers)  # both members took a share
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
