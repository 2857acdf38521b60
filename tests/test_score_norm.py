"""benchmarks/score_norm.py scores its raw rows exactly as the open-set study and View 1 do, its
normalized pairs as ``rllfpr.scorenorm`` defines S-norm, and its normalized open-set rows as the
rotation calibrates an epoch with a cohort (``rllfpr.openset`` with a ``CohortNorm``)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rllfpr.openset import fnir_at_fpir, searches_of, split_people, track_searches
from rllfpr.scorenorm import CohortNorm, cohort_statistics, s_normalized
from trainer.studies.openset import FPIR_POINTS
from trainer.verification import row_scores

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "score_norm.py"


@pytest.fixture(scope="module")
def script() -> dict[str, Any]:
    return runpy.run_path(str(SCRIPT))


def _people(rng: np.random.Generator, people: int = 60, dim: int = 16) -> tuple[np.ndarray, ...]:
    """Unit embeddings of ``people`` people with 1-6 photos each, clustered per person."""
    centers = rng.standard_normal((people, dim))
    labels = np.repeat(np.arange(people), rng.integers(1, 7, people))
    faces = centers[labels] + 0.9 * rng.standard_normal((len(labels), dim))
    return faces / np.linalg.norm(faces, axis=1, keepdims=True), labels


def test_raw_open_set_rates_are_the_open_set_study_s(script: dict[str, Any]) -> None:
    embeddings, labels = _people(np.random.default_rng(0))
    halves = split_people(labels, 0)
    result = script["_open_set"](embeddings, halves, None)
    expected = fnir_at_fpir(searches_of(embeddings, halves["test"]), FPIR_POINTS)
    assert {key: result[key] for key in expected} == expected
    tracks = fnir_at_fpir(track_searches(embeddings, halves["test"]), FPIR_POINTS)
    assert {key: result["tracks_of_3_photos"][key] for key in tracks} == tracks
    for target in ("0.01", "0.1"):
        rates = result[f"calibrated_for_fpir_{target}"]
        assert rates["mated_searches"] == len(halves["test"].mated)
        assert 0.0 <= rates["fnir"] <= 1.0


def test_normalized_open_set_rates_are_those_of_searches_with_the_cohort(
    script: dict[str, Any],
) -> None:
    rng = np.random.default_rng(1)
    embeddings, labels = _people(rng)
    cohort, _ = _people(rng, people=40)
    halves = split_people(labels, 0)
    norm = CohortNorm(cohort, 5)
    result = script["_open_set"](embeddings, halves, norm)
    searches = searches_of(embeddings, halves["test"], norm)
    expected = fnir_at_fpir(searches, FPIR_POINTS, scores="s_norm")
    assert {key: result[key] for key in expected} == expected
    tracks = fnir_at_fpir(
        track_searches(embeddings, halves["test"], norm), FPIR_POINTS, scores="s_norm"
    )
    assert {key: result["tracks_of_3_photos"][key] for key in tracks} == tracks
    raw = searches_of(embeddings, halves["test"])
    assert np.abs(searches.scores).max() > 1.5  # standard deviations, not cosines
    assert not np.allclose(searches.scores, raw.scores)


def test_normalized_pair_scores_are_s_norm_of_the_pair() -> None:
    rng = np.random.default_rng(2)
    embeddings, _ = _people(rng, people=10)
    cohort, _ = _people(rng, people=30)
    rows = (np.array([0, 3, 5]), np.array([1, 4, 2]), np.array([True, False, True]))
    statistics = cohort_statistics(embeddings, cohort, None)
    full = s_normalized(embeddings @ embeddings.T, statistics, statistics)
    np.testing.assert_allclose(row_scores(embeddings, rows, statistics), full[rows[0], rows[1]])
    np.testing.assert_allclose(
        row_scores(embeddings, rows, None),
        (embeddings[rows[0]] * embeddings[rows[1]]).sum(axis=1),
    )


def test_one_side_rows_use_only_that_face_s_statistics(script: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    probes, _ = _people(rng, people=5)
    templates, _ = _people(rng, people=7)
    cohort, _ = _people(rng, people=30)
    raw = probes @ templates.T
    mean, std = cohort_statistics(probes, cohort, 4)
    probe_side = script["OneSide"](cohort, 4, side="probe").matrix(probes, templates)
    np.testing.assert_allclose(probe_side, (raw - mean[:, None]) / std[:, None], rtol=1e-4)
    # the probe's side alone keeps each probe's ranking of templates: it moves its threshold
    np.testing.assert_array_equal(np.argsort(-probe_side, axis=1), np.argsort(-raw, axis=1))
    mean, std = cohort_statistics(templates, cohort, 4)
    template_side = script["OneSide"](cohort, 4, side="template").matrix(probes, templates)
    np.testing.assert_allclose(template_side, (raw - mean[None, :]) / std[None, :], rtol=1e-4)
