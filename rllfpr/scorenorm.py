"""Cohort score normalization (S-norm): a cosine judged against how both faces score with strangers.

A raw cosine means different things for different faces: some faces (or keys' scrambles of
them) resemble everybody a little, so a stranger's best cosine to them is high. S-norm corrects
each score with a *cohort*, unit embeddings of people who are never enrolled and never searched
for. A face's cohort statistics are the mean ``m`` and standard deviation ``s`` of its cosines
to the cohort, over its ``top_k`` highest only when ``top_k`` is set (adaptive S-norm, AS-norm).
A cosine ``c`` between faces 1 and 2 becomes the mean of their two z-scores::

    ((c - m1) / s1 + (c - m2) / s2) / 2

in standard deviations: a stranger scores about 0 whoever the faces are, a mate well above.

In the product an epoch's trainer draws the cohort from its own training corpus, embedded by
the epoch's recognizer through the epoch's SN, and ships it with that recognizer
(``rllfpr.models.store``): it belongs to the key epoch and is revoked with it. The recognizer
service keeps each template's statistics with the template (computed once at enrollment) and
takes each probe's at search time. What it gains, measured: ``docs/results/teacher.md``,
section "Cohort score normalization".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STD_FLOOR = 1e-4  # a degenerate face (same cosine to every cohort face) divides by this at least
Statistics = tuple[np.ndarray, np.ndarray]  # per face: mean, standard deviation


def cohort_statistics(
    embeddings: np.ndarray, cohort: np.ndarray, top_k: int | None = None
) -> Statistics:
    """Mean and standard deviation of each unit embedding's cosines to the unit ``cohort``
    rows (people other than any compared), over its ``top_k`` highest only when given."""
    if top_k is not None and not 2 <= top_k <= len(cohort):
        raise ValueError(f"top_k must be 2..{len(cohort)} (the cohort's size), not {top_k}")
    scores = embeddings @ cohort.T
    if top_k is not None:
        scores = -np.partition(-scores, top_k - 1, axis=1)[:, :top_k]
    return scores.mean(axis=1), np.maximum(scores.std(axis=1), STD_FLOOR)


def s_normalized_pairs(scores: np.ndarray, first: Statistics, second: Statistics) -> np.ndarray:
    """S-norm of cosines whose two faces' ``cohort_statistics`` are given element by element
    (or broadcast to the scores' shape): the mean of the two z-scores."""
    (first_mean, first_std), (second_mean, second_std) = first, second
    return 0.5 * ((scores - first_mean) / first_std + (scores - second_mean) / second_std)


def s_normalized(similarity: np.ndarray, first: Statistics, second: Statistics) -> np.ndarray:
    """S-norm of a (F, S) cosine matrix between F first and S second faces, from each side's
    ``cohort_statistics``."""
    (first_mean, first_std), (second_mean, second_std) = first, second
    return s_normalized_pairs(
        similarity,
        (first_mean[:, None], first_std[:, None]),
        (second_mean[None, :], second_std[None, :]),
    )


@dataclass(frozen=True)
class CohortNorm:
    """An epoch's cohort (unit rows, float32) and the ``top_k`` its statistics use."""

    cohort: np.ndarray
    top_k: int | None = None

    def __post_init__(self) -> None:
        cohort = np.asarray(self.cohort)
        if cohort.ndim != 2 or len(cohort) < 2 or not np.isfinite(cohort).all():
            raise ValueError(f"a cohort is at least 2 finite rows, not shape {cohort.shape}")
        norms = np.linalg.norm(cohort, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("a cohort row is all zeros")
        object.__setattr__(self, "cohort", (cohort / norms).astype(np.float32))
        if self.top_k is not None and not 2 <= self.top_k <= len(cohort):
            raise ValueError(
                f"top_k must be 2..{len(cohort)} (the cohort's size), not {self.top_k}"
            )

    @property
    def dimension(self) -> int:
        return int(self.cohort.shape[1])

    def statistics(self, embeddings: np.ndarray) -> Statistics:
        """``cohort_statistics`` of (N, D) unit embeddings against this cohort."""
        vectors = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dimension)
        mean, std = cohort_statistics(vectors, self.cohort, self.top_k)
        return mean.astype(np.float64), std.astype(np.float64)

    def matrix(self, probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
        """(P, T) S-norm scores of unit probes against unit templates."""
        similarity = np.asarray(probes, np.float64) @ np.asarray(templates, np.float64).T
        return s_normalized(similarity, self.statistics(probes), self.statistics(templates))
