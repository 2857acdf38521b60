"""Instant screen of an SN key, no training: does identity survive, does the face vanish?

For a folder dataset with a per-identity held-out split it reports, for original grayscale
faces and for scrambled faces (after the fixed pixel conversion) side by side:
raw-pixel cosine nearest-neighbour rank-1 accuracy, and adjacent-pixel correlation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from rllfpr.faces.pixels import faces_to_sn_input, scramble
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from trainer import hardware
from trainer.data import AlignedFaces, Aligner, AlignMethod, list_identities, split_per_identity
from trainer.metrics import (
    adjacent_correlation,
    grayscale,
    majority_rate,
    nearest_neighbour_accuracy,
)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class ScreenSpec:
    dataset: Path
    cache: Path
    method: AlignMethod = "mtcnn"
    size: int = 112
    min_images: int = 10
    max_identities: int | None = None
    max_images: int | None = None
    test_fraction: float = 0.3
    seed: int = 0
    scrambler: ScramblerConfig = field(default_factory=ScramblerConfig)


def load_faces(spec: ScreenSpec) -> AlignedFaces:
    identities = list_identities(
        spec.dataset, spec.min_images, spec.max_images, spec.max_identities
    )
    return Aligner(spec.dataset, spec.cache, spec.size, spec.method).load(identities)


def run_screen(spec: ScreenSpec) -> tuple[dict[str, Any], np.ndarray]:
    """Returns the result document and a sample sheet (BGR image)."""
    started = time.perf_counter()
    data = load_faces(spec)
    train, test = split_per_identity(data.labels, spec.test_fraction, spec.seed)
    network = ScramblerNetwork(
        spec.scrambler.model_copy(update={"input_size": spec.size}), spec.seed
    )
    network.self_learn(
        faces_to_sn_input(data.faces[train[i : i + 64]], network.config.in_channels)
        for i in range(0, len(train), 64)
    )
    scrambled = scramble(network, data.faces, batch=64)
    original = grayscale(data.faces)
    y_train, y_test = data.labels[train], data.labels[test]
    result = {
        "dataset": spec.dataset.name,
        "alignment": f"{spec.method} {spec.size}x{spec.size}",
        "identities": len(data.names),
        "train_images": len(train),
        "test_images": len(test),
        "images_without_face": len(data.failures),
        "scrambler": network.config.model_dump(mode="json"),
        "pixel_conversion": "uint8 = clip(round(128 + 32 * (y - mean) / std), 0, 255)",
        "chance": {
            "majority_class": majority_rate(y_train, y_test),
            "uniform": 1 / len(data.names),
        },
        "nearest_neighbour_rank1": {
            "original_grayscale": nearest_neighbour_accuracy(
                original[train], y_train, original[test], y_test
            ),
            "scrambled": nearest_neighbour_accuracy(
                scrambled[train], y_train, scrambled[test], y_test
            ),
        },
        "adjacent_correlation": {
            "original_grayscale": adjacent_correlation(original[test][:200]),
            "scrambled": adjacent_correlation(scrambled[test][:200]),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "hardware": hardware.describe(),
    }
    return result, sample_sheet(data.faces[test[:8]], scrambled[test[:8]])


def sample_sheet(faces: np.ndarray, scrambled: np.ndarray) -> np.ndarray:
    """Top row: aligned faces; bottom row: what leaves the device."""
    top = np.concatenate(list(faces), axis=1)
    bottom = np.concatenate([np.repeat(s[..., None], 3, axis=2) for s in scrambled], axis=1)
    return cv2.cvtColor(np.concatenate([top, bottom], axis=0), cv2.COLOR_RGB2BGR)


def write_screen(result: dict[str, Any], sheet: np.ndarray, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "screen.json").write_text(json.dumps(result, indent=2) + "\n")
    cv2.imwrite(str(output / "samples.png"), sheet)
