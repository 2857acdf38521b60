"""The recognizer service's test harness: a tiny model store, isolated settings, synthetic
faces, a user's client, and a fixture that starts services (stopped after the test)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recognizer_service.service import RecognizerService
from rllfpr.config import MqttSettings, RecognizerSettings, RedisSettings, Settings
from rllfpr.local_services import Endpoint
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import RecognitionEvent, utc_now
from tests.support.mqtt import Capture, wait_until
from tests.support.wire import make_header

__all__ = ["wait_until"]  # re-exported: the recognizer tests wait with the shared helper

SIDE = 32
TINY = RecognizerConfig(backbone="compact", input_size=SIDE, embedding_dim=64)
EPOCH = 1


# Fixtures and helpers shared by the recognizer test modules ------------------------------------


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding a tiny random recognizer for fleet epoch 1 (threshold 0.95)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    calibration = OpenSetCalibration(threshold=0.95, min_margin=0.0)
    ModelStore(root).publish("fleet", EPOCH, Recognizer(TINY), calibration)
    return root


def make_settings(
    broker: Endpoint, redis_endpoint: Endpoint, store: Path, **recognizer: Any
) -> Settings:
    """Settings of a service isolated from other tests: own key prefix and group."""
    isolation = f"t{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {
        "model_store": store,
        "device": "cpu",
        "group": isolation,
        "consensus_faces": 1,
        "max_wait_ms": 10,
        "maintenance_interval_s": 3600,
        "redis_retry_initial_s": 0.05,
        "redis_retry_max_s": 0.5,
    }
    options.update(recognizer)
    return Settings(
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        redis=RedisSettings(
            url=f"redis://{redis_endpoint.host}:{redis_endpoint.port}/0", key_prefix=isolation
        ),
        recognizer=RecognizerSettings(**options),
    )


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)


def noisy(pixels: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-8, 9, pixels.shape)
    return np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)


def face(
    pixels: np.ndarray,
    *,
    track: int = 0,
    camera: str = "cam-0",
    subject: str | None = None,
    epoch: int = EPOCH,
    **header: Any,
) -> tuple[str, bytes, str]:
    """(topic, payload, message id) of a recognition face, or an enrollment with ``subject``."""
    fields: dict[str, Any] = {
        "height": pixels.shape[0],
        "width": pixels.shape[1],
        "key_epoch": epoch,
        "track_id": track,
        "camera": camera,
        "captured_at": utc_now(),
    }
    if subject is not None:
        fields |= {"purpose": "enroll", "subject": subject, "camera": "enrollment"}
    fields.update(header)
    built = make_header(**fields)
    topic = (
        topics.enroll(built.site, subject) if subject else topics.faces(built.site, built.camera)
    )
    return topic, codec.encode(built, pixels), str(built.message_id)


class Client:
    """A user's plain MQTT client: publishes faces and collects recognition events."""

    def __init__(self, broker: Endpoint, name: str) -> None:
        self.capture = Capture(broker, topics.ALL_EVENTS, name=name)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.capture.publish(topic, data, retain=retain)

    def received(self) -> list[RecognitionEvent]:
        events = []
        for message in self.capture.all():
            event = RecognitionEvent.model_validate_json(message.payload)
            assert message.topic == topics.events(event.site, event.camera)
            events.append(event)
        return events

    def close(self) -> None:
        self.capture.close()


def covered(events: list[RecognitionEvent]) -> set[str]:
    return {str(m) for event in events for m in event.message_ids}


def counter(service: RecognizerService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels or None)
    return float(value or 0.0)


@pytest.fixture
def client(mqtt_broker: Endpoint) -> Iterator[Client]:
    publisher = Client(mqtt_broker, "test-client")
    yield publisher
    publisher.close()


@pytest.fixture
def start_service(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path
) -> Iterator[Callable[..., RecognizerService]]:
    started: list[RecognizerService] = []

    def start(
        settings: Settings | None = None, client_id: str | None = None, **recognizer: Any
    ) -> RecognizerService:
        settings = settings or make_settings(mqtt_broker, redis_endpoint, model_store, **recognizer)
        service = RecognizerService(settings, client_id=client_id or f"rec-{uuid.uuid4().hex[:8]}")
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
