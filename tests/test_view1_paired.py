"""The View 1 benchmarks (view1_paired.py, score_norm.py) compare only finished students trained
from the config named (``trainer.train.finished_student``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from trainer.config import ExperimentConfig
from trainer.train import finished_student

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "teacher" / "view1-compact-64-lfw-cosface01-aug-distill.yaml"


def _save(path: Path, config: ExperimentConfig, epoch: int) -> Recognizer:
    recognizer = Recognizer(RecognizerConfig.model_validate(config.recognizer.model_dump()))
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "recognizer": recognizer.state_dict(),
        "epoch": epoch,
        "config": config.model_dump(mode="json"),
    }
    torch.save(document, path)
    return recognizer


def test_only_a_finished_run_of_the_same_config_is_compared(tmp_path: Path) -> None:
    config = ExperimentConfig.from_yaml(CONFIG)
    checkpoint = tmp_path / config.name / "scrambled-key-a" / "checkpoint.pt"
    with pytest.raises(ValueError, match="missing"):
        finished_student(config, "scrambled", tmp_path)
    _save(checkpoint, config, config.optim.epochs - 1)
    with pytest.raises(ValueError, match="unfinished"):
        finished_student(config, "scrambled", tmp_path)
    other = config.model_copy(update={"seed": config.seed + 1})
    _save(checkpoint, other, config.optim.epochs)
    with pytest.raises(ValueError, match="different experiment"):
        finished_student(config, "scrambled", tmp_path)
    saved = _save(checkpoint, config, config.optim.epochs)
    loaded = finished_student(config, "scrambled", tmp_path)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    # the original-face run lives beside it, under its own name
    with pytest.raises(ValueError, match="original"):
        finished_student(config, "original", tmp_path)
