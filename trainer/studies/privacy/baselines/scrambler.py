"""RLLFPR itself as a protection method: the SN key and its fixed uint8 conversion."""

from __future__ import annotations

import numpy as np
import torch

from rllfpr.faces.pixels import to_unit
from rllfpr.models.scrambler import ScramblerNetwork
from trainer.studies.privacy.baselines.base import Properties, Protection


def scramble_faces(network: ScramblerNetwork, faces: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, S, S, 3) uint8 faces -> (N, S, S) uint8 wire pixels, on the network's device."""
    cpu = torch.device("cpu")
    device = next(network.buffers()).device
    parts = [
        network.scramble(to_unit(faces[i : i + batch], cpu).to(device)).cpu().numpy()
        for i in range(0, len(faces), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(faces.shape[:3], np.uint8)


class Scrambled(Protection):
    properties = Properties(
        "RLLFPR (SN)", True, "SN weights (seed + BN statistics)", "see inversion attack", "yes"
    )

    def __init__(self, network: ScramblerNetwork) -> None:
        self.network = network

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return scramble_faces(self.network, faces)
