"""Revocation and cross-key matching: identification rank-1 and verification EER of probes
against class templates (``trainer.evaluate``'s gallery definition)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from trainer.evaluate import class_templates, closed_set


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The error rate where false accepts equal false rejects (interpolated on the ROC)."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("an EER needs genuine and impostor scores")
    labels = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    false_accept, true_accept, _ = roc_curve(labels, np.concatenate([genuine, impostor]))
    false_reject = 1 - true_accept
    index = int(np.argmin(np.abs(false_accept - false_reject)))
    return float((false_accept[index] + false_reject[index]) / 2)


def template_scores(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, probe_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of each probe against its own person's template (genuine) and against
    every other person's template (impostor)."""
    classes = int(max(gallery_labels.max(), probe_labels.max())) + 1
    scores = probes @ class_templates(gallery, gallery_labels, classes).T
    own = np.zeros_like(scores, dtype=bool)
    own[np.arange(len(probe_labels)), probe_labels] = True
    present = np.isin(np.arange(classes), gallery_labels)
    return scores[own], scores[~own & present[None, :]]


def match(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, probe_labels: np.ndarray
) -> dict[str, Any]:
    """Closed-set identification plus the verification EER of the same comparisons."""
    genuine, impostor = template_scores(gallery, gallery_labels, probes, probe_labels)
    return closed_set(gallery, gallery_labels, probes, probe_labels) | {
        "eer": equal_error_rate(genuine, impostor)
    }
