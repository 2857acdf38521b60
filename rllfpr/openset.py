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

The split of evaluation people (``split_people``), used by the rotation gate and the LFW
open-set study (``trainer.studies.openset``): the people are shuffled and split into two
disjoint halves, calibration and test. In each half, half of the people with at least two
photos are known: their first photos (two when they have three or more, else one) are
enrolled, the rest (at most 8) are mated searches. Everyone else in the half, every
single-photo person included, is unknown, never enrolled: their photos (at most 3) are
non-mated searches. Tracks: 3 photos of one person, scored by the mean of their subject
scores (as the service decides a track), for people with enough photos.

With a ``CohortNorm`` (``rllfpr.scorenorm``) every score is the S-norm of the cosine instead, as
the service scores an epoch whose model ships a cohort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rllfpr.models.store import OpenSetCalibration, ScoreKind
from rllfpr.scorenorm import CohortNorm

MAX_PROBES = 8
MAX_UNKNOWN_PHOTOS = 3
TRACK_FACES = 3
DEFAULT_MARGINS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15)
# The margins tried for S-norm scores, in standard deviations: a cohort's cosines spread with a
# standard deviation of about 0.05-0.1, so ten times the cosine grid spans the same range.
S_NORM_MARGINS: tuple[float, ...] = tuple(10 * margin for margin in DEFAULT_MARGINS)
_EPSILON = 1e-6


@dataclass(frozen=True)
class Searches:
    """Subject-level scores of a batch of searches against one gallery."""

    scores: np.ndarray  # (P, S): best score of each probe against each enrolled subject
    mates: np.ndarray  # (P,): column of the probe's own subject, -1 for non-mated searches

    @property
    def mated(self) -> np.ndarray:
        return self.mates >= 0


def subject_scores(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    subjects: int,
    norm: CohortNorm | None = None,
) -> np.ndarray:
    """(P, S) best cosine per subject, or best S-norm score with ``norm``; embeddings are
    L2-normalized rows."""
    similarity = probes @ gallery.T if norm is None else norm.matrix(probes, gallery)
    return subject_maxima(similarity, gallery_labels, subjects)


def subject_maxima(similarity: np.ndarray, gallery_labels: np.ndarray, subjects: int) -> np.ndarray:
    """(P, S) best score per subject of a (P, templates) score matrix; -1 without templates."""
    scores = np.full((len(similarity), subjects), -1.0, dtype=np.float64)
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


def threshold_for(
    searches: Searches, target_fpir: float, min_margin: float, scores: ScoreKind = "cosine"
) -> float:
    """Lowest threshold whose FPIR on the non-mated searches is at most ``target_fpir``."""
    _, top, margin = _best_two(searches.scores[~searches.mated])
    candidates = np.sort(top[margin >= min_margin])[::-1]
    allowed = int(np.floor(target_fpir * len(top) + _EPSILON))
    if allowed >= len(candidates):  # every search may match: the lowest score there is
        return float(min(-1.0, searches.scores.min(initial=-1.0)))
    threshold = float(candidates[allowed] + _EPSILON)
    return min(1.0, threshold) if scores == "cosine" else threshold


def calibrate(
    searches: Searches,
    target_fpir: float,
    margins: Sequence[float] | None = None,
    protocol: str = "",
    scores: ScoreKind = "cosine",
) -> OpenSetCalibration:
    """The (threshold, margin) with the lowest FNIR at FPIR <= ``target_fpir``; ``scores``
    names the searches' unit (and the margins tried when ``margins`` is None)."""
    if not searches.mated.any() or searches.mated.all():
        raise ValueError("calibration needs both mated and non-mated searches")
    if margins is None:
        margins = DEFAULT_MARGINS if scores == "cosine" else S_NORM_MARGINS
    best: tuple[float, float, float] | None = None  # (fnir, margin, threshold)
    for min_margin in margins:
        threshold = threshold_for(searches, target_fpir, min_margin, scores)
        fnir = rates(searches, threshold, min_margin)["fnir"]
        if best is None or fnir < best[0] - _EPSILON:
            best = (fnir, min_margin, threshold)
    assert best is not None
    _, min_margin, threshold = best
    return OpenSetCalibration(
        scores=scores,
        threshold=threshold,
        min_margin=min_margin,
        target_fpir=target_fpir,
        measured=rates(searches, threshold, min_margin),
        protocol=protocol,
    )


