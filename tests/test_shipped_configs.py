"""Every experiment, privacy, rotation and study config in ``configs/`` (and the teacher probes'
in ``configs/teacher/``) validates: the commands the result documents give for reproducing a
table must not fail on a renamed or removed field."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ExperimentConfig
from trainer.rotation import RotationConfig
from trainer.studies.design import StudyConfig
from trainer.studies.privacy.config import PrivacyConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize(
    "path",
    sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "teacher").glob("*.yaml")),
    ids=lambda p: str(p.relative_to(CONFIGS)),
)
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


def test_the_rotation_the_demo_and_the_privacy_report_use_the_one_deployed_sn() -> None:
    """Issue 21: the demo's bundles said `input_blur: 0.0` while the privacy goals were
    measured with the deployed low-pass. Each names `scrambler: deployed` now, and the key it
    draws (what its bundles seal) is DEPLOYED_SN at 64 px; at 112 px, deployed_sn(112)."""
    import numpy as np
    from pydantic import ValidationError

    from demo.run import ROTATION
    from rllfpr.models.scrambler import DEPLOYED_FACE_SIZE, DEPLOYED_SN, deployed_sn
    from trainer.experiment import make_key

    root = CONFIGS.parent
    experiments = {
        "rotation": RotationConfig.from_yaml(root / "deploy/config/rotation.yaml").experiment,
        "demo": RotationConfig.model_validate(ROTATION).experiment,
        "privacy": PrivacyConfig.from_yaml(CONFIGS / "privacy-lfw-64.yaml").experiment,
        "privacy, GPU": PrivacyConfig.from_yaml(CONFIGS / "privacy-lfw-64-full.yaml").experiment,
    }
    faces = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    for name, experiment in experiments.items():
        assert experiment.scrambler == DEPLOYED_SN, name
        assert experiment.data.size == DEPLOYED_FACE_SIZE, name
        sealed = make_key(experiment.model_copy(update={"device": "cpu"}), 1, faces).key_state()
        architecture = sealed["architecture"]["scrambler"]
        assert architecture["input_blur"] == DEPLOYED_SN.input_blur == 1.2, name
        assert architecture["input_size"] == DEPLOYED_FACE_SIZE, name
    # at 112 px, the other side whose privacy report met every goal, the low-pass follows the
    # face: the key sealed is deployed_sn(112)
    at_112 = ExperimentConfig.model_validate(
        {"name": "x", "data": {"size": 112}, "scrambler": "deployed", "device": "cpu"}
    )
    faces = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    architecture = make_key(at_112, 1, faces).key_state()["architecture"]["scrambler"]
    assert architecture == deployed_sn(112).model_dump(mode="json")
    assert (architecture["input_size"], architecture["input_blur"]) == (112, 2.1)
    for size in (48, 96, 128):  # sides whose privacy nobody measured
        with pytest.raises(ValidationError, match="privacy is measured at 64 and 112 px faces"):
            ExperimentConfig.model_validate(
                {"name": "x", "data": {"size": size}, "scrambler": "deployed"}
            )
