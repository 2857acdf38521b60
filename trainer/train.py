"""The one training entry point: a recognizer on original or scrambled faces.

Pipeline per batch: aligned RGB uint8 faces -> augmentation (flip, shift) on the ORIGINAL
face -> view: ``original`` (8-bit grey) or ``scrambled`` (SN, then the fixed pixel
conversion) -> ``from_pixels`` -> recognizer -> CosFace. Both views go through the same
8-bit grey-level representation, so they are trained identically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork, from_pixels
from trainer.config import ExperimentConfig
from trainer.data import AlignedFaces
from trainer.losses import CosFace

log = logging.getLogger(__name__)
View = Literal["original", "scrambled"]
_GREY = torch.tensor([0.299, 0.587, 0.114])


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def augment(
    faces: torch.Tensor, flip: bool, shift: int, generator: torch.Generator
) -> torch.Tensor:
    """Random flip and translation of (N, 3, S, S) original faces (before any scrambling)."""
    if flip:
        flipped = torch.rand(len(faces), generator=generator) < 0.5
        faces = torch.where(flipped[:, None, None, None], faces.flip(-1), faces)
    if shift:
        size = faces.shape[-1]
        padded = functional.pad(faces, (shift,) * 4, mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (len(faces), 2), generator=generator)
        faces = torch.stack(
            [
                padded[i, :, dy : dy + size, dx : dx + size]
                for i, (dy, dx) in enumerate(offsets.tolist())
            ]
        )
    return faces


class FaceView:
    """Turns original faces into recognizer input for one view (and one key)."""

    def __init__(
        self, view: View, scrambler: ScramblerNetwork | None, device: torch.device
    ) -> None:
        if view == "scrambled" and scrambler is None:
            raise ValueError("the scrambled view needs a scrambler key")
        self.view = view
        self.scrambler = scrambler.to(device) if scrambler is not None else None
        self.device = device

    def pixels(self, faces: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float RGB in [0, 1] -> (N, 1, S, S) 8-bit grey levels (as float)."""
        with torch.no_grad():
            if self.scrambler is not None and self.view == "scrambled":
                return self.scrambler.to_pixels(self.scrambler(faces))
            grey = torch.einsum("nchw,c->nhw", faces, _GREY.to(faces.device)) * 255.0
            return torch.round(grey).clamp(0, 255).unsqueeze(1)

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        return from_pixels(self.pixels(faces))


def to_unit(faces_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(faces_uint8).to(device).permute(0, 3, 1, 2).float().div(255.0)


def batches(n: int, size: int, generator: torch.Generator | None) -> Iterator[np.ndarray]:
    order = torch.randperm(n, generator=generator).numpy() if generator else np.arange(n)
    for start in range(0, n, size):
        yield order[start : start + size]


@torch.no_grad()
def embed(
    recognizer: Recognizer, view: FaceView, faces: np.ndarray, batch: int = 128
) -> np.ndarray:
    recognizer.eval()
    out = [
        recognizer(view(to_unit(faces[idx], view.device))).cpu().numpy()
        for idx in batches(len(faces), batch, None)
    ]
    return np.concatenate(out)


@dataclass
class TrainResult:
    recognizer: Recognizer
    history: list[dict[str, float]]
    seconds: float


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _stages(config: ExperimentConfig, view: View) -> list[tuple[View, int]]:
    stages: list[tuple[View, int]] = []
    if view == "scrambled" and config.optim.pretrain_epochs:
        stages.append(("original", config.optim.pretrain_epochs))
    stages.append((view, config.optim.epochs))
    return stages


def _check_same_experiment(saved: dict[str, Any], config: ExperimentConfig, path: Path) -> None:
    """Resuming may extend the schedule (more epochs), nothing else."""

    def comparable(document: dict[str, Any]) -> dict[str, Any]:
        optim = {k: v for k, v in document["optim"].items() if k != "epochs"}
        return {**document, "optim": optim, "device": None}

    if comparable(saved) != comparable(config.model_dump(mode="json")):
        raise ValueError(f"{path} belongs to a different experiment; give this one another name")


def train(
    config: ExperimentConfig,
    data: AlignedFaces,
    view: View,
    scrambler: ScramblerNetwork | None,
    run_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume, or load a finished) recognizer for ``view`` on ``data``."""
    device = pick_device(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    recognizer = Recognizer(config.recognizer).to(device)
    head = CosFace(
        config.recognizer.embedding_dim, len(data.names), config.loss.scale, config.loss.margin
    ).to(device)
    parameters = list(recognizer.parameters()) + list(head.parameters())
    optim = config.optim
    optimizer: torch.optim.Optimizer = (
        torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
        if optim.optimizer == "adamw"
        else torch.optim.SGD(
            parameters, lr=optim.lr, momentum=0.9, weight_decay=optim.weight_decay, nesterov=True
        )
    )
    stages = _stages(config, view)
    steps_per_epoch = math.ceil(len(data) / optim.batch_size)
    checkpoint_path = run_dir / "checkpoint.pt"
    history: list[dict[str, float]] = []
    done_epochs, seconds = 0, 0.0
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        _check_same_experiment(checkpoint["config"], config, checkpoint_path)
        recognizer.load_state_dict(checkpoint["recognizer"])
        head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        done_epochs, history, seconds = (
            checkpoint["epoch"],
            checkpoint["history"],
            checkpoint["seconds"],
        )
        log.info("resumed %s at epoch %d", run_dir, done_epochs)
    epoch_index = 0
    for stage_view, epochs in stages:
        face_view = FaceView(stage_view, scrambler, device)
        total_steps = epochs * steps_per_epoch
        warmup = config.optim.warmup_epochs * steps_per_epoch
        for stage_epoch in range(epochs):
            epoch_index += 1
            if epoch_index <= done_epochs:
                continue
            started = time.perf_counter()
            recognizer.train()
            losses, correct = [], 0
            bar = tqdm(
                batches(len(data), optim.batch_size, generator),
                total=steps_per_epoch,
                desc=f"{run_dir.name} {stage_view} epoch {stage_epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
            )
            for step, index in enumerate(bar):
                if len(index) < 2:
                    continue
                lr_factor = _schedule(stage_epoch * steps_per_epoch + step, total_steps, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = optim.lr * lr_factor
                faces = augment(
                    to_unit(data.faces[index], torch.device("cpu")),
                    config.augment.flip,
                    config.augment.shift,
                    generator,
                ).to(device)
                labels = torch.from_numpy(data.labels[index]).to(device)
                embeddings = recognizer(face_view(faces))
                loss = head(embeddings, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                correct += int((head.cosine(embeddings).argmax(1) == labels).sum())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            seconds += time.perf_counter() - started
            history.append(
                {
                    "epoch": epoch_index,
                    "view": stage_view,  # type: ignore[dict-item]
                    "loss": float(np.mean(losses)),
                    "train_accuracy": correct / len(data),
                    "seconds": seconds,
                }
            )
            with (run_dir / "train_log.jsonl").open("a") as handle:
                handle.write(json.dumps(history[-1]) + "\n")
            torch.save(
                {
                    "recognizer": recognizer.state_dict(),
                    "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch_index,
                    "history": history,
                    "seconds": seconds,
                    "config": config.model_dump(mode="json"),
                },
                checkpoint_path,
            )
    recognizer.eval()
    return TrainResult(recognizer, history, seconds)
