"""Additive Gaussian noise on the grey face (the paper's 'noise' row, a recognizable
reference)."""

from __future__ import annotations

import numpy as np

from trainer.studies.privacy.baselines.base import Properties, Protection, grey_pixels


class AdditiveNoise(Protection):
    properties = Properties("additive Gaussian noise", True, "none", "partly (denoising)", "no")

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grey = grey_pixels(faces).astype(np.float64)
        noisy = grey + rng.normal(0.0, self.sigma, grey.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