def fnir_at_fpir(
    searches: Searches,
    targets: Sequence[float],
    min_margin: float = 0.0,
    scores: ScoreKind = "cosine",
) -> dict[str, float]:
    """FNIR at the threshold giving each target FPIR on these same searches (a DET summary)."""
    return {
        f"fnir_at_fpir_{target:g}": rates(
            searches, threshold_for(searches, target, min_margin, scores), min_margin
        )["fnir"]
        for target in targets
    }


@dataclass(frozen=True)
class Half:
    """One half of the evaluation people, as indices into the evaluation faces."""

    gallery: np.ndarray
    gallery_labels: np.ndarray  # subject column of each template
    mated: np.ndarray
    mated_labels: np.ndarray
    non_mated: np.ndarray
    mated_tracks: list[tuple[np.ndarray, int]]  # (face indices, subject column)
    non_mated_tracks: list[np.ndarray]
    subjects: int


def _split_half(people: list[np.ndarray]) -> Half:
    multi = [faces for faces in people if len(faces) >= 2]
    known = multi[: len(multi) // 2]
    known_ids = {id(faces) for faces in known}
    unknown = [faces for faces in people if id(faces) not in known_ids]
    gallery, gallery_labels, mated, mated_labels, mated_tracks = [], [], [], [], []
    for subject, faces in enumerate(known):
        enrolled = 2 if len(faces) >= 3 else 1
        gallery += faces[:enrolled].tolist()
        gallery_labels += [subject] * enrolled
        probes = faces[enrolled : enrolled + MAX_PROBES]
        mated += probes.tolist()
        mated_labels += [subject] * len(probes)
        if len(probes) >= TRACK_FACES:
            mated_tracks.append((probes[:TRACK_FACES], subject))
    non_mated = [i for faces in unknown for i in faces[:MAX_UNKNOWN_PHOTOS]]
    non_mated_tracks = [faces[:TRACK_FACES] for faces in unknown if len(faces) >= TRACK_FACES]
    return Half(
        np.array(gallery),
        np.array(gallery_labels),
        np.array(mated),
        np.array(mated_labels),
        np.array(non_mated),
        mated_tracks,
        non_mated_tracks,
        len(known),
    )


def split_people(labels: np.ndarray, seed: int) -> dict[str, Half]:
    """Calibration and test halves of disjoint people, as the module docstring describes."""
    rng = np.random.default_rng(seed)
    people = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    order = rng.permutation(len(people))
    halves = ([people[i] for i in order[0::2]], [people[i] for i in order[1::2]])
    return {"calibration": _split_half(halves[0]), "test": _split_half(halves[1])}


def searches_of(embeddings: np.ndarray, half: Half, norm: CohortNorm | None = None) -> Searches:
    """Face-level searches of a half: its mated probes and its unknown people."""
    gallery = embeddings[half.gallery]
    probes = np.concatenate([embeddings[half.mated], embeddings[half.non_mated]])
    mates = np.concatenate([half.mated_labels, np.full(len(half.non_mated), -1)])
    return Searches(
        subject_scores(gallery, half.gallery_labels, probes, half.subjects, norm), mates
    )


def track_searches(embeddings: np.ndarray, half: Half, norm: CohortNorm | None = None) -> Searches:
    """Each track's subject scores: the mean of its faces' scores (the service's consensus)."""
    gallery = embeddings[half.gallery]
    tracks = [(faces, subject) for faces, subject in half.mated_tracks]
    tracks += [(faces, -1) for faces in half.non_mated_tracks]
    scores = [
        subject_scores(gallery, half.gallery_labels, embeddings[faces], half.subjects, norm).mean(0)
        for faces, _ in tracks
    ]
    return Searches(np.array(scores), np.array([subject for _, subject in tracks]))
