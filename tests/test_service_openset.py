"""benchmarks/service_openset.py counts the running service's decisions exactly as the offline
open-set rates count them: a tiny recognizer and SN, synthetic people, a real Mosquitto and
Redis 8, epochs with and without a cohort."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from rllfpr.faces.pixels import faces_to_sn_input
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from trainer.data import AlignedFaces
from trainer.train import FaceView

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "service_openset.py"
SIDE = 32
pytestmark = pytest.mark.integration


def _people(rng: np.random.Generator, people: int, photos: int) -> AlignedFaces:
    """Faces of ``people`` people: a random face each, its photos noisy copies of it."""
    base = rng.integers(0, 256, (people, SIDE, SIDE, 3))
    labels = np.repeat(np.arange(people), photos)
    noise = rng.integers(-12, 13, (len(labels), SIDE, SIDE, 3))
    faces = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    names = [f"p{i}" for i in range(people)]
    sources = [f"p{label}/{i}.jpg" for i, label in enumerate(labels)]
    return AlignedFaces(faces, labels, names, sources)


def test_the_service_decides_as_the_offline_rates_say(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    config = ScramblerConfig(levels=2, widths=(4, 8), input_size=SIDE)
    key = ScramblerNetwork(config, 5)
    training = _people(rng, 20, 3)
    key.self_learn([faces_to_sn_input(training.faces, config.in_channels)])
    recognizer = Recognizer(RecognizerConfig(backbone="compact", input_size=SIDE, embedding_dim=16))
    student = (
        None,
        SimpleNamespace(train=training),
        recognizer.eval(),
        FaceView("scrambled", key, torch.device("cpu")),
    )
    script: dict[str, Any] = runpy.run_path(str(SCRIPT))
    run = script["run"]
    monkeypatch.setitem(run.__globals__, "view1_student", lambda *_: student)
    monkeypatch.setitem(run.__globals__, "evaluation_faces", lambda *_: _people(rng, 24, 4))
    result = run("tiny.yaml:scrambled", top_k=5, target_fpir=0.1, runs=Path("runs"))
    for kind, score_kind in (("s_norm", "s_norm"), ("raw_cosine", "cosine")):
        part = result[kind]
        assert part["events_score_kind"] == [score_kind]
        assert part["calibration"]["scores"] == score_kind
        assert part["service"]["mated_searches"] == part["offline"]["mated_searches"] > 0
        assert part["service"]["non_mated_searches"] == part["offline"]["non_mated_searches"] > 0
        for rate in ("fnir", "fpir", "misidentification"):
            assert part["service"][rate] == pytest.approx(part["offline"][rate], abs=0.05)
