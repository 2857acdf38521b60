"""Open-set identification metrics and the calibration of the decision threshold (numpy only).

Definitions (NIST FRVT 1:N terms), with the decision rule of ``decision.py`` at rank 1:

- a *mated* search probes with a face of an enrolled person; a *non-mated* search with a face
  of someone never enrolled;
- FNIR (false-negative identification rate): share of mated searches whose decision is not
  "match, the right person" (reported unknown, or matched to someone else);
- FPIR (false-positive identification rate): share of non-mated searches decided "match";
- misidentification rate: share of mated searches matched to the wrong person (part of FNIR).

Calibration picks, on calibration people only, the margin (from a grid) and the lowest
threshold whose FPIR does not exceed the target, minimizing FNIR; a separate set of people then
measures both rates honestly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rllfpr.models.store import OpenSetCalibration

DEFAULT_MARGINS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15)
_EPSILON = 1e-6


@dataclass(frozen=True)
class Searches:
    """Subject-level scores of a batch of searches against one gallery."""

    scores: np.ndarray  # (P, S): best cosine of each probe against each enrolled subject
    mates: np.ndarray  # (P,): column of the probe's own subject, -1 for non-mated searches

    @property
    def mated(self) -> np.ndarray:
        return self.mates >= 0


def subject_scores(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, subjects: int
) -> np.ndarray:
    """(P, S) best cosine per subject; embeddings are L2-normalized rows."""
    similarity = probes @ gallery.T
    scores = np.full((len(probes), subjects), -1.0, dtype=np.float64)
    for subject in range(subjects):
        columns = gallery_labels == subject
        if columns.any():
            scores[:, subject] = similarity[:, columns].max(axis=1)
    return scores


def _best_two(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best subject, its score and the margin over the runner-up, per search."""
    order = np.argsort(-scores, axis=1)
    best = order[:, 0]
    rows = np.arange(len(scores))
    top = scores[rows, best]
    runner_up = scores[rows, order[:, 1]] if scores.shape[1] > 1 else np.full(len(scores), -1.0)
    return best, top, top - runner_up


def rates(searches: Searches, threshold: float, min_margin: float) -> dict[str, float]:
    best, top, margin = _best_two(searches.scores)
    matched = (top >= threshold) & (margin >= min_margin)
    mated = searches.mated
    correct = matched & (best == searches.mates)
    mated_count, non_mated_count = int(mated.sum()), int((~mated).sum())
    return {
        "fnir": float((~correct[mated]).mean()) if mated_count else float("nan"),
        "fpir": float(matched[~mated].mean()) if non_mated_count else float("nan"),
        "misidentification": float((matched & ~correct)[mated].mean())
        if mated_count
        else float("nan"),
        "mated_searches": mated_count,
        "non_mated_searches": non_mated_count,
    }


def threshold_for(searches: Searches, target_fpir: float, min_margin: float) -> float:
    """Lowest threshold whose FPIR on the non-mated searches is at most ``target_fpir``."""
    _, top, margin = _best_two(searches.scores[~searches.mated])
    candidates = np.sort(top[margin >= min_margin])[::-1]
    allowed = int(np.floor(target_fpir * len(top) + _EPSILON))
    if allowed >= len(candidates):
        return -1.0
    return float(min(1.0, candidates[allowed] + _EPSILON))


def calibrate(
    searches: Searches,
    target_fpir: float,
    margins: Sequence[float] = DEFAULT_MARGINS,
    protocol: str = "",
) -> OpenSetCalibration:
    """The (threshold, margin) with the lowest FNIR at FPIR <= ``target_fpir``."""
    if not searches.mated.any() or searches.mated.all():
        raise ValueError("calibration needs both mated and non-mated searches")
    best: tuple[float, float, float] | None = None  # (fnir, margin, threshold)
    for min_margin in margins:
        threshold = threshold_for(searches, target_fpir, min_margin)
        fnir = rates(searches, threshold, min_margin)["fnir"]
        if best is None or fnir < best[0] - _EPSILON:
            best = (fnir, min_margin, threshold)
    assert best is not None
    _, min_margin, threshold = best
    return OpenSetCalibration(
        threshold=threshold,
        min_margin=min_margin,
        target_fpir=target_fpir,
        measured=rates(searches, threshold, min_margin),
        protocol=protocol,
    )


def fnir_at_fpir(
    searches: Searches, targets: Sequence[float], min_margin: float = 0.0
) -> dict[str, float]:
    """FNIR at the threshold giving each target FPIR on these same searches (a DET summary)."""
    return {
        f"fnir_at_fpir_{target:g}": rates(
            searches, threshold_for(searches, target, min_margin), min_margin
        )["fnir"]
        for target in targets
    }
