"""RLLFPR itself as a protection method: the SN key and its fixed uint8 conversion."""

from __future__ import annotations

import numpy as np

from rllfpr.faces import pixels
from rllfpr.models.scrambler import ScramblerNetwork
from trainer.studies.privacy.baselines.base import Properties, Protection


class Scrambled(Protection):
    properties = Properties(
        "RLLFPR (SN)", True, "SN weights (seed + BN statistics)", "see inversion attack", "yes"
    )

    def __init__(self, network: ScramblerNetwork) -> None:
        self.network = network

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return pixels.scramble(self.network, faces, batch=256)
