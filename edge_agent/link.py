"""The agent's MQTT link: key topics in, spooled face messages and retained status out.

paho-mqtt 2.x, MQTT v5, QoS 1, TLS and credentials from ``MqttSettings`` (``rllfpr.mqtt``).
The client connects asynchronously and reconnects by itself with exponential back-off, so
the agent starts and keeps scrambling into the spool while the broker is unreachable.

A sender thread moves spooled messages to the broker while connected, at most
``max_inflight`` unacknowledged at a time, each with the MQTT v5 message expiry that is left
of its lifetime; the broker's PUBACK deletes it from the spool. On a reconnection paho sends
the unacknowledged ones again (DUP); after a restart the spool sends them again. A PUBACK
with a failure reason (an ACL refusal, say) drops the message, counted as ``refused``.

A PUBACK saying "no matching subscribers" (MQTT v5 reason 16) means the broker took the face
and handed it to nobody: no recognizer has subscribed yet, or the broker restarted and lost the
recognizers' shared subscription (Mosquitto 2.0 does not restore shared subscriptions from its
persistence file). Such a face stays in the spool, counted as ``unrouted``, and the sender holds
back: it sends the oldest unrouted faces again after a back-off (1 s, doubling to 30 s) until
the broker routes one, then everything flows again. The soak benchmark's broker kills lost
every face published in that window before this.

The retained status (``AgentStatus``) says ``online`` with the active key epoch, or
``degraded`` with the reason; the last will, retained too, says ``offline``. The sender thread
republishes it every ``status_interval_s`` with fresh figures (frame rate, faces published,
spool depth), so a console tells a silent agent from a live one by the status's age.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.metrics import AgentMetrics
from edge_agent.spool import Spool
from rllfpr import __version__, mqtt
from rllfpr.config import MqttSettings
from rllfpr.wire import topics
from rllfpr.wire.messages import AgentStatus

log = logging.getLogger(__name__)

STATUS = -1  # stands for the spool id of a status message: nothing to delete
NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason: accepted, delivered to nobody
UNROUTED_RETRY_MAX_S = 30.0


class AgentLink:
    """The agent's broker link: spooled faces and its status out, its scope's key topics in."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        agent: str,
        site: str,
        camera: str,
        key_scope: str,
        spool: Spool,
        metrics: AgentMetrics,
        on_key_message: Callable[[bytes], None],
        max_inflight: int,
        reconnect_initial_s: float,
        reconnect_max_s: float,
        status_interval_s: float = 30.0,
        unrouted_retry_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.agent, self.site, self.camera = agent, site, camera
        self.key_filter = topics.keys_of_scope(key_scope)
        self.spool = spool
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._on_key_message = on_key_message
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._wakeup = threading.Condition()
        # paho may deliver a PUBACK before publish() has returned its message id: acks are
        # matched under this lock, whichever comes first (never held while calling paho).
        self._ack_lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # MQTT message id -> spool id (or STATUS)
        self._early_acks: dict[int, ReasonCode] = {}
        self._last_taken = 0  # highest spool id handed to paho in this process
        self.status_interval_s = status_interval_s
        self._state: tuple[str, int | None, str | None] = ("degraded", None, "starting")
        self._status_sent_at = 0.0  # monotonic time of the latest status publication
        self._figures_at = time.monotonic()
        self._frames_then = 0.0
        self._figures_lock = threading.Lock()
        # Spool ids the broker had no subscriber for, and when to offer them again.
        self._unrouted: set[int] = set()
        self._unrouted_retry_s = unrouted_retry_s
        self._unrouted_delay = unrouted_retry_s
        self._retry_at = 0.0
        self.client = mqtt.make_client(settings, "agent", client_id=settings.client_id or agent)
        self.client.will_set(
            topics.agent_status(agent),
            self._status_message("offline", None, "connection lost").model_dump_json(),
            qos=1,
            retain=True,
        )
        self.client.reconnect_delay_set(
            max(1, round(reconnect_initial_s)), max(1, round(reconnect_max_s))
        )
        self.client.max_inflight_messages_set(max_inflight + 4)  # room for status messages
        mqtt.on_connection_changes(self.client, self._connected, self._disconnected)
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._sender = threading.Thread(target=self._send_loop, name="agent-sender", daemon=True)

    def _status_message(
        self, state: str, epoch: int | None, reason: str | None, figures: bool = False
    ) -> AgentStatus:
        fields: dict[str, object] = {
            "agent": self.agent,
            "site": self.site,
            "state": state,
            "key_epoch": epoch,
            "cameras": [self.camera],
            "version": __version__,
            "reason": reason,
        }
        if figures:
            fields |= self._figures()
        return AgentStatus.model_validate(fields)

    def _figures(self) -> dict[str, object]:
        """Frame rate since the previous status, faces published, spool depth."""
        with self._figures_lock:  # statuses are made on paho's, the sender's and key threads
            now, frames = time.monotonic(), self.metrics.value("frames")
            elapsed = now - self._figures_at
            fps = (frames - self._frames_then) / elapsed if elapsed > 0 else 0.0
            self._figures_at, self._frames_then = now, frames
        return {
            "fps": round(max(0.0, fps), 2),
            "faces_published": int(self.metrics.value("faces_published")),
            "spool_messages": self.spool.depth,
        }

    # ----- life cycle
    def start(self) -> None:
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            properties=mqtt.connect_properties(self.settings),
        )
        self.client.loop_start()
        self._sender.start()

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Send what is in flight (up to a timeout), say ``offline``, disconnect."""
        deadline = time.monotonic() + flush_timeout_s
        while self._inflight and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        with self._wakeup:
            self._wakeup.notify_all()
        if self._sender.is_alive():
            self._sender.join(timeout=5)
        if self.connected.is_set():
            self._publish_status(
                self._status_message("offline", None, "stopped", figures=True), wait_s=2
            )
        self.client.disconnect()
        self.client.loop_stop()

    def wake(self) -> None:
        """New messages are in the spool."""
        with self._wakeup:
            self._wakeup.notify_all()

    # ----- status
    def set_status(self, epoch: int | None, reason: str | None) -> None:
        state = "online" if epoch is not None and reason is None else "degraded"
        self._state = (state, epoch, reason)
        if self.connected.is_set():
            self._publish_status(self._current_status())

    def _current_status(self) -> AgentStatus:
        return self._status_message(*self._state, figures=True)

    def _publish_status(self, status: AgentStatus, wait_s: float = 0.0) -> None:
        self._status_sent_at = time.monotonic()
        info = self.client.publish(
            topics.agent_status(self.agent), status.model_dump_json(), qos=1, retain=True
        )
        self._claim(info.mid, STATUS)
        if wait_s:
            info.wait_for_publish(timeout=wait_s)

    # ----- acknowledgements
    def _claim(self, mid: int, spool_id: int) -> None:
        """Record what a just-published message id stands for."""
        with self._ack_lock:
            reason = self._early_acks.pop(mid, None)
            if reason is None:
                self._inflight[mid] = spool_id
                return
        self._settle(spool_id, reason)

    def _settle(self, spool_id: int, reason: ReasonCode) -> None:
        if spool_id == STATUS:
            return
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            self._hold_unrouted(spool_id)
        elif reason.is_failure:
            log.error("broker refused a face message: %s", reason)
            self.spool.remove(spool_id, reason="refused")
        elif self.spool.remove(spool_id):
            self.metrics.faces_published.inc()
            with self._ack_lock:  # routed: the recognizers are there, offer the rest now
                self._unrouted_delay = self._unrouted_retry_s
                self._retry_at = 0.0
        self._update_gauges()
        self.wake()

    def _hold_unrouted(self, spool_id: int) -> None:
        with self._ack_lock:
            first = not self._unrouted
            self._unrouted.add(spool_id)
            if first:
                self._retry_at = time.monotonic() + self._unrouted_delay
                delay = self._unrouted_delay
                self._unrouted_delay = min(UNROUTED_RETRY_MAX_S, 2 * self._unrouted_delay)
        self.metrics.faces_unrouted.inc()
        if first:
            log.warning(
                "the broker has no subscriber for faces (no recognizer yet, or a broker "
                "restart lost their subscription): keeping them spooled, again in %.0f s",
                delay,
            )

    # ----- paho callbacks (network thread)
    def _connected(self, _session_present: bool) -> None:
        log.info("connected to %s:%d", self.settings.host, self.settings.port)
        self.client.subscribe(self.key_filter, qos=1)
        self._publish_status(self._current_status())
        self.connected.set()
        self.metrics.broker_connected.set(1)
        self.wake()

    def _disconnected(self, reason: ReasonCode) -> None:
        if self._stop.is_set():  # close(): a normal shutdown
            log.info("disconnected from the broker")
        elif self.connected.is_set():
            log.warning("lost the broker (%s); spooling until it is back", reason)
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _properties: object,
    ) -> None:
        with self._ack_lock:
            spool_id = self._inflight.pop(mid, None)
            if spool_id is None:
                self._early_acks[mid] = reason
                return
        self._settle(spool_id, reason)

    def _on_message(
        self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        self._on_key_message(bytes(message.payload))

    # ----- sender thread
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if (
                self.connected.is_set()
                and time.monotonic() - self._status_sent_at >= self.status_interval_s
            ):
                self._publish_status(self._current_status())
            sent = self._send_some() if self.connected.is_set() else 0
            if not sent:
                with self._wakeup:
                    self._wakeup.wait(0.2)

    def _send_some(self) -> int:
        self.spool.expire()
        with self._ack_lock:
            room = self.max_inflight - len(self._inflight)
            retry: list[int] = []
            if self._unrouted and room > 0:
                if time.monotonic() < self._retry_at:
                    return 0  # nobody would receive new faces either: wait
                retry = sorted(self._unrouted)[:room]
                self._unrouted.difference_update(retry)
        if room <= 0:
            return 0
        batch = self.spool.get(retry) if retry else self.spool.take(self._last_taken, room)
        now = time.time()
        for message in batch:
            remaining = math.ceil(message.expires_at - now)
            if remaining <= 0:
                self.spool.remove(message.id, reason="expired")
                continue
            info = self.client.publish(
                message.topic,
                message.payload,
                qos=1,
                properties=mqtt.publish_properties(remaining),
            )
            self._last_taken = max(self._last_taken, message.id)
            self._claim(info.mid, message.id)
        self._update_gauges()
        return len(batch)

    def _update_gauges(self) -> None:
        self.metrics.spool_depth.set(self.spool.depth)
        self.metrics.spool_bytes.set(self.spool.size_bytes)
