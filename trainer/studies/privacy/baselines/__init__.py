"""The paper's comparison methods, one short module each, built from ``BaselineConfig``."""

from __future__ import annotations

import numpy as np

from rllfpr.models.scrambler import ScramblerNetwork
from trainer.studies.privacy.baselines.aes import AesCtr, AesEcb
from trainer.studies.privacy.baselines.arnold import Arnold
from trainer.studies.privacy.baselines.base import Original, Protection
from trainer.studies.privacy.baselines.eigenfaces import DpEigenfaces, Eigenfaces
from trainer.studies.privacy.baselines.noise import AdditiveNoise
from trainer.studies.privacy.baselines.partialface import PartialFace
from trainer.studies.privacy.baselines.scrambler import Scrambled
from trainer.studies.privacy.config import BaselineConfig, Method


def build(
    methods: tuple[Method, ...],
    config: BaselineConfig,
    key_a: ScramblerNetwork,
    train_faces: np.ndarray,
) -> dict[Method, Protection]:
    """Every requested method, fitted on the training faces only."""
    aes_key = np.random.default_rng(config.key_seed).bytes(32)
    makers = {
        "original": Original,
        "rllfpr": lambda: Scrambled(key_a),
        "aes_ecb": lambda: AesEcb(aes_key),
        "aes_ctr": lambda: AesCtr(aes_key),
        "arnold": lambda: Arnold(config.arnold_iterations),
        "eigenfaces": lambda: Eigenfaces(config.eigen_components),
        "dp_eigenfaces": lambda: DpEigenfaces(
            config.eigen_components, config.dp_epsilon, config.dp_clip_sigmas
        ),
        "noise": lambda: AdditiveNoise(config.noise_sigma),
        "partialface": lambda: PartialFace(
            config.partialface_block,
            config.partialface_drop_low,
            config.partialface_keep,
            config.key_seed,
        ),
    }
    built: dict[Method, Protection] = {}
    for method in methods:
        protection: Protection = makers[method]()
        protection.fit(train_faces)
        built[method] = protection
    return built


__all__ = ["Protection", "build"]
