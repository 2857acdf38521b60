"""Every experiment, privacy and study config in ``configs/`` validates: the commands the
result documents give for reproducing a table must not fail on a renamed or removed field."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ExperimentConfig
from trainer.studies.design import StudyConfig
from trainer.studies.privacy.config import PrivacyConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_and_privacy_configs_validate(path: Path) -> None:
    loader = PrivacyConfig if path.name.startswith("privacy-") else ExperimentConfig
    assert loader.from_yaml(path)


@pytest.mark.parametrize("path", sorted((CONFIGS / "study").glob("*.yaml")), ids=lambda p: p.name)
def test_study_configs_validate_with_every_variant(path: Path) -> None:
    study = StudyConfig.from_yaml(path)
    assert study.variants
    for variant in study.variants:  # each variant's merged overrides make a valid experiment
        study.experiment(variant, study.screen_size, "closed_set")
