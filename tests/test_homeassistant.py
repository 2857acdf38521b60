"""Home Assistant MQTT discovery on a real Mosquitto: the retained configs have the shape Home
Assistant documents, their templates turn real recognition events into the documented states,
and a camera that leaves the fleet takes its entities with it, across recognizer restarts.

The documented shape is transcribed from Home Assistant's MQTT sensor, binary sensor and
discovery pages (configuration variables of ``sensor.mqtt`` and ``binary_sensor.mqtt``)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from pydantic import SecretStr

from recognizer_service.service import RecognizerService
from rllfpr import local_services
from rllfpr.config import Settings
from rllfpr.local_services import Endpoint
from rllfpr.wire import topics
from rllfpr.wire.messages import AgentStatus, RecognitionEvent
from tests import test_recognizer_service as service_tests
from tests.support.mqtt import Capture
from tests.support.recognizer import (
    Client,
    counter,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)

pytestmark = pytest.mark.integration
model_store = service_tests.model_store

# Configuration variables Home Assistant documents for each platform (plus `origin`, from the
# discovery page). A key outside these is ignored or refused by Home Assistant.
COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category",
    "entity_picture", "expire_after", "force_update", "icon", "json_attributes_template",
    "json_attributes_topic", "name", "object_id", "default_entity_id", "payload_available",
    "payload_not_available", "platform", "qos", "state_topic", "unique_id", "value_template",
    "origin",
}  # fmt: skip
DOCUMENTED_KEYS = {
    "sensor": COMMON_KEYS | {
        "last_reset_value_template", "options", "suggested_display_precision", "state_class",
        "unit_of_measurement",
    },
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
}  # fmt: skip
DISCOVERY_TOPIC = re.compile(
    r"^(?P<prefix>[A-Za-z0-9_-]+)/(?P<component>sensor|binary_sensor)/"
    r"(?P<node>[A-Za-z0-9_-]+)/(?P<object>[A-Za-z0-9_-]+)/config$"
)


class Retained(Capture):
    """Everything retained under a topic filter, as a fresh subscriber sees it, plus what
    arrives afterwards (empty payloads clear a topic), and the recognition events."""

    def __init__(self, broker: Endpoint, topic_filter: str) -> None:
        super().__init__(broker, topic_filter, topics.ALL_EVENTS, name="ha")

    @property
    def events(self) -> list[RecognitionEvent]:
        return [
            RecognitionEvent.model_validate_json(message.payload)
            for message in self.on(f"{topics.ROOT}/events/")
        ]

    def configs(self) -> dict[str, dict[str, Any]]:
        current: dict[str, bytes] = {}
        for message in self.all():
            if message.topic.startswith(f"{topics.ROOT}/events/"):
                continue
            if message.payload:
                current[message.topic] = message.payload
            else:
                current.pop(message.topic, None)
        return {topic: json.loads(payload) for topic, payload in current.items()}


def retained_now(broker: Endpoint, topic_filter: str) -> dict[str, dict[str, Any]]:
    """What a Home Assistant starting now would be told."""
    reader = Retained(broker, topic_filter)
    try:
        threading.Event().wait(0.5)
        return reader.configs()
    finally:
        reader.close()


def settings_with_discovery(
    broker: Endpoint, redis_endpoint: Endpoint, store: Path, prefix: str
) -> Settings:
    base = make_settings(broker, redis_endpoint, store)
    home = base.recognizer.homeassistant.model_copy(
        update={"enabled": True, "discovery_prefix": prefix, "settle_s": 0.3}
    )
    options = base.recognizer.model_copy(
        update={"homeassistant": home, "api_token": SecretStr("t")}
    )
    return base.model_copy(update={"recognizer": options})


def publish_status(publisher: Client, agent: str, payload: bytes) -> None:
    publisher.publish(topics.agent_status(agent), payload, retain=True)


def render(template: str, payload: bytes, previous: str = "unknown") -> str:
    """Render a value template as Home Assistant does: ``value``, ``value_json``, and
    ``entity_id`` / ``states()`` for the entity's current state."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return environment.from_string(template).render(
        value=payload.decode(),
        value_json=json.loads(payload),
        entity_id="sensor.this",
        states=lambda entity: previous if entity == "sensor.this" else "unknown",
    )


def check_documented_shape(topic: str, config: dict[str, Any]) -> str:
    """Assert the config is one Home Assistant documents; returns its component."""
    found = DISCOVERY_TOPIC.match(topic)
    assert found, f"{topic} is not <prefix>/<component>/<node_id>/<object_id>/config"
    component = found["component"]
    assert set(config) <= DOCUMENTED_KEYS[component], set(config) - DOCUMENTED_KEYS[component]
    assert isinstance(config["state_topic"], str)
    assert config["state_topic"]
    assert isinstance(config["unique_id"], str)  # required with a device
    assert isinstance(config["name"], str)
    assert config["qos"] in (0, 1, 2)
    device = config["device"]
    assert set(device) <= DEVICE_KEYS
    assert isinstance(device["identifiers"], list)
    assert device["identifiers"]
    assert all(isinstance(i, str) for i in device["identifiers"])
    assert set(config["origin"]) <= ORIGIN_KEYS
    assert "name" in config["origin"]
    assert "availability_topic" not in config  # documented as exclusive with `availability`
    for entry in config["availability"]:
        assert set(entry) <= AVAILABILITY_KEYS
        assert "topic" in entry
    if component == "binary_sensor":
        assert config["device_class"] in BINARY_SENSOR_CLASSES
        assert isinstance(config["off_delay"], int)
        assert config["off_delay"] > 0
    return component


