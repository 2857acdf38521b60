"""The console's MQTT side: recognition events and agent statuses in, discovery configs out.

Its own connection (clean start, random client id, like the key watch) subscribes to every
event (``rllfpr/v1/events/#``, not shared: each replica's console sees all of them), to every
agent's retained status, and, with Home Assistant discovery on, to the discovery configs it
published before. Retained messages arrive right after subscribing; discovery changes wait
``settle_s`` for them, then follow every status change. Malformed messages are logged and
counted, never shown.
"""

from __future__ import annotations

import logging
import threading
import uuid

import paho.mqtt.client as paho
from pydantic import ValidationError

from recognizer_service.console.fleet import Fleet, StatusError
from recognizer_service.console.homeassistant import Discovery
from recognizer_service.console.live import LiveEvents
from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.wire import topics
from rllfpr.wire.messages import RecognitionEvent

log = logging.getLogger(__name__)


class ConsoleFeed:
    def __init__(self, settings: Settings) -> None:
        console = settings.recognizer.console
        home = settings.recognizer.homeassistant
        self.settings = settings
        self.events = LiveEvents(console.recent_events)
        self.fleet = Fleet(console.agent_stale_after_s)
        self.discovery = (
            Discovery(home.discovery_prefix, home.unknown_off_delay_s) if home.enabled else None
        )
        self.settle_s = home.settle_s
        self.malformed = 0
        self._settled = threading.Event()
        self._timer: threading.Timer | None = None
        self._publish_lock = threading.Lock()
        self.client = mqtt.make_client(
            settings.mqtt, "recognizer-console", client_id=f"console-{uuid.uuid4().hex[:12]}"
        )
        self.client.on_message = self._on_message

    @property
    def filters(self) -> list[str]:
        found = [topics.ALL_EVENTS, topics.ALL_AGENT_STATUS]
        if self.discovery is not None:
            found.append(self.discovery.subscription)
        return found

    def start(self) -> None:
        mqtt.connect(self.client, self.settings.mqtt, clean_start=True)
        self._subscribe()
        # connect() installs its own on_connect; ours resubscribes after a reconnection
        mqtt.on_connection_changes(self.client, lambda _session_present: self._subscribe())
        if self.discovery is not None:
            self._timer = threading.Timer(self.settle_s, self._settle)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.client.disconnect()
        self.client.loop_stop()

    def forget_agent(self, agent: str, timeout_s: float = 10.0) -> None:
        """Clear an agent's retained status: it leaves the fleet (and Home Assistant)."""
        info = self.client.publish(topics.agent_status(agent), b"", qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise mqtt.MqttError(f"the broker did not confirm clearing {agent}'s status")

    def _subscribe(self) -> None:
        self.client.subscribe([(topic_filter, 1) for topic_filter in self.filters])

    def _settle(self) -> None:
        self._settled.set()
        self.sync_discovery()

    def sync_discovery(self) -> int:
        """Publish the discovery changes the fleet calls for; returns how many."""
        if self.discovery is None or not self._settled.is_set():
            return 0
        with self._publish_lock:
            changes = self.discovery.changes(self.fleet.cameras())
            for topic, payload in changes:
                self.client.publish(topic, payload, qos=1, retain=True)
        if changes:
            log.info("Home Assistant discovery: %d configs published or cleared", len(changes))
        return len(changes)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except (ValidationError, StatusError, ValueError) as error:
            self.malformed += 1
            log.warning("console ignores a message on %s: %s", msg.topic, error)
        except Exception:  # a callback must not kill paho's network thread
            log.exception("console cannot handle a message on %s", msg.topic)

    def handle(self, topic: str, payload: bytes) -> None:
        if self.discovery is not None and self.discovery.owns(topic):
            self.discovery.seen(topic, payload)
            return
        parsed = topics.parse(topic)  # TopicError (a ValueError) for anything else
        if parsed.kind == "events":
            event = RecognitionEvent.model_validate_json(payload)
            if (event.site, event.camera) != (parsed.site, parsed.camera):
                raise ValueError(f"event of {event.site}/{event.camera} on {topic}")
            self.events.add(event)
        elif parsed.kind == "agent_status" and parsed.agent is not None:
            self.fleet.update(parsed.agent, payload)
            self.sync_discovery()
        else:
            raise ValueError(f"unexpected topic {topic}")
