"""Every experiment, privacy, rotation and study config in ``configs/`` validates: the commands
the result documents give for reproducing a table must not fail on a renamed or removed field."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ExperimentConfig
from trainer.rotation import RotationConfig
from trainer.studies.design import StudyConfig
from trainer.studies.privacy.config import PrivacyConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_privacy_and_rotation_configs_validate(path: Path) -> None:
    loader: type[ExperimentConfig | PrivacyConfig | RotationConfig] = ExperimentConfig
    if path.name.startswith("privacy-"):
        loader = PrivacyConfig
    elif path.name.startswith("rotation-"):
        loader = RotationConfig
    config = loader.from_yaml(path)  # raises on an unknown, renamed or invalid field
    # what it says survives a round trip: no field is silently dropped or coerced away
    assert loader.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("path", sorted((CONFIGS / "study").glob("*.yaml")), ids=lambda p: p.name)
def test_study_configs_validate_with_every_variant(path: Path) -> None:
    study = StudyConfig.from_yaml(path)
    assert study.variants
    for variant in study.variants:  # each variant's merged overrides make a valid experiment
        study.experiment(variant, study.screen_size, "closed_set")
