"""``rllfpr eval accuracy``: original and scrambled faces trained identically, side by side,
plus revocability across keys and the cost of the uint8 pixel conversion."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllfpr.models.scrambler import ScramblerNetwork
from trainer.config import ExperimentConfig
from trainer.data import AlignedFaces, Aligner, list_identities, save_split, split_per_identity
from trainer.evaluate import closed_set
from trainer.train import FaceView, embed, pick_device, to_unit, train

log = logging.getLogger(__name__)


def load_dataset(config: ExperimentConfig, data_root: Path, cache: Path) -> AlignedFaces:
    spec = config.data
    root = Path(spec.dataset) if Path(spec.dataset).is_dir() else data_root / spec.dataset
    identities = list_identities(root, spec.min_images, spec.max_images)
    if spec.max_identities:
        identities = dict(list(identities.items())[: spec.max_identities])
    return Aligner(root, cache, spec.size, spec.alignment).load(identities)


def make_key(config: ExperimentConfig, seed: int, train_faces: np.ndarray) -> ScramblerNetwork:
    """Draw an SN key and self-learn its BN statistics on the training faces only."""
    scrambler = config.scrambler.model_copy(update={"input_size": config.data.size})
    network = ScramblerNetwork(scrambler, seed)
    cpu = torch.device("cpu")
    network.self_learn(
        to_unit(train_faces[i : i + 64], cpu) for i in range(0, len(train_faces), 64)
    )
    return network


class _FloatView(FaceView):
    """The scrambled view without the uint8 quantization (float32 standardized output)."""

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        assert self.scrambler is not None
        with torch.no_grad():
            output = self.scrambler(faces)
            return (output - self.scrambler.output_mean) / self.scrambler.output_std


def run_accuracy(
    config: ExperimentConfig, data_root: Path, cache: Path, runs: Path
) -> dict[str, Any]:
    run_dir = runs / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    data = load_dataset(config, data_root, cache)
    train_index, test_index = split_per_identity(
        data.labels, config.data.test_fraction, config.data.split_seed
    )
    save_split(run_dir / "split.json", data.sources, train_index, test_index)
    train_data, test_data = data.subset(train_index), data.subset(test_index)
    device = pick_device(config.device)
    key_a, key_b = (make_key(config, seed, train_data.faces) for seed in config.key_seeds)

    models = {
        "original": train(config, train_data, "original", None, run_dir / "original"),
        "scrambled": train(config, train_data, "scrambled", key_a, run_dir / "scrambled-key-a"),
        "scrambled_key_b": train(
            config, train_data, "scrambled", key_b, run_dir / "scrambled-key-b"
        ),
    }
    views = {
        "original": FaceView("original", None, device),
        "a": FaceView("scrambled", key_a, device),
        "b": FaceView("scrambled", key_b, device),
    }

    def evaluate(model: str, gallery_view: FaceView, probe_view: FaceView) -> dict[str, Any]:
        recognizer = models[model].recognizer
        gallery = embed(recognizer, gallery_view, train_data.faces)
        probes = embed(recognizer, probe_view, test_data.faces)
        return closed_set(gallery, train_data.labels, probes, test_data.labels)

    float_a = _FloatView("scrambled", key_a, device)
    result: dict[str, Any] = {
        "protocol": (
            f"closed-set identification, {config.data.dataset}: {len(data.names)} people with >= "
            f"{config.data.min_images} images, {config.data.test_fraction:.0%} of each person's "
            f"images held out (split seed {config.data.split_seed}); "
            "rank-1 by nearest class-mean template"
        ),
        "closed_set": {
            "original": evaluate("original", views["original"], views["original"]),
            "scrambled": evaluate("scrambled", views["a"], views["a"]),
            "scrambled_float32_input": evaluate("scrambled", float_a, float_a),
            "cross_key": {
                "key_a_recognizer_and_gallery_key_b_probes": evaluate(
                    "scrambled", views["a"], views["b"]
                ),
                "key_b_recognizer_stolen_key_a_gallery": evaluate(
                    "scrambled_key_b", views["a"], views["b"]
                ),
            },
        },
        "training": {
            name: {"seconds": round(model.seconds, 1), "final": model.history[-1]}
            for name, model in models.items()
        },
        "images": {
            "train": len(train_data),
            "test": len(test_data),
            "without_face": len(data.failures),
        },
        "hardware": _hardware(device),
        "config": config.model_dump(mode="json"),
    }
    (run_dir / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    )
