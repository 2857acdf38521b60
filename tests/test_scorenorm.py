"""Cohort score normalization (``rllfpr.scorenorm``) and where it lives in the product: the
formula, the epoch's cohort in the model store, calibration in S-norm units, and the
recognizer's re-scoring of gallery hits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recognizer_service.decision import decide, normalize, observe
from recognizer_service.gallery import Hit
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.store import (
    COHORT_FILE,
    MODEL_FILE,
    ModelStore,
    ModelStoreError,
    OpenSetCalibration,
)
from rllfpr.openset import S_NORM_MARGINS, Searches, calibrate, rates
from rllfpr.scorenorm import STD_FLOOR, CohortNorm, cohort_statistics, s_normalized

TINY = RecognizerConfig(backbone="compact", input_size=32, embedding_dim=16)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
def test_s_norm_ranks_a_genuine_pair_above_two_strangers_from_a_crowd(seed: int) -> None:
    """Two strangers who both look like everyone (the cohort's crowd) have the higher cosine;
    measured against the crowd, the genuine pair of an unusual face stands out instead."""
    rng = np.random.default_rng(seed)
    axes = np.eye(16)
    crowd = _unit(axes[0] + 0.12 * rng.standard_normal((302, 16)))
    cohort, strangers = crowd[:300], crowd[300:]
    genuine = _unit(axes[1] + 0.25 * rng.standard_normal((2, 16)))
    faces = np.concatenate([strangers, genuine])
    assert strangers[0] @ strangers[1] > genuine[0] @ genuine[1]  # raw cosine: the wrong order
    statistics = cohort_statistics(faces, cohort)
    normalized = s_normalized(faces @ faces.T, statistics, statistics)
    assert normalized[2, 3] > normalized[0, 1] + 1.0


def test_s_norm_is_symmetric_and_adaptive_statistics_use_the_top_scores() -> None:
    rng = np.random.default_rng(0)
    first, second = _unit(rng.standard_normal((5, 8))), _unit(rng.standard_normal((7, 8)))
    cohort = _unit(rng.standard_normal((40, 8)))
    a, b = cohort_statistics(first, cohort), cohort_statistics(second, cohort)
    np.testing.assert_allclose(
        s_normalized(first @ second.T, a, b), s_normalized(second @ first.T, b, a).T
    )
    scores = first @ cohort.T
    mean, std = cohort_statistics(first, cohort, top_k=3)
    top = np.sort(scores, axis=1)[:, -3:]
    np.testing.assert_allclose(mean, top.mean(axis=1))
    np.testing.assert_allclose(std, top.std(axis=1))
    assert (mean > scores.mean(axis=1)).all()
    for wrong in (1, 41):
        with pytest.raises(ValueError, match="top_k"):
            cohort_statistics(first, cohort, top_k=wrong)


def test_a_cohort_norm_is_the_formula_over_its_unit_cohort() -> None:
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((30, 8)) * 3  # not unit rows: CohortNorm normalizes them
    norm = CohortNorm(raw, top_k=10)
    assert norm.cohort.dtype == np.float32
    assert norm.dimension == 8
    np.testing.assert_allclose(np.linalg.norm(norm.cohort, axis=1), 1, atol=1e-6)
    probes, templates = _unit(rng.standard_normal((4, 8))), _unit(rng.standard_normal((6, 8)))
    expected = s_normalized(
        probes @ templates.T,
        cohort_statistics(probes, _unit(raw), 10),
        cohort_statistics(templates, _unit(raw), 10),
    )
    np.testing.assert_allclose(norm.matrix(probes, templates), expected, rtol=1e-4, atol=1e-4)
    # a face with the same cosine to every cohort face divides by the floor, not by zero
    flat = CohortNorm(np.tile([[1.0, 0.0]], (5, 1)))
    mean, std = flat.statistics(np.array([[0.0, 1.0]]))
    assert mean[0] == 0.0
    assert std[0] == pytest.approx(STD_FLOOR)


@pytest.mark.parametrize(
    ("cohort", "top_k", "message"),
    [
        (np.ones((1, 4)), None, "at least 2"),
        (np.ones(4), None, "at least 2"),
        (np.array([[1.0, np.nan], [0, 1]]), None, "at least 2 finite"),
        (np.array([[0.0, 0.0], [0, 1]]), None, "all zeros"),
        (np.eye(3), 4, "top_k"),
        (np.eye(3), 1, "top_k"),
    ],
)
def test_a_malformed_cohort_is_refused(cohort: np.ndarray, top_k: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CohortNorm(cohort, top_k)


def _recognizer() -> Recognizer:
    torch.manual_seed(0)
    return Recognizer(TINY).eval()


def _s_norm_calibration(threshold: float = 2.5) -> OpenSetCalibration:
    return OpenSetCalibration(scores="s_norm", threshold=threshold, min_margin=1.0)


def test_a_model_with_a_cohort_is_stored_loaded_and_checked(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    cohort = _unit(np.random.default_rng(2).standard_normal((50, 16)))
    norm = CohortNorm(cohort, 20)
    info = store.publish("fleet", 3, _recognizer(), _s_norm_calibration(), norm=norm)
    assert info.format_version == 2
    assert info.score_norm is not None
    assert (info.score_norm.cohort_size, info.score_norm.top_k) == (50, 20)
    loaded = store.load("fleet", 3)
    assert loaded.scores == "s_norm"
    assert loaded.norm is not None
    np.testing.assert_allclose(loaded.norm.cohort, cohort, atol=1e-6)
    assert loaded.norm.top_k == 20
    # the same model again is a no-op; another cohort for the epoch is refused
    assert store.publish("fleet", 3, _recognizer(), _s_norm_calibration(), norm=norm) == info
    with pytest.raises(ModelStoreError, match="immutable"):
        store.publish("fleet", 3, _recognizer(), _s_norm_calibration(), norm=CohortNorm(cohort, 10))
    # a damaged cohort file is never used
    path = tmp_path / "fleet" / "epoch-00000003" / COHORT_FILE
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(
        ModelStoreError, match="cohort of scope fleet epoch 3 is missing or corrupt"
    ):
        store.load("fleet", 3)
    path.unlink()
    with pytest.raises(ModelStoreError, match="missing or corrupt"):
        store.load("fleet", 3)


def test_scores_cohort_and_format_must_agree(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    cohort = CohortNorm(np.eye(16)[:4])
    with pytest.raises(ModelStoreError, match="s_norm scores"):
        store.publish("fleet", 1, _recognizer(), OpenSetCalibration(threshold=0.5), norm=cohort)
    with pytest.raises(ModelStoreError, match="s_norm scores"):
        store.publish("fleet", 2, _recognizer(), _s_norm_calibration())
    with pytest.raises(ModelStoreError, match="8-d cohort for a 16-d"):
        store.publish("fleet", 3, _recognizer(), _s_norm_calibration(), norm=CohortNorm(np.eye(8)))
    assert store.epochs("fleet") == []
    # a raw-cosine model stays format 1, readable by hosts that predate score normalization
    store.publish("fleet", 4, _recognizer(), OpenSetCalibration(threshold=0.5))
    document = json.loads((tmp_path / "fleet" / "epoch-00000004" / MODEL_FILE).read_text())
    assert document["format_version"] == 1
    assert document["score_norm"] is None
    assert store.load("fleet", 4).norm is None


def test_cosine_calibrations_keep_their_bounds_and_s_norm_ones_do_not() -> None:
    with pytest.raises(ValueError, match="cosine threshold"):
        OpenSetCalibration(threshold=1.5)
    with pytest.raises(ValueError, match="cosine threshold"):
        OpenSetCalibration(threshold=0.5, min_margin=2.5)
    assert _s_norm_calibration(threshold=7.5).threshold == 7.5
    with pytest.raises(ValueError, match="finite number"):
        OpenSetCalibration(scores="s_norm", threshold=float("inf"))


def test_calibration_in_s_norm_units_tries_margins_in_standard_deviations() -> None:
    rng = np.random.default_rng(3)
    mated = rng.normal(0, 1, (200, 10))
    mated[np.arange(200), np.arange(200) % 10] += 6  # mates score about 6 deviations up
    non_mated = rng.normal(0, 1, (400, 10))
    searches = Searches(
        np.concatenate([mated, non_mated]), np.concatenate([np.arange(200) % 10, -np.ones(400)])
    )
    point = calibrate(searches, 0.01, scores="s_norm")
    assert point.scores == "s_norm"
    assert point.threshold > 1  # beyond any cosine: it is not clipped to one
    assert point.min_margin in S_NORM_MARGINS
    measured = rates(searches, point.threshold, point.min_margin)
    assert measured["fpir"] <= 0.01
    assert measured["fnir"] < 0.2
    assert point.measured == measured


def test_hits_are_rescored_with_both_faces_statistics() -> None:
    probe = (0.2, 0.1)
    hits = [
        Hit("alice", "t1", 0.7, (0.3, 0.05)),  # ((0.7-0.2)/0.1 + (0.7-0.3)/0.05) / 2 = 6.5
        Hit("bob", "t2", 0.8, (0.6, 0.1)),  # ((0.8-0.2)/0.1 + (0.8-0.6)/0.1) / 2 = 4.0
        Hit("carol", "t3", 0.5, None),  # no statistics: the probe's side twice, 3.0
    ]
    rescored = normalize(hits, probe)
    assert [hit.score for hit in rescored] == pytest.approx([6.5, 4.0, 3.0])
    assert [(h.subject, h.template_id, h.statistics) for h in rescored] == [
        (h.subject, h.template_id, h.statistics) for h in hits
    ]
    # bob's higher cosine loses to alice's once each face is judged against the strangers
    observation = observe(rescored, keep=5)
    assert list(observation.scores) == ["alice", "bob", "carol"]
    decision = decide([observation], threshold=5.0, min_margin=2.0)
    assert (decision.decision, decision.subject) == ("match", "alice")
    assert decision.margin == pytest.approx(2.5)
    # scores far below -1 are still kept per subject (no cosine floor in S-norm units)
    low = observe([Hit("dave", "t4", -4.0), Hit("dave", "t5", -3.0)], keep=5)
    assert low.scores == {"dave": -3.0}


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ('{"subject": "a", "cohort_mean": 0.25, "cohort_std": 0.05}', (0.25, 0.05)),
        (b'{"cohort_mean": 1, "cohort_std": 2}', (1.0, 2.0)),
        ({"cohort_mean": 0.25, "cohort_std": 0.05}, (0.25, 0.05)),
        ('{"subject": "a"}', None),  # enrolled by a raw-cosine model
        ('{"cohort_mean": "0.2", "cohort_std": 0.05}', None),
        ('{"cohort_mean": 0.2, "cohort_std": 0}', None),
        ('{"cohort_mean": NaN, "cohort_std": 0.05}', None),
        ("not json", None),
        (b"\xff\xfe", None),
        (None, None),  # the template was erased between search and read
    ],
)
def test_a_template_s_stored_statistics_are_read_or_ignored_never_trusted_blindly(
    attributes: object, expected: tuple[float, float] | None
) -> None:
    from recognizer_service.gallery import _statistics

    assert _statistics(attributes) == expected


def test_a_track_spanning_a_rotation_is_decided_in_its_latest_face_s_unit(
    tmp_path: Path,
) -> None:
    """Epoch 1 scores cosines, epoch 2 S-norm: the faces of a track that crossed the rotation
    are never averaged across units; the latest face's epoch decides which count."""
    import uuid
    from datetime import timedelta

    from recognizer_service.decision import Observation
    from recognizer_service.epochs import EpochModels
    from recognizer_service.metrics import Metrics
    from recognizer_service.pipeline import BatchProcessor
    from recognizer_service.tracks import FaceObservation, Round, RoundRef, TrackId
    from rllfpr.config import RecognizerSettings
    from rllfpr.wire.messages import utc_now

    store = ModelStore(tmp_path)
    store.publish("fleet", 1, _recognizer(), OpenSetCalibration(threshold=0.9))
    cohort = CohortNorm(np.eye(16)[:4])
    store.publish("fleet", 2, _recognizer(), _s_norm_calibration(threshold=3.0), norm=cohort)
    models = EpochModels(store, ["fleet"], torch.device("cpu"))
    models.refresh()
    settings = RecognizerSettings(model_store=tmp_path, device="cpu")
    processor = BatchProcessor(settings, models, None, None, None, Metrics(), None)  # type: ignore[arg-type]
    now = utc_now()

    def face(epoch: int, seconds: int, score: float) -> FaceObservation:
        when = now + timedelta(seconds=seconds)
        return FaceObservation(str(uuid.uuid4()), when, "fleet", epoch, Observation({"al": score}))

    track = TrackId("lobby", "door", "a1", 1)
    # two cosine faces of 0.95 before the switch, one S-norm face of 4.0 after it
    faces = [face(1, 0, 0.95), face(1, 1, 0.95), face(2, 2, 4.0)]
    event = processor._decide(Round(RoundRef("k", 1), track, uuid.uuid4(), faces))
    assert event is not None
    assert (event.decision, event.subject, event.score_kind) == ("match", "al", "s_norm")
    assert event.score == pytest.approx(4.0)  # not (0.95 + 0.95 + 4.0) / 3
    assert [str(m) for m in event.message_ids] == [faces[2].message_id]
    # the other way round (an S-norm face, then a later cosine face): cosine decides
    faces = [face(2, 0, 4.0), face(1, 1, 0.95)]
    event = processor._decide(Round(RoundRef("k", 2), track, uuid.uuid4(), faces))
    assert event is not None
    assert (event.decision, event.score_kind, event.score) == ("match", "cosine", 0.95)
