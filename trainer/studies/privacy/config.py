"""Typed configuration of the privacy report: one YAML file regenerates everything.

The victims' faces, the SN architecture (``experiment.scrambler``, which follows
``ScramblerConfig``'s defaults unless the file overrides them), its key seeds and the
recognizer recipe come from an embedded ``ExperimentConfig``, the same one ``rllfpr eval
accuracy`` reads, so the closed-set numbers here use the accuracy protocol unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from trainer.config import ExperimentConfig, Strict, TTAConfig

Method = Literal[
    "original",
    "rllfpr",
    "aes_ecb",
    "aes_ctr",
    "arnold",
    "eigenfaces",
    "dp_eigenfaces",
    "noise",
    "partialface",
]
ALL_METHODS: tuple[Method, ...] = (
    "original",
    "rllfpr",
    "aes_ecb",
    "aes_ctr",
    "arnold",
    "eigenfaces",
    "dp_eigenfaces",
    "noise",
    "partialface",
)


# Overrides of the experiment's SN, chosen against the deployed SN (input low-pass sigma 1.2).
SN_VARIANTS: dict[str, dict[str, Any]] = {
    "no input low-pass (the paper's SN)": {"input_blur": 0.0},
    "input low-pass sigma 2.0": {"input_blur": 2.0},
    "4 levels": {"levels": 4, "widths": [16, 32, 64, 64]},
    "3 levels": {"levels": 3, "widths": [16, 32, 64]},
    "2 convs per level": {"convs_per_level": 2},
    "widths x4": {"widths": [64, 128, 256, 256, 256]},
    "uniform kernels": {"kernel_distribution": "uniform"},
    "low-pass before every max-pool": {"pool_blur": True},
}


class BaselineConfig(Strict):
    """Parameters of the paper's comparison methods."""

    noise_sigma: float = Field(
        50.0, gt=0, description="Std of the additive Gaussian noise, grey levels."
    )
    arnold_iterations: int = Field(
        10, ge=1, description="Arnold cat map iterations (its key; taken modulo the period)."
    )
    eigen_components: int = Field(50, ge=1, description="Eigenfaces kept (PCA components).")
    dp_epsilon: float = Field(
        10.0, gt=0, description="Epsilon of the Laplace mechanism on eigenface projections."
    )
    dp_epsilon_sweep: tuple[float, ...] = Field(
        (1.0, 10.0, 100.0, 1000.0), description="Epsilons also reported for recognition."
    )
    dp_clip_sigmas: float = Field(
        3.0, gt=0, description="Each projection is clipped to +-this many of its train stds."
    )
    partialface_block: int = Field(8, ge=2, description="Side of the blockwise DCT, pixels.")
    partialface_drop_low: int = Field(
        10, ge=1, description="Lowest-frequency DCT channels (zig-zag order) removed."
    )
    partialface_keep: int = Field(
        27, ge=1, description="High-frequency channels kept, a random subset per image."
    )
    key_seed: int = Field(7, description="Seed of the AES key and the random choices.")


class MetricsConfig(Strict):
    correlation_pairs: int = Field(3000, ge=10, description="Adjacent pixel pairs per image.")
    fuzziness_blocks: tuple[int, ...] = Field(
        (4, 8), description="Block sides s of Fuzziness2 (the paper does not give s)."
    )
    max_images: int | None = Field(
        None, ge=2, description="Use at most this many test images for the image metrics."
    )
    questionnaire_choices: int = Field(4, ge=2, description="Protected faces per question.")


class InversionConfig(Strict):
    attacker_images: int = Field(
        1500, ge=8, description="(original, scrambled) pairs the attacker trains on."
    )
    attacker_people_file: str | None = Field(
        "peopleDevTrain.txt",
        description="Draw the attacker's people from this file of the dataset folder (LFW's "
        "View 1 training people, whose aligned faces are cached); else from the dataset's other "
        "identities in name order. Victims are always excluded.",
    )
    attacker_key_seed: int = Field(99, description="Seed of the attacker's own SN key.")
    widths: tuple[int, ...] = Field((32, 64, 128), description="U-Net channels per level.")
    epochs: int = Field(12, ge=1, description="Decoder training epochs.")
    batch_size: int = Field(32, ge=2, description="Decoder batch size.")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate (cosine decay).")


class LinkageConfig(Strict):
    bins: int = Field(100, ge=10, description="Histogram bins of the score densities.")
    max_non_mated: int = Field(20000, ge=100, description="Non-mated pairs drawn at most.")


class PrivacyConfig(Strict):
    name: str = Field(description="Run name: models and logs go to runs/<name>/.")
    experiment: ExperimentConfig = Field(
        description="Victims' closed-set protocol, SN architecture, key seeds (A, B) and the "
        "recognizer recipe shared by every method."
    )
    recognition: tuple[Method, ...] = Field(
        ("original", "rllfpr", "aes_ecb", "arnold", "noise", "partialface"),
        description="Image methods a recognizer is trained for (eigenfaces and DP eigenfaces "
        "are matched on their projections without training).",
    )
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    linkage: LinkageConfig = Field(default_factory=LinkageConfig)
    sn_variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(SN_VARIANTS),
        description="SN settings (ScramblerConfig overrides of the experiment's SN) whose image "
        "metrics and machine questionnaire `python -m trainer.studies.privacy.sn_variants` "
        "measures without training (the questionnaire's recognizer sees original faces only).",
    )
    copy_means: list[TTAConfig] = Field(
        default_factory=list,
        description="Several scrambles of one face (test-time augmentation): for each "
        "setting, `python -m trainer.studies.privacy.sn_variants` also measures, with the "
        "experiment's SN, the mean of a face's copies moved back (what an observer who knows "
        "the moves would average).",
    )
    seed: int = Field(0, description="Seed of question, pair and sample draws.")

    @model_validator(mode="after")
    def _needs_reference_recognizers(self) -> PrivacyConfig:
        missing = {"original", "rllfpr"} - set(self.recognition)
        if missing:
            raise ValueError(f"recognition must include {sorted(missing)} (the attacks use them)")
        projected = {"eigenfaces", "dp_eigenfaces"} & set(self.recognition)
        if projected:
            raise ValueError(f"{sorted(projected)} are matched on projections, not trained")
        if self.experiment.protocol != "closed_set":
            raise ValueError("the privacy report uses the closed_set protocol")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> PrivacyConfig:
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})
