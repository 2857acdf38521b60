"""benchmarks/embedding_projection.py fits what its protocol says: each projection, applied to
the faces it was fitted on, whitens exactly the variation it names."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embedding_projection.py"


@pytest.fixture(scope="module")
def script() -> dict[str, Any]:
    return runpy.run_path(str(SCRIPT))


def _faces(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """80 people, 2-5 faces each, 96 dimensions, correlated variation within a person; and 10
    faces of people seen once, which carry no within-person variation."""
    mixing = rng.normal(size=(96, 96))
    people = rng.normal(size=(80, 96)) * 3
    labels = np.concatenate([np.repeat(np.arange(80), rng.integers(2, 6, 80)), 80 + np.arange(10)])
    centers = np.concatenate([people, rng.normal(size=(10, 96)) * 3])[labels]
    return centers + rng.normal(size=(len(labels), 96)) @ mixing, labels


def _within(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    repeated = [label for label in np.unique(labels) if (labels == label).sum() >= 2]
    residual = np.concatenate(
        [x[labels == label] - x[labels == label].mean(0) for label in repeated]
    )
    return residual.T @ residual / len(residual)


def test_each_projection_whitens_what_it_names(script: dict[str, Any]) -> None:
    x, labels = _faces(np.random.default_rng(0))
    fit = script["fit"]
    mean, matrix = fit("center", x, labels, 0.0)
    np.testing.assert_allclose(((x - mean) @ matrix).mean(axis=0), 0, atol=1e-9)
    mean, matrix = fit("pca", x, labels, 0.0)
    np.testing.assert_allclose(np.cov(((x - mean) @ matrix).T), np.eye(96), atol=1e-6)
    mean, matrix = fit("wccn", x, labels, 0.0)
    projected = (x - mean) @ matrix
    np.testing.assert_allclose(_within(projected, labels), np.eye(96), atol=1e-6)
    assert not np.allclose(np.cov(projected.T), np.eye(96), atol=0.1)  # people still spread
    mean, matrix = fit("lda", x, labels, 0.0)
    assert matrix.shape == (96, script["LDA_DIMENSIONS"])
    np.testing.assert_allclose(_within((x - mean) @ matrix, labels), np.eye(64), atol=1e-6)


def test_shrinking_moves_the_whitening_toward_a_plain_scale(script: dict[str, Any]) -> None:
    x, labels = _faces(np.random.default_rng(1))
    _, full = script["fit"]("wccn", x, labels, 1.0)
    scale = full[0, 0]
    np.testing.assert_allclose(full, scale * np.eye(96), atol=1e-12)
    with pytest.raises(ValueError, match="unknown projection"):
        script["fit"]("plda", x, labels, 0.1)


def test_the_open_set_over_several_splits_repeats_split_zero(script: dict[str, Any]) -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(40), 6)  # 2 enrolled and a track of 3 for known people
    people = rng.normal(size=(40, 16))
    probes = people[labels] + 0.6 * rng.normal(size=(len(labels), 16))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    cohort = rng.normal(size=(60, 16))
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    result = script["_open_set"](probes, labels, cohort, 3)
    assert len(result["splits"]) == 3
    for kind in ("cosine", "as_norm"):
        first = result["splits"][0][kind]["single_faces"]
        assert first["fnir_at_fpir_0.01"] == result[kind]["fnir_at_fpir_0.01"]
        for split in result["splits"]:
            assert set(split[kind]) == {"single_faces", "tracks_of_3"}
            assert split[kind]["tracks_of_3"]["calibrated_for_fpir_0.01"]["fpir"] <= 0.25
    # the people are dealt into halves differently by each seed
    assert len({json.dumps(split, sort_keys=True) for split in result["splits"]}) == 3
    assert "splits" not in script["_open_set"](probes, labels, cohort, 1)
