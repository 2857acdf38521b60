"""Open-set decisions: subject-level scores, the calibrated threshold, the runner-up margin and
the consensus of several faces of one track.

One face gives, per subject, the best score of that subject's templates among the searched top
templates (``Observation``): their cosine, or, where the epoch's model ships a cohort, their
S-norm score (``normalize``, ``rllfpr.scorenorm``; calibrated in the same unit). A track's
decision averages those scores over its faces; a subject missing from one face's list is
counted at that face's lowest listed score (an upper bound of its true score, so absences
never help a runner-up lose). The decision is ``match`` when the best subject's mean score
clears the threshold *and* beats the runner-up subject by the margin; otherwise ``unknown``. A
single-subject gallery has no runner-up (margin against -1, in either unit). One face is the
special case of a one-face track, so calibration and service use the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from recognizer_service.gallery import CohortStatistics, Hit
from rllfpr.scorenorm import s_normalized_pairs

NO_SCORE = -1.0  # cosine of opposite vectors: the score of "nothing found"


@dataclass(frozen=True)
class Observation:
    """What one face contributed: its best score per subject, best first."""

    scores: dict[str, float]

    @property
    def floor(self) -> float:
        return min(self.scores.values(), default=NO_SCORE)

    def score_of(self, subject: str) -> float:
        return self.scores.get(subject, self.floor)


def normalize(hits: Sequence[Hit], probe: CohortStatistics) -> list[Hit]:
    """The hits' cosines as S-norm scores, from the probe's and each template's cohort
    statistics; a template without statistics (enrolled before its epoch had a cohort: none
    in practice, since an epoch's model never changes) counts the probe's side twice."""
    mean, std = np.array(probe[0]), np.array(probe[1])
    template_mean = np.array([(hit.statistics or probe)[0] for hit in hits])
    template_std = np.array([(hit.statistics or probe)[1] for hit in hits])
    cosines = np.array([hit.score for hit in hits])
    scores = s_normalized_pairs(cosines, (mean, std), (template_mean, template_std))
    return [replace(hit, score=float(score)) for hit, score in zip(hits, scores, strict=True)]


def observe(hits: Sequence[Hit], keep: int) -> Observation:
    """Subject-level scores of one face from its template hits (any order)."""
    best: dict[str, float] = {}
    for hit in hits:
        if hit.score > best.get(hit.subject, float("-inf")):
            best[hit.subject] = hit.score
    ranked = sorted(best.items(), key=lambda item: -item[1])[:keep]
    return Observation(dict(ranked))


@dataclass(frozen=True)
class Decision:
    decision: Literal["match", "unknown"]
    subject: str | None
    score: float
    margin: float
    candidates: list[tuple[str, float]] = field(default_factory=list)


def decide(
    observations: Sequence[Observation], threshold: float, min_margin: float, keep: int = 5
) -> Decision:
    """Consensus of a track's faces (at least one)."""
    if not observations:
        raise ValueError("a decision needs at least one observation")
    subjects = {subject for observation in observations for subject in observation.scores}
    means = {
        subject: sum(o.score_of(subject) for o in observations) / len(observations)
        for subject in subjects
    }
    ranked = sorted(means.items(), key=lambda item: (-item[1], item[0]))
    if not ranked:
        return Decision("unknown", None, NO_SCORE, 0.0)
    best_subject, best = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else NO_SCORE
    margin = best - runner_up
    candidates = [(subject, round(score, 6)) for subject, score in ranked[:keep]]
    if best >= threshold and margin >= min_margin:
        return Decision("match", best_subject, best, margin, candidates)
    return Decision("unknown", None, best, margin, candidates)
