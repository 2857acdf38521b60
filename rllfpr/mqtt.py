"""MQTT v5 client construction shared by the agent, the recognizer and the trainer.

Every process connects through ``make_client`` so protocol version, TLS, credentials and
session expiry are set in one place from ``MqttSettings``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from rllfpr.config import MqttSettings

log = logging.getLogger(__name__)


class MqttError(RuntimeError):
    """Connecting or publishing failed."""


def default_client_id(program: str) -> str:
    return f"rllfpr-{program}-{socket.gethostname()}"[:64]


def make_client(
    settings: MqttSettings,
    program: str,
    *,
    manual_ack: bool = False,
    client_id: str | None = None,
) -> paho.Client:
    """A configured, not yet connected, MQTT v5 client."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or settings.client_id or default_client_id(program),
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
        )
    return client


def connect_properties(settings: MqttSettings) -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.session_expiry_s
    return properties


def connect(
    client: paho.Client, settings: MqttSettings, *, clean_start: bool, timeout_s: float = 10.0
) -> None:
    """Connect and start the network loop; raises ``MqttError`` unless the broker accepts."""
    connected = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(
        _client: paho.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        outcome.append(reason)
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            clean_start=clean_start,
            properties=connect_properties(settings),
        )
    except OSError as error:
        raise MqttError(
            f"cannot reach MQTT broker {settings.host}:{settings.port}: {error}"
        ) from error
    client.loop_start()
    if not connected.wait(timeout_s):
        client.loop_stop()
        raise MqttError(f"no CONNACK from {settings.host}:{settings.port} within {timeout_s} s")
    if outcome[0].is_failure:
        client.loop_stop()
        raise MqttError(f"broker refused the connection: {outcome[0]}")


def subscribe(
    client: paho.Client,
    topics: str | list[tuple[str, int]],
    qos: int = 1,
    timeout_s: float = 10.0,
) -> None:
    """Subscribe a connected client to a topic filter (or several, with their QoS) and wait
    for the broker's SUBACK; raises ``MqttError`` when the client cannot send it, no SUBACK
    comes in time, or the broker refuses a filter in its SUBACK (Mosquitto grants filters its ACL
    forbids and withholds their messages instead)."""
    acknowledged = threading.Event()
    codes: list[ReasonCode] = []

    def on_subscribe(
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: object,
    ) -> None:
        codes.extend(reason_codes)
        acknowledged.set()

    client.on_subscribe = on_subscribe
    result, _ = (
        client.subscribe(topics, qos=qos) if isinstance(topics, str) else client.subscribe(topics)
    )
    if result != paho.MQTT_ERR_SUCCESS:
        raise MqttError(f"cannot subscribe to {topics}: {paho.error_string(result)}")
    if not acknowledged.wait(timeout_s):
        raise MqttError(f"no SUBACK for {topics} within {timeout_s} s")
    refused = [code for code in codes if code.is_failure]
    if refused:
        raise MqttError(f"the broker refused the subscription to {topics}: {refused[0]}")


def publish_properties(message_expiry_s: int | None = None) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    if message_expiry_s is not None:
        properties.MessageExpiryInterval = message_expiry_s
    return properties


def on_connection_changes(
    client: paho.Client,
    connected: Callable[[bool], None],
    disconnected: Callable[[ReasonCode], None] | None = None,
) -> None:
    """paho's ``on_connect`` / ``on_disconnect`` for a link that outlives one connection (paho
    reconnects by itself): a refused connection is logged and otherwise ignored (paho tries
    again), an accepted one calls ``connected(session_present)``, a lost one
    ``disconnected(reason)``. Every long-lived link (agent, recognizer, key watch) uses it."""

    def on_connect(
        _client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _properties: object,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        connected(bool(flags.session_present))

    def on_disconnect(
        _client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        _properties: object,
    ) -> None:
        if disconnected is not None:
            disconnected(reason)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
