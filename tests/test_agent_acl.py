"""The shipped broker ACL (deploy/mosquitto/rllfpr.acl) confines each agent to its own topics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from rllfpr import local_services, mqtt
from rllfpr.config import MqttSettings
from rllfpr.wire import topics

pytestmark = pytest.mark.integration
ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "rllfpr.acl"


class Client:
    """A client with the broker identity ``user``, recording PUBACK and SUBACK reason codes."""

    def __init__(self, endpoint: local_services.Endpoint, user: str) -> None:
        settings = MqttSettings(host=endpoint.host, port=endpoint.port, username=user)
        self.acks: dict[int, ReasonCode] = {}
        self.received: list[str] = []
        self._event = threading.Condition()
        self.client = mqtt.make_client(settings, "acl-test", client_id=f"acl-{user}")
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        mqtt.connect(self.client, settings, clean_start=True)

    def _on_publish(
        self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        with self._event:
            self.acks[mid] = reason
            self._event.notify_all()

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._event:
            self.received.append(message.topic)

    def may_publish(self, topic: str, retain: bool = False) -> bool:
        mid = self.client.publish(topic, b"x", qos=1, retain=retain).mid
        with self._event:
            assert self._event.wait_for(lambda: mid in self.acks, timeout=5)
        return not self.acks[mid].is_failure

    def reads(self, topic_filter: str) -> set[str]:
        """The retained topics that a subscription to ``topic_filter`` delivers."""
        self.client.subscribe(topic_filter, qos=1)
        time.sleep(0.5)  # retained messages follow the SUBACK at once
        with self._event:
            return set(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[local_services.Endpoint]:
    with local_services.mosquitto(f"acl_file {ACL}\n") as endpoint:
        trainer = Client(endpoint, "trainer")
        for scope in ("fleet", "dock"):
            assert trainer.may_publish(topics.key_bundle(scope, 1), retain=True)
        trainer.close()
        yield endpoint


def test_an_agent_publishes_only_its_own_faces_and_status(broker: local_services.Endpoint) -> None:
    agent = Client(broker, "lobby-cam-0")
    try:
        assert agent.may_publish(topics.faces("lobby", "cam-0"))
        assert agent.may_publish(topics.agent_status("lobby-cam-0"))
        assert not agent.may_publish(topics.faces("lobby", "cam-1"))  # a neighbour's camera
        assert not agent.may_publish(topics.agent_status("lobby-cam-1"))
        assert not agent.may_publish(topics.events("lobby", "cam-0"))  # no forged decisions
        assert not agent.may_publish(topics.key_bundle("fleet", 9))  # no forged keys either
    finally:
        agent.close()


def test_an_agent_reads_the_keys_of_its_scope_only(broker: local_services.Endpoint) -> None:
    fleet_agent, dock_agent = Client(broker, "lobby-cam-1"), Client(broker, "dock-gate")
    try:
        assert fleet_agent.reads(f"{topics.ROOT}/keys/#") == {topics.key_bundle("fleet", 1)}
        assert dock_agent.reads(f"{topics.ROOT}/keys/#") == {topics.key_bundle("dock", 1)}
    finally:
        fleet_agent.close()
        dock_agent.close()


def test_an_unknown_or_removed_device_can_publish_nothing(broker: local_services.Endpoint) -> None:
    stranger = Client(broker, "lobby-cam-9")  # e.g. a revoked device whose block was removed
    try:
        assert not stranger.may_publish(topics.faces("lobby", "cam-9"))
        assert stranger.reads("#") == set()
    finally:
        stranger.close()


def test_subscribe_returns_once_the_broker_acknowledged_and_fails_loudly_offline(
    broker: local_services.Endpoint,
) -> None:
    """``rllfpr.mqtt.subscribe`` returns after the SUBACK (the retained key bundle of the
    agent's scope follows it), and a client that cannot send SUBSCRIBE is an ``MqttError``."""
    agent = Client(broker, "lobby-cam-0")
    try:
        mqtt.subscribe(agent.client, topics.key_bundle("fleet", 1))
        deadline = time.monotonic() + 5
        while topics.key_bundle("fleet", 1) not in agent.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert topics.key_bundle("fleet", 1) in agent.received
    finally:
        agent.close()
    offline = mqtt.make_client(MqttSettings(host=broker.host, port=broker.port), "t")
    with pytest.raises(mqtt.MqttError, match="cannot subscribe to #"):
        mqtt.subscribe(offline, "#", timeout_s=1)
