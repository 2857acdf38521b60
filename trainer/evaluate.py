"""Accuracy protocols. Definitions (also in docs/results/accuracy.md):

Closed-set identification (paper Table 1), per-identity held-out split:
- gallery template of a person = L2-normalized mean of the embeddings of their training images;
- prediction = the template with the highest cosine similarity to the probe (rank 1);
- accuracy = share of held-out probes predicted correctly;
- F1 = macro average over people of the per-person F1;
- misidentification rate = macro average over people of the false-positive rate
  FP / (FP + TN): how often probes of other people are wrongly given this person's name.

Revocability (cross-key): the same protocol with gallery and probes from different keys.
Intervals: Wilson 95 % score interval of an accuracy over n probes.

Cohort score normalization (S-norm): a cosine between two faces, less what each face scores
against a cohort of other people's faces, in units of that spread, averaged over both faces;
adaptive (AS-norm) with each face's ``top_k`` highest cohort scores only.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, roc_curve


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def class_templates(embeddings: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    templates = np.zeros((classes, embeddings.shape[1]))
    for label in range(classes):
        templates[label] = embeddings[labels == label].mean(axis=0)
    return templates / np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)


class ClosedSetReport(TypedDict):
    """Closed-set identification against class-mean templates (one per person)."""

    accuracy: float  # rank-1
    accuracy_ci95: list[float]  # Wilson interval
    misidentification: float  # mean false-positive rate over the probed people
    f1: float  # macro F1 over the probed people
    probes: int
    chance: float  # 1 / people


# Pair verification (see ``verification``): accuracy at the threshold best on separate pairs,
# 10-fold cross-validated accuracy, ROC AUC, true-accept rates at 1 % and 0.1 % false accepts.
VerificationReport = TypedDict(
    "VerificationReport",
    {
        "accuracy": float,
        "threshold": float,
        "accuracy_10fold": float,
        "accuracy_10fold_ci95": list[float],
        "roc_auc": float,
        "tar_at_far_1e-2": float,
        "tar_at_far_1e-3": float,
        "pairs": int,
    },
)


def closed_set(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, probe_labels: np.ndarray
) -> ClosedSetReport:
    classes = int(max(gallery_labels.max(), probe_labels.max())) + 1
    templates = class_templates(gallery, gallery_labels, classes)
    predicted = (probes @ templates.T).argmax(axis=1)
    matrix = confusion_matrix(probe_labels, predicted, labels=np.arange(classes))
    false_positive = matrix.sum(axis=0) - np.diag(matrix)
    true_negative = matrix.sum() - matrix.sum(axis=0) - matrix.sum(axis=1) + np.diag(matrix)
    present = np.isin(np.arange(classes), probe_labels)
    fpr = false_positive[present] / np.maximum(false_positive[present] + true_negative[present], 1)
    correct = int((predicted == probe_labels).sum())
    return {
        "accuracy": correct / len(probe_labels),
        "accuracy_ci95": list(wilson_interval(correct, len(probe_labels))),
        "misidentification": float(fpr.mean()),
        "f1": float(
            f1_score(
                probe_labels,
                predicted,
                labels=np.unique(probe_labels),
                average="macro",
                zero_division=0,
            )
        ),
        "probes": len(probe_labels),
        "chance": 1 / classes,
    }


def verification(
    scores: np.ndarray, same: np.ndarray, threshold_scores: np.ndarray, threshold_same: np.ndarray
) -> VerificationReport:
    """Pair verification: accuracy at the threshold that is best on separate (training) pairs,
    accuracy with a 10-fold cross-validated threshold on the reported pairs themselves, ROC
    AUC, and true-accept rate at 1 % and 0.1 % false-accept rate.

    The training pairs' threshold only transfers while the model does not fit its training
    people: a recognizer that does (the GPU runs) scores its training pairs far apart, and that
    threshold is wrong for people it never saw. The cross-validated accuracy (LFW's standard
    way: each tenth of the pairs judged at the threshold best on the other nine) is free of it."""
    threshold = best_threshold(threshold_scores, threshold_same)
    folded = cross_validated_accuracy(scores, same)
    return {
        "accuracy": float(((scores >= threshold) == same).mean()),
        "threshold": threshold,
        "accuracy_10fold": folded,
        "accuracy_10fold_ci95": list(wilson_interval(round(folded * len(same)), len(same))),
        "roc_auc": float(roc_auc_score(same, scores)),
        "tar_at_far_1e-2": tar_at_far(scores, same, 1e-2),
        "tar_at_far_1e-3": tar_at_far(scores, same, 1e-3),
        "pairs": len(same),
    }


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The score threshold (accept at >=) with the highest accuracy on these pairs."""
    candidates = np.unique(scores)
    accuracy_at = [((scores >= t) == same).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy_at))])


