"""The recognizer service against a real Mosquitto and Redis 8: events, consensus, poison
messages, replicas, and outages. A tiny random-initialized recognizer does the embedding: an
image and a slightly noisy copy score about 0.997, different random images 0.5-0.75."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
import torch

from recognizer_service.service import RecognizerService
from rllfpr import mqtt
from rllfpr.config import MqttSettings, RecognizerSettings, RedisSettings, Settings
from rllfpr.local_services import Endpoint
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import RecognitionEvent, utc_now
from tests.test_wire_codec import make_header

pytestmark = pytest.mark.integration

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
    """A plain MQTT client: publishes faces and collects recognition events."""

    def __init__(self, broker: Endpoint, name: str) -> None:
        settings = MqttSettings(host=broker.host, port=broker.port)
        self.events: list[RecognitionEvent] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.make_client(settings, name, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        mqtt.connect(self.client, settings, clean_start=True)
        self.client.subscribe(topics.ALL_EVENTS, qos=1)
        assert self._subscribed.wait(5)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        event = RecognitionEvent.model_validate_json(message.payload)
        assert message.topic == topics.events(event.site, event.camera)
        with self._lock:
            self.events.append(event)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()

    def received(self) -> list[RecognitionEvent]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


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


# Tests -----------------------------------------------------------------------------------------


def test_enrolled_face_is_matched_and_a_stranger_is_unknown(
    start_service: Callable[..., RecognizerService], client: Client
) -> None:
    service = start_service()
    alice, bob, stranger = image(1), image(2), image(3)
    for subject, pixels in (("alice", alice), ("bob", bob)):
        client.publish(*face(pixels, subject=subject)[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 2)
    assert service.gallery.subjects("fleet", EPOCH) == {"alice": 1, "bob": 1}

    topic, payload, known_id = face(noisy(alice, 7), track=1)
    client.publish(topic, payload)
    topic, payload, stranger_id = face(stranger, track=2)
    client.publish(topic, payload)
    wait_until(lambda: len(client.received()) == 2)
    events = {str(e.message_ids[0]): e for e in client.received()}
    match, unknown = events[known_id], events[stranger_id]
    assert (match.decision, match.subject, match.track_id) == ("match", "alice", 1)
    assert match.score > 0.95
    assert match.margin == pytest.approx(match.score - match.candidates[1].score, abs=1e-5)
    assert [c.subject for c in match.candidates] == ["alice", "bob"]
    assert (unknown.decision, unknown.subject) == ("unknown", None)
    assert unknown.score < 0.95
    assert match.key_epoch == EPOCH
    assert match.decision_latency_ms >= 0
    assert counter(service, "rllfpr_faces_acknowledged_total") == 4


def test_a_track_is_decided_by_consensus_of_its_faces_or_by_timeout(
    start_service: Callable[..., RecognizerService], client: Client
) -> None:
    service = start_service(consensus_faces=3, consensus_timeout_ms=400)
    alice = image(11)
    client.publish(*face(alice, subject="alice")[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 1)

    ids = []
    for index in range(3):
        topic, payload, message_id = face(noisy(alice, index), track=5)
        client.publish(topic, payload)
        ids.append(message_id)
    topic, payload, lonely = face(noisy(alice, 9), track=6)
    client.publish(topic, payload)
    wait_until(lambda: len(client.received()) == 2)
    by_track = {e.track_id: e for e in client.received()}
    assert sorted(str(m) for m in by_track[5].message_ids) == sorted(ids)
    assert [str(m) for m in by_track[6].message_ids] == [lonely]  # decided by the timeout
    assert by_track[5].subject == by_track[6].subject == "alice"
    time.sleep(0.6)
    assert len(client.received()) == 2  # one event per round, nothing republished


def test_poison_messages_are_acknowledged_and_counted_without_blocking_the_queue(
    start_service: Callable[..., RecognizerService], client: Client
) -> None:
    service = start_service(max_payload_bytes=4096)
    good = image(21)
    wrong_size = np.zeros((16, 16), np.uint8)
    camera_mismatch = face(good)[1]
    poison = [
        (topics.faces("lobby", "cam-0"), b"RLFM\x00\x01garbage", "malformed"),
        (topics.faces("lobby", "cam-0"), b"x" * 5000, "oversized"),
        (*face(good, epoch=99)[:2], "unknown_epoch"),
        (*face(good, key_scope="other")[:2], "unknown_scope"),
        (*face(wrong_size)[:2], "wrong_size"),
        (topics.faces("lobby", "cam-9"), camera_mismatch, "topic_mismatch"),
    ]
    for topic, payload, _reason in poison:
        client.publish(topic, payload)
    topic, payload, good_id = face(good, track=3)
    client.publish(topic, payload)
    wait_until(lambda: len(client.received()) == 1)
    assert [str(m) for m in client.received()[0].message_ids] == [good_id]
    for _topic, _payload, reason in poison:
        assert counter(service, "rllfpr_faces_rejected_total", reason=reason) == 1, reason
    wait_until(lambda: counter(service, "rllfpr_faces_acknowledged_total") == len(poison) + 1)


def test_a_revoked_epoch_loses_its_gallery_and_its_faces_are_rejected(
    tmp_path: Path,
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    store = ModelStore(tmp_path)
    for epoch in (1, 2):
        store.publish("fleet", epoch, Recognizer(TINY), OpenSetCalibration(threshold=0.95))
    service = start_service(make_settings(mqtt_broker, redis_endpoint, tmp_path))
    assert [(m.scope, m.epoch) for m in service.models.loaded()] == [("fleet", 1), ("fleet", 2)]
    for epoch in (1, 2):
        client.publish(*face(image(31), subject="alice", epoch=epoch)[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 2)

    assert service.drop_epoch("fleet", 1, actor="test") == 1
    client.publish(*face(image(31), epoch=1)[:2])
    topic, payload, current = face(image(31), epoch=2, track=1)
    client.publish(topic, payload)
    wait_until(lambda: len(client.received()) == 1)
    assert counter(service, "rllfpr_faces_rejected_total", reason="revoked_epoch") == 1
    assert [str(m) for m in client.received()[0].message_ids] == [current]
    assert service.gallery.galleries() == [("fleet", 2)]
    assert store.epochs("fleet") == [2]


def test_two_replicas_share_one_subscription_without_duplicates_or_losses(
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    model_store: Path,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    settings = make_settings(
        mqtt_broker, redis_endpoint, model_store, consensus_faces=3, consensus_timeout_ms=5000
    )
    replicas = [start_service(settings), start_service(settings)]
    client.publish(*face(image(41), subject="alice")[:2])
    wait_until(lambda: sum(counter(r, "rllfpr_templates_enrolled_total") for r in replicas) == 1)

    tracks = 40
    sent: dict[int, set[str]] = {track: set() for track in range(tracks)}
    for index in range(3):  # interleaved: a track's faces reach both replicas
        for track in range(tracks):
            topic, payload, message_id = face(noisy(image(41), track * 3 + index), track=track)
            client.publish(topic, payload)
            sent[track].add(message_id)
    wait_until(lambda: len(client.received()) >= tracks, timeout_s=30)
    time.sleep(0.5)  # late duplicates would show up now
    events = client.received()
    assert len(events) == tracks
    assert len({e.event_id for e in events}) == tracks
    assert {e.track_id: {str(m) for m in e.message_ids} for e in events} == sent
    assert all(e.subject == "alice" for e in events)
    shares = [counter(r, "rllfpr_faces_processed_total", purpose="recognize") for r in replicas]
    assert sum(shares) == 3 * tracks
    assert min(shares) > 0


def batch_sizes(service: RecognizerService) -> tuple[float, dict[str, float]]:
    """Number of batches and the cumulative histogram of their sizes."""
    registry = service.metrics.registry
    buckets = {
        str(sample.labels["le"]): sample.value
        for metric in registry.collect()
        if metric.name == "rllfpr_batch_size"
        for sample in metric.samples
        if sample.name.endswith("_bucket")
    }
    return float(registry.get_sample_value("rllfpr_batch_size_count") or 0), buckets


def test_batches_never_exceed_max_batch(
    start_service: Callable[..., RecognizerService], client: Client
) -> None:
    service = start_service(max_batch=2, max_wait_ms=100)
    sent = set()
    for index in range(12):
        topic, payload, message_id = face(image(70 + index), track=index)
        client.publish(topic, payload)
        sent.add(message_id)
    wait_until(lambda: covered(client.received()) == sent)
    batches, buckets = batch_sizes(service)
    assert batches >= 6
    assert buckets["2.0"] == batches


def test_a_batch_larger_than_the_broker_window_is_cut_short_instead_of_stalling(
    redis_endpoint: Endpoint,
    model_store: Path,
    start_service: Callable[..., RecognizerService],
) -> None:
    """With max_batch above Mosquitto's max_inflight_messages a batch can never fill: the
    window caps it and max_wait ends it, every face still goes through."""
    from rllfpr import local_services

    with local_services.mosquitto("max_inflight_messages 4\n") as broker:
        publisher = Client(broker, "publisher")
        try:
            service = start_service(
                make_settings(broker, redis_endpoint, model_store, max_batch=64, max_wait_ms=100)
            )
            sent = set()
            for index in range(30):
                topic, payload, message_id = face(image(50 + index), track=index)
                publisher.publish(topic, payload)
                sent.add(message_id)
            wait_until(lambda: covered(publisher.received()) == sent)
            batches, buckets = batch_sizes(service)
            assert batches >= 2  # never one batch of 30: the window held the rest back
            assert buckets["4.0"] >= 1  # the first batch was exactly the window
        finally:
            publisher.close()


def test_events_carry_the_published_schema() -> None:
    schema = json.loads(Path("docs/schemas/recognition-event.schema.json").read_text())
    assert set(RecognitionEvent.model_fields) == set(schema["properties"])


def test_an_unforeseen_failure_rejects_only_the_face_that_causes_it(
    start_service: Callable[..., RecognizerService],
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = start_service(max_wait_ms=300)
    embed = service.models.embed

    def fragile(model: Any, pixels: Any) -> Any:
        if any(int(p.max()) == 0 for p in pixels):  # a black face trips a (simulated) bug
            raise RuntimeError("simulated bug")
        return embed(model, pixels)

    monkeypatch.setattr(service.models, "embed", fragile)
    sent = []
    for index in range(4):
        pixels = np.zeros((SIDE, SIDE), np.uint8) if index == 1 else image(90 + index)
        topic, payload, message_id = face(pixels, track=index)
        client.publish(topic, payload)
        sent.append(message_id)
    wait_until(lambda: len(client.received()) == 3)
    assert covered(client.received()) == set(sent) - {sent[1]}
    assert counter(service, "rllfpr_faces_rejected_total", reason="internal_error") == 1
    wait_until(lambda: counter(service, "rllfpr_faces_acknowledged_total") == 4)
