"""Home Assistant MQTT discovery: every camera of the fleet as a device with two entities.

For each camera (site, camera) of every retained agent status, two retained discovery configs
(Home Assistant's per-entity discovery, ``{prefix}/{component}/rllfpr/{object id}/config``):

- sensor *Last recognized person*: the subject of the camera's latest ``match`` event; an
  ``unknown`` event keeps the previous value (``states(entity_id)``);
- binary sensor *Unknown person* (occupancy): on at an ``unknown`` event, off
  ``unknown_off_delay_s`` after the latest one (an empty template result leaves it alone).

Both read the recognizer's events topic of the camera directly (no state topic of their own)
and are available while the camera's agent is not ``offline`` (its retained status and last
will). When a camera disappears from the fleet (its agent's retained status is cleared, or no
longer lists it) its configs are cleared (empty retained payloads), which removes the entities.
Configs are deterministic JSON, so several recognizer replicas publishing them agree.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

from recognizer_service.console.fleet import Camera
from rllfpr import __version__
from rllfpr.wire import topics

NODE_ID = "rllfpr"
SENSOR_TEMPLATE = (
    "{{ value_json.subject if value_json.decision == 'match' else states(entity_id) }}"
)
UNKNOWN_TEMPLATE = "{{ 'ON' if value_json.decision == 'unknown' else '' }}"
AVAILABILITY_TEMPLATE = "{{ 'offline' if value_json.state == 'offline' else 'online' }}"


def object_id(camera: Camera) -> str:
    """``{site}_{camera}`` in the characters discovery ids allow; ids that had a dot get a
    short hash, so ``a.b`` and ``a_b`` stay apart."""
    text = f"{camera.site}_{camera.camera}"
    if "." not in text:
        return text
    digest = hashlib.sha256(f"{camera.site}/{camera.camera}".encode()).hexdigest()[:6]
    return f"{text.replace('.', '_')}_{digest}"


class Discovery:
    def __init__(self, prefix: str, unknown_off_delay_s: int) -> None:
        self.prefix = prefix
        self.unknown_off_delay_s = unknown_off_delay_s
        self._retained: dict[str, bytes] = {}  # config topics on the broker -> payload
        self._lock = threading.Lock()

    @property
    def subscription(self) -> str:
        """Our retained configs: read back so that a restart knows what to remove."""
        return f"{self.prefix}/+/{NODE_ID}/+/config"

    def owns(self, topic: str) -> bool:
        parts = topic.split("/")
        return len(parts) == 5 and parts[0] == self.prefix and parts[2] == NODE_ID

    def seen(self, topic: str, payload: bytes) -> None:
        """A retained config read back from the broker (empty: cleared)."""
        with self._lock:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)

    def configs(self, camera: Camera, version: str = __version__) -> dict[str, dict[str, Any]]:
        """The discovery topics and configs of one camera."""
        oid = object_id(camera)
        state_topic = topics.events(camera.site, camera.camera)
        common: dict[str, Any] = {
            "state_topic": state_topic,
            "qos": 1,
            "availability": [
                {
                    "topic": topics.agent_status(camera.agent),
                    "value_template": AVAILABILITY_TEMPLATE,
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ],
            "device": {
                "identifiers": [f"{NODE_ID}_{oid}"],
                "name": f"{camera.site} {camera.camera}",
                "manufacturer": "RLLFPR",
                "model": f"camera of edge agent {camera.agent}",
                "sw_version": version,
            },
            "origin": {"name": "RLLFPR", "sw_version": version},
        }
        return {
            f"{self.prefix}/sensor/{NODE_ID}/{oid}_last_person/config": {
                "name": "Last recognized person",
                "unique_id": f"{NODE_ID}_{oid}_last_person",
                "icon": "mdi:account-check",
                "value_template": SENSOR_TEMPLATE,
                **common,
            },
            f"{self.prefix}/binary_sensor/{NODE_ID}/{oid}_unknown_person/config": {
                "name": "Unknown person",
                "unique_id": f"{NODE_ID}_{oid}_unknown_person",
                "device_class": "occupancy",
                "value_template": UNKNOWN_TEMPLATE,
                "payload_on": "ON",
                "payload_off": "OFF",
                "off_delay": self.unknown_off_delay_s,
                **common,
            },
        }

    def changes(self, cameras: Iterable[Camera]) -> list[tuple[str, bytes]]:
        """Retained publications that make the broker hold exactly the configs of
        ``cameras``: new or changed configs, and empty payloads for the others."""
        wanted: dict[str, bytes] = {}
        for camera in cameras:
            for topic, config in self.configs(camera).items():
                wanted[topic] = json.dumps(config, sort_keys=True).encode()
        with self._lock:
            retained = dict(self._retained)
        publish = [(t, p) for t, p in sorted(wanted.items()) if retained.get(t) != p]
        publish += [(t, b"") for t in sorted(set(retained) - set(wanted))]
        for topic, payload in publish:  # assume they arrive; the read-back corrects the view
            self.seen(topic, payload)
        return publish