def cross_validated_correct(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> np.ndarray:
    """Whether each pair is judged right at the threshold chosen on the other folds; folds are
    stratified (same-person and different-person pairs dealt out in turn), since pairs files
    list the two kinds in blocks."""
    fold_of = np.empty(len(same), dtype=int)
    for kind in (True, False):
        members = np.flatnonzero(same == kind)
        fold_of[members] = np.arange(len(members)) * folds // max(len(members), 1)
    correct = np.zeros(len(same), dtype=bool)
    for fold in range(folds):
        held_out = fold_of == fold
        if not held_out.any():
            continue
        threshold = best_threshold(scores[~held_out], same[~held_out])
        correct[held_out] = (scores[held_out] >= threshold) == same[held_out]
    return correct


def cross_validated_accuracy(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> float:
    """Share of pairs judged right at the threshold chosen on the other folds
    (``cross_validated_correct``)."""
    return float(cross_validated_correct(scores, same, folds).mean())


PairedComparison = TypedDict(
    "PairedComparison",
    {
        "accuracy_10fold": tuple[float, float],
        "accuracy_difference": float,
        "accuracy_difference_ci95": tuple[float, float],
        "roc_auc": tuple[float, float],
        "roc_auc_difference": float,
        "roc_auc_difference_ci95": tuple[float, float],
        "tar_at_far_1e-2": tuple[float, float],
        "tar_at_far_1e-2_difference": float,
        "tar_at_far_1e-2_difference_ci95": tuple[float, float],
        "only_first_right": int,
        "only_second_right": int,
        "mcnemar_p": float,
        "resamples": int,
        "pairs": int,
    },
)


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-2) -> float:
    """True-accept rate at false-accept rate ``far`` (the ROC curve interpolated)."""
    false_accept, true_accept, _ = roc_curve(same, scores)
    return float(np.interp(far, false_accept, true_accept))


def paired_comparison(
    first: np.ndarray, second: np.ndarray, same: np.ndarray, resamples: int = 2000, seed: int = 0
) -> PairedComparison:
    """Two models' scores of the same pairs, compared pair by pair: each one's 10-fold accuracy
    ROC AUC and true-accept rate at 1 % false accepts (where open-set search operates), the
    differences (first minus second) with paired bootstrap 95 % intervals (the pairs resampled,
    one resample for both models; each pair's 10-fold verdict kept as judged on all the pairs),
    and McNemar's exact two-sided test on the pairs only one model judges right."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if first.shape != second.shape or first.shape != same.shape:
        raise ValueError(f"scores {first.shape} / {second.shape} and labels {same.shape} differ")
    right = cross_validated_correct(first, same), cross_validated_correct(second, same)
    rng = np.random.default_rng(seed)
    accuracy, auc, tar = [], [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(same), len(same))
        if same[idx].all() or not same[idx].any():
            continue
        accuracy.append(right[0][idx].mean() - right[1][idx].mean())
        auc.append(roc_auc_score(same[idx], first[idx]) - roc_auc_score(same[idx], second[idx]))
        tar.append(tar_at_far(first[idx], same[idx]) - tar_at_far(second[idx], same[idx]))
    only_first = int((right[0] & ~right[1]).sum())
    only_second = int((right[1] & ~right[0]).sum())
    discordant = only_first + only_second
    aucs = float(roc_auc_score(same, first)), float(roc_auc_score(same, second))
    tars = tar_at_far(first, same), tar_at_far(second, same)

    def interval(values: list[float]) -> tuple[float, float]:
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)

    return {
        "accuracy_10fold": (float(right[0].mean()), float(right[1].mean())),
        "accuracy_difference": float(right[0].mean() - right[1].mean()),
        "accuracy_difference_ci95": interval(accuracy),
        "roc_auc": aucs,
        "roc_auc_difference": aucs[0] - aucs[1],
        "roc_auc_difference_ci95": interval(auc),
        "tar_at_far_1e-2": tars,
        "tar_at_far_1e-2_difference": tars[0] - tars[1],
        "tar_at_far_1e-2_difference_ci95": interval(tar),
        "only_first_right": only_first,
        "only_second_right": only_second,
        "mcnemar_p": float(binomtest(only_first, discordant).pvalue) if discordant else 1.0,
        "resamples": len(accuracy),
        "pairs": len(same),
    }
