"""Where the student must put each face: the teacher's descriptor, centered, optionally whitened,
then turned by the epoch's secret orthogonal map ``Q_e``.

- Centering: dlib's unit descriptors share one large component (their mean has norm 0.91; two
  random faces have cosine 0.83). Regressed raw, a student learns that mean and nothing else, so
  targets are centered on the training corpus' mean and renormalized.
- Whitening (optional, ``whiten`` in [0, 1]): the centered targets are multiplied by
  ``C^(-whiten/2)`` (C: their covariance), so no few directions dominate the cosine.
- ``Q_e``: students regressing one target space share one embedding space, so templates would
  link across key epochs. Each epoch's target is ``Q_e`` times the above, ``Q_e`` a random
  orthogonal matrix drawn from a secret seed of that epoch held only by the trainer (never the SN
  key's seed, which agents hold). Orthogonal maps keep every cosine, so accuracy is unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ROTATION_DOMAIN = b"rllfpr/teacher-target-rotation/v1"


def orthogonal_map(seed: int, dim: int) -> np.ndarray:
    """``Q_e``: a (dim, dim) orthogonal matrix drawn uniformly (Haar) from ``seed``; the same
    seed always gives the same matrix. The seed is hashed with a domain label first, so the map
    shares no random stream with an SN drawn from the same integer."""
    if seed < 0:
        raise ValueError(f"a rotation seed is a non-negative integer, got {seed}")
    digest = hashlib.sha256(_ROTATION_DOMAIN + seed.to_bytes(32, "big")).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))  # the sign fix makes the draw uniform over O(dim)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError("a target vector is zero: it has no direction")
    return vectors / norms


def rotated(targets: np.ndarray, seed: int | None) -> np.ndarray:
    """(N, D) targets turned by ``Q_e`` of ``seed`` (unchanged for None)."""
    if seed is None:
        return targets
    return (targets @ orthogonal_map(seed, targets.shape[1]).T).astype(targets.dtype)


@dataclass(frozen=True)
class TargetSpace:
    """The corpus part of the target transform: ``unit((unit(d) - mean) W)``, ``W`` the
    (possibly identity) whitening, fitted on one training corpus. ``Q_e`` comes after it, per
    model (``rotated``; the trainer applies it to each batch)."""

    mean: np.ndarray  # (D,), mean of the corpus' unit descriptors
    whitening: np.ndarray  # (D, D), symmetric

    @classmethod
    def fit(cls, descriptors: np.ndarray, whiten: float = 0.0) -> TargetSpace:
        """Fit on the training corpus' teacher descriptors (N, D), N >= 2."""
        if descriptors.ndim != 2 or len(descriptors) < 2:
            raise ValueError(f"need (N >= 2, D) descriptors, got {descriptors.shape}")
        if not 0.0 <= whiten <= 1.0:
            raise ValueError(f"whiten is in [0, 1], got {whiten}")
        unit = _unit(descriptors.astype(np.float64))
        mean = unit.mean(axis=0)
        whitening = np.eye(unit.shape[1])
        if whiten:
            centered = unit - mean
            values, vectors = np.linalg.eigh(centered.T @ centered / len(centered))
            values = np.maximum(values, values.max() * 1e-6)  # rank-deficient corpora
            whitening = (vectors * values ** (-whiten / 2)) @ vectors.T
        return cls(mean, whitening)

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) teacher descriptors -> (N, D) unit float32 targets."""
        centered = _unit(descriptors.astype(np.float64)) - self.mean
        return _unit(centered @ self.whitening).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, whitening=self.whitening)

    @classmethod
    def load(cls, path: Path) -> TargetSpace:
        with np.load(path, allow_pickle=False) as archive:
            return cls(archive["mean"], archive["whitening"])