@pytest.fixture
def mqtt_broker() -> Iterator[Endpoint]:
    """A broker of each test's own: "exactly these retained configs" means exactly."""
    with local_services.mosquitto() as endpoint:
        yield endpoint


@pytest.fixture
def client(mqtt_broker: Endpoint) -> Iterator[Client]:
    publisher = Client(mqtt_broker, "ha-test-client")
    yield publisher
    publisher.close()


@pytest.fixture
def prefix() -> str:
    return f"ha{uuid.uuid4().hex[:8]}"


@pytest.fixture
def discovering(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path, prefix: str
) -> Iterator[RecognizerService]:
    service = RecognizerService(
        settings_with_discovery(mqtt_broker, redis_endpoint, model_store, prefix),
        client_id=f"rec-{uuid.uuid4().hex[:8]}",
    )
    service.start()
    yield service
    service.stop()


def test_each_camera_gets_two_documented_entities_fed_by_real_events(
    discovering: RecognizerService, mqtt_broker: Endpoint, client: Client, prefix: str
) -> None:
    agent = f"lobby-{uuid.uuid4().hex[:6]}"
    status = AgentStatus(agent=agent, site="lobby", state="online", cameras=["cam.1"], version="1")
    watcher = Retained(mqtt_broker, f"{prefix}/#")
    try:
        publish_status(client, agent, status.model_dump_json().encode())
        wait_until(lambda: len(watcher.configs()) == 2)
        configs = retained_now(mqtt_broker, f"{prefix}/#")  # retained, as HA would read them
        assert configs == watcher.configs()
        by_component = {check_documented_shape(t, c): c for t, c in configs.items()}
        assert set(by_component) == {"sensor", "binary_sensor"}
        sensor, unknown = by_component["sensor"], by_component["binary_sensor"]
        assert sensor["unique_id"] != unknown["unique_id"]
        assert sensor["device"] == unknown["device"]  # one device per camera
        assert sensor["state_topic"] == unknown["state_topic"] == topics.events("lobby", "cam.1")
        assert sensor["availability"][0]["topic"] == topics.agent_status(agent)

        # Real events of that camera through the real recognizer, rendered by the templates.
        alice = image(71)
        client.publish(*face(alice, subject="alice")[:2])
        wait_until(lambda: counter(discovering, "rllfpr_templates_enrolled_total") == 1)
        client.publish(*face(noisy(alice, 1), camera="cam.1", track=1)[:2])
        wait_until(lambda: len(watcher.events) == 1)
        client.publish(*face(image(72), camera="cam.1", track=2)[:2])
        wait_until(lambda: len(watcher.events) == 2)
        match, stranger = (e.model_dump_json().encode() for e in watcher.events)
        assert render(sensor["value_template"], match) == "alice"
        assert render(sensor["value_template"], stranger, previous="alice") == "alice"
        assert render(unknown["value_template"], stranger) == unknown["payload_on"]
        assert render(unknown["value_template"], match) == ""  # documented: message ignored
        available = sensor["availability"][0]
        will = status.model_copy(update={"state": "offline", "reason": "connection lost"})
        assert render(available["value_template"], status.model_dump_json().encode()) == "online"
        assert render(available["value_template"], will.model_dump_json().encode()) == "offline"
    finally:
        watcher.close()


def test_a_camera_that_leaves_the_fleet_loses_its_entities_even_across_restarts(
    discovering: RecognizerService,
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    model_store: Path,
    client: Client,
    prefix: str,
) -> None:
    gone, stays = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    for agent, camera in ((gone, "gate"), (stays, "door")):
        status = AgentStatus(
            agent=agent, site="dock", state="online", cameras=[camera], version="1"
        )
        publish_status(client, agent, status.model_dump_json().encode())
    wait_until(lambda: len(retained_now(mqtt_broker, f"{prefix}/#")) == 4)
    publish_status(client, gone, b"")  # the agent is removed: its camera's entities go
    wait_until(
        lambda: (
            {c["state_topic"] for c in retained_now(mqtt_broker, f"{prefix}/#").values()}
            == {topics.events("dock", "door")}
        )
    )
    discovering.stop()
    publish_status(client, stays, b"")  # removed while no recognizer runs
    restarted = RecognizerService(
        settings_with_discovery(mqtt_broker, redis_endpoint, model_store, prefix),
        client_id=f"rec-{uuid.uuid4().hex[:8]}",
    )
    restarted.start()  # reads its earlier configs back and clears the orphans
    try:
        wait_until(lambda: retained_now(mqtt_broker, f"{prefix}/#") == {})
    finally:
        restarted.stop()
