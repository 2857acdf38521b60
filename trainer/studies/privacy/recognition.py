"""Recognition accuracy of each method under the accuracy protocol (closed set, per-person
held-out split, class-mean templates; ``trainer.evaluate.closed_set``).

Image methods: one recognizer per method, trained with the experiment's recipe on the
method's protected images (``ProtectedView``: augmentation on the original face, then the
method), gallery and probes protected the same way. Eigenfaces and DP eigenfaces are matched
on their projections (the eigenface method's own template), without training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllfpr.faces.pixels import embed_wire
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork
from trainer.config import ExperimentConfig, identity
from trainer.data import AlignedFaces
from trainer.evaluate import ClosedSetReport, closed_set
from trainer.studies.privacy.baselines.base import Protection
from trainer.studies.privacy.baselines.eigenfaces import DpEigenfaces, Eigenfaces
from trainer.studies.privacy.config import BaselineConfig, Method
from trainer.train import FaceView, TrainResult, train


class ProtectedView(FaceView):
    """Recognizer input for a protection method: original faces -> its protected pixels."""

    def __init__(self, protection: Protection, device: torch.device, seed: int) -> None:
        super().__init__("original", None, device)
        self.view = "scrambled"  # trained on the scrambled view's schedule
        self.protection = protection
        self.rng = np.random.default_rng(seed)

    def pixels(self, faces: torch.Tensor) -> torch.Tensor:
        rgb = torch.round(faces.permute(0, 2, 3, 1) * 255).clamp(0, 255).to(torch.uint8)
        protected = self.protection.protect(rgb.cpu().numpy(), self.rng)
        return torch.from_numpy(protected).to(self.device).float()


def run_name(method: Method, experiment: ExperimentConfig, baselines: BaselineConfig) -> str:
    """A run folder per method and parameters, so a changed setting never resumes a stale
    checkpoint of the same method."""
    document = {"experiment": identity(experiment.model_dump(mode="json")), "method": method}
    if method != "original":
        document["baselines"] = baselines.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:10]
    return f"{method}-{digest}"


def train_recognizer(
    method: Method,
    protection: Protection,
    key: ScramblerNetwork | None,
    experiment: ExperimentConfig,
    train_data: AlignedFaces,
    run_dir: Path,
    device: torch.device,
) -> TrainResult:
    """The accuracy protocol's training, for any method ('rllfpr' is exactly the scrambled
    view of ``rllfpr eval accuracy``; 'original', exactly its original view)."""
    if method == "original":
        return train(experiment, train_data, "original", None, run_dir)
    if method == "rllfpr":
        if key is None:
            raise ValueError("the rllfpr recognizer needs the SN key")
        return train(experiment, train_data, "scrambled", key, run_dir)
    view = ProtectedView(protection, device, experiment.seed)
    return train(experiment, train_data, "scrambled", None, run_dir, target_view=view)


@dataclass
class Split:
    train: AlignedFaces
    test: AlignedFaces


def image_method_accuracy(
    recognizer: Recognizer,
    protection: Protection,
    split: Split,
    device: torch.device,
    seed: int,
) -> ClosedSetReport:
    rng = np.random.default_rng(seed)
    gallery = embed_wire(recognizer, protection.protect(split.train.faces, rng), device, batch=256)
    probes = embed_wire(recognizer, protection.protect(split.test.faces, rng), device, batch=256)
    return closed_set(gallery, split.train.labels, probes, split.test.labels)


def projection_accuracy(eigenfaces: Eigenfaces, split: Split, seed: int) -> ClosedSetReport:
    rng = np.random.default_rng(seed)
    return closed_set(
        eigenfaces.project(split.train.faces, rng),
        split.train.labels,
        eigenfaces.project(split.test.faces, rng),
        split.test.labels,
    )


def dp_sweep(config: BaselineConfig, split: Split, seed: int) -> dict[str, dict[str, Any]]:
    """DP eigenfaces accuracy at each epsilon of the sweep, with its Laplace scale."""
    results = {}
    for epsilon in config.dp_epsilon_sweep:
        method = DpEigenfaces(config.eigen_components, epsilon, config.dp_clip_sigmas)
        method.fit(split.train.faces)
        results[f"{epsilon:g}"] = projection_accuracy(method, split, seed) | {
            "laplace_scale": method.laplace_scale,
            "mean_component_std": float(method.component_std.mean()),
        }
    return results
