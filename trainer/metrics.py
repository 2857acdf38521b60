"""Measurements shared by the screens and the evaluations (numpy only)."""

from __future__ import annotations

import numpy as np


def grayscale(faces: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB -> (N, S, S) float grey levels (ITU-R BT.601)."""
    return faces.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def adjacent_correlation(images: np.ndarray, pairs: int = 3000, seed: int = 0) -> dict[str, float]:
    """Pearson correlation of randomly drawn adjacent pixel pairs (paper Table 2), per image
    then averaged: horizontal, vertical and diagonal neighbours of ``pairs`` pixels."""
    rng = np.random.default_rng(seed)
    offsets = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1)}
    result = {}
    for direction, (dy, dx) in offsets.items():
        values = []
        for image in images.astype(np.float64):
            h, w = image.shape
            ys = rng.integers(0, h - dy, pairs)
            xs = rng.integers(0, w - dx, pairs)
            a, b = image[ys, xs], image[ys + dy, xs + dx]
            if a.std() > 0 and b.std() > 0:
                values.append(np.corrcoef(a, b)[0, 1])
        result[direction] = float(np.mean(values)) if values else float("nan")
    return result


def nearest_neighbour_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    """Rank-1 accuracy of cosine nearest neighbour on raw, per-image standardized pixels."""

    def normalized(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float64)
        flat = flat - flat.mean(axis=1, keepdims=True)
        return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)

    similarity = normalized(test) @ normalized(train).T
    predicted = train_labels[similarity.argmax(axis=1)]
    return float((predicted == test_labels).mean())


def majority_rate(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent training identity (a chance level)."""
    values, counts = np.unique(train_labels, return_counts=True)
    return float((test_labels == values[counts.argmax()]).mean())
