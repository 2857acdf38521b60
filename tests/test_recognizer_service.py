"""The recognizer service against a real Mosquitto and Redis 8: events, consensus, poison
messages, replicas, and outages. A tiny random-initialized recognizer does the embedding: an
image and a slightly noisy copy score about 0.997, different random images 0.5-0.75."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recognizer_service.service import RecognizerService
from rllfpr.local_services import Endpoint
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import topics
from rllfpr.wire.messages import RecognitionEvent
from tests.support.recognizer import (
    EPOCH,
    SIDE,
    TINY,
    Client,
    counter,
    covered,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)
from tests.support.recognizer import client as client  # fixtures
from tests.support.recognizer import model_store as model_store
from tests.support.recognizer import start_service as start_service

pytestmark = pytest.mark.integration

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
    # the latency is the decision's time after the face's capture, as the event states them
    elapsed_ms = (match.decided_at - match.captured_at).total_seconds() * 1000
    assert match.decision_latency_ms == pytest.approx(elapsed_ms, abs=0.01)
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
