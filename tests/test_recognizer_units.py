"""Recognizer parts without servers: decisions, calibration, the model store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from recognizer_service.decision import Observation, decide, observe
from recognizer_service.gallery import Hit
from recognizer_service.pipeline import TransientError, redis_errors_are_transient
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.store import (
    ModelStore,
    ModelStoreError,
    OpenSetCalibration,
    publish_checkpoint,
)
from rllfpr.openset import Searches, calibrate, rates, subject_scores, threshold_for

TINY = RecognizerConfig(backbone="compact", input_size=32, embedding_dim=16)


# Decisions -----------------------------------------------------------------------------------


def test_a_face_is_scored_per_subject_by_its_best_template() -> None:
    hits = [Hit("bob", "t3", 0.4), Hit("alice", "t1", 0.8), Hit("alice", "t2", 0.6)]
    assert observe(hits, keep=5).scores == {"alice": 0.8, "bob": 0.4}
    assert observe(hits, keep=1).scores == {"alice": 0.8}


def test_match_needs_both_threshold_and_margin() -> None:
    face = Observation({"alice": 0.8, "bob": 0.75})
    assert decide([face], threshold=0.7, min_margin=0.0).subject == "alice"
    close_call = decide([face], threshold=0.7, min_margin=0.1)
    assert (close_call.decision, close_call.subject) == ("unknown", None)
    assert close_call.margin == pytest.approx(0.05)
    weak = decide([face], threshold=0.9, min_margin=0.0)
    assert weak.decision == "unknown"
    assert weak.score == pytest.approx(0.8)


def test_a_lone_subject_has_no_runner_up_and_an_empty_gallery_gives_unknown() -> None:
    alone = decide([Observation({"alice": 0.5})], threshold=0.4, min_margin=0.2)
    assert (alone.subject, alone.margin) == ("alice", pytest.approx(1.5))
    empty = decide([Observation({})], threshold=0.0, min_margin=0.0)
    assert (empty.decision, empty.candidates) == ("unknown", [])


def test_track_consensus_averages_faces_and_counts_absences_at_the_face_floor() -> None:
    faces = [
        Observation({"alice": 0.9, "bob": 0.5}),
        Observation({"bob": 0.7, "alice": 0.6}),
        Observation({"alice": 0.8, "carol": 0.3}),  # bob absent: counted at 0.3
    ]
    result = decide(faces, threshold=0.7, min_margin=0.1)
    assert result.subject == "alice"
    assert result.score == pytest.approx((0.9 + 0.6 + 0.8) / 3)
    assert dict(result.candidates)["bob"] == pytest.approx((0.5 + 0.7 + 0.3) / 3)
    assert result.margin == pytest.approx(result.score - (0.5 + 0.7 + 0.3) / 3)
    with pytest.raises(ValueError, match="at least one"):
        decide([], 0.5, 0.0)


# Calibration ---------------------------------------------------------------------------------


def synthetic_searches(seed: int, subjects: int = 20) -> Searches:
    """Mated searches score their mate about 0.6, everything else about 0.2."""
    rng = np.random.default_rng(seed)
    mated = rng.normal(0.2, 0.08, (200, subjects))
    mates = rng.integers(0, subjects, 200)
    mated[np.arange(200), mates] = rng.normal(0.6, 0.1, 200)
    non_mated = rng.normal(0.2, 0.08, (300, subjects))
    return Searches(np.vstack([mated, non_mated]), np.concatenate([mates, np.full(300, -1)]))


def test_rates_follow_their_definitions() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.35], [0.95, 0.2], [0.1, 0.2]])
    searches = Searches(scores, np.array([0, 0, 1, -1, -1]))
    result = rates(searches, threshold=0.5, min_margin=0.0)
    # mated: right match, wrong match (misidentified), below threshold -> FNIR 2/3
    assert result["fnir"] == pytest.approx(2 / 3)
    assert result["misidentification"] == pytest.approx(1 / 3)
    assert result["fpir"] == pytest.approx(1 / 2)  # one of two strangers matched


def test_calibrated_threshold_keeps_fpir_at_the_target_and_generalizes() -> None:
    calibration = calibrate(synthetic_searches(0), target_fpir=0.05)
    assert calibration.measured["fpir"] <= 0.05
    held_out = rates(synthetic_searches(1), calibration.threshold, calibration.min_margin)
    assert held_out["fpir"] <= 0.1
    assert held_out["fnir"] < 0.3
    stricter = threshold_for(synthetic_searches(0), 0.01, calibration.min_margin)
    assert stricter > calibration.threshold


def test_calibration_needs_both_kinds_of_searches() -> None:
    searches = synthetic_searches(0)
    only_mated = Searches(searches.scores[:200], searches.mates[:200])
    with pytest.raises(ValueError, match="mated and non-mated"):
        calibrate(only_mated, 0.1)


def test_subject_scores_take_each_subjects_best_template() -> None:
    gallery = np.eye(3)
    labels = np.array([0, 0, 1])
    probes = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # probe 0 equals the second template of subject 0, probe 1 the only one of subject 1
    assert subject_scores(gallery, labels, probes, 2).tolist() == [[1.0, 0.0], [0.0, 1.0]]


# Model store ---------------------------------------------------------------------------------


def tiny_recognizer(seed: int) -> Recognizer:
    torch.manual_seed(seed)
    return Recognizer(TINY).eval()


def test_published_model_loads_with_the_same_embeddings_and_calibration(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    recognizer = tiny_recognizer(0)
    calibration = OpenSetCalibration(threshold=0.42, min_margin=0.05, target_fpir=0.01)
    info = store.publish("site-a", 3, recognizer, calibration, source="unit test")
    loaded = store.load("site-a", 3)
    assert loaded.info == info
    assert loaded.info.calibration == calibration
    assert info.recognizer_id.startswith("rec-")
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.recognizer(images), recognizer(images))
    assert store.epochs("site-a") == [3]
    assert store.epochs("fleet") == []


def test_an_epochs_recognizer_is_immutable_but_republishing_is_a_no_op(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.publish("fleet", 1, tiny_recognizer(0), OpenSetCalibration(threshold=0.5))
    again = store.publish("fleet", 1, tiny_recognizer(0), OpenSetCalibration(threshold=0.5))
    assert again.recognizer_id == first.recognizer_id
    with pytest.raises(ModelStoreError, match="immutable"):
        store.publish("fleet", 1, tiny_recognizer(1), OpenSetCalibration(threshold=0.5))


def test_revoked_epoch_is_deleted_and_never_loaded_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for epoch in (1, 2):
        store.publish("fleet", epoch, tiny_recognizer(epoch), OpenSetCalibration(threshold=0.5))
    store.revoke("fleet", 1)
    assert store.epochs("fleet") == [2]
    assert store.is_revoked("fleet", 1)
    assert not (tmp_path / "fleet" / "epoch-00000001").exists()
    with pytest.raises(ModelStoreError, match="revoked"):
        store.load("fleet", 1)
    with pytest.raises(ModelStoreError, match="revoked"):
        store.publish("fleet", 1, tiny_recognizer(1), OpenSetCalibration(threshold=0.5))


def test_corrupt_weights_and_foreign_descriptions_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish("fleet", 1, tiny_recognizer(0), OpenSetCalibration(threshold=0.5))
    weights = tmp_path / "fleet" / "epoch-00000001" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="corrupt"):
        store.load("fleet", 1)
    description = tmp_path / "fleet" / "epoch-00000001" / "model.json"
    document = json.loads(description.read_text())
    description.write_text(json.dumps(document | {"epoch": 7}))
    with pytest.raises(ModelStoreError, match="describes scope fleet epoch 7"):
        store.info("fleet", 1)


def test_a_trainer_checkpoint_is_published_with_its_recognizer(tmp_path: Path) -> None:
    recognizer = tiny_recognizer(0)
    checkpoint = tmp_path / "checkpoint.pt"
    config = {"name": "tiny", "recognizer": TINY.model_dump(mode="json")}
    torch.save({"recognizer": recognizer.state_dict(), "config": config}, checkpoint)
    store = ModelStore(tmp_path / "store")
    info = publish_checkpoint(store, "fleet", 4, checkpoint, OpenSetCalibration(threshold=0.3))
    assert info.source.startswith("tiny: ")
    images = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(store.load("fleet", 4).recognizer(images), recognizer(images))


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        # a Redis Cluster while a replica takes over a killed primary (seen in CI: the face was
        # rejected as an internal error and lost), or while a slot migrates
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.exceptions.SlotNotCoveredError("Slot 42 is not covered by the cluster"),
    ],
)
def test_redis_away_or_in_failover_is_transient(error: Exception) -> None:
    with pytest.raises(TransientError) as caught, redis_errors_are_transient():
        raise error
    assert caught.value.component == "redis"
    assert caught.value.__cause__ is error


def test_a_redis_error_that_retrying_cannot_fix_is_not_transient() -> None:
    wrong_type = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    with pytest.raises(redis.ResponseError), redis_errors_are_transient():
        raise wrong_type
