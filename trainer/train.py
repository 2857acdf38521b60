"""The one training entry point: a recognizer on original or scrambled faces.

Pipeline per batch: aligned RGB uint8 faces -> augmentation (flip, shift; ``augment.copies``
independent copies of each face) on the ORIGINAL face -> view: ``original`` (8-bit grey) or
``scrambled`` (SN, then the fixed pixel conversion) -> ``from_pixels`` -> recognizer -> CosFace.
Both views go through the same 8-bit grey-level representation, so they are trained
identically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from rllfpr.faces.pixels import grey, pick_device, recognizer_input, sn_input, to_unit
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.models.store import checkpoint_recognizer
from trainer.config import AugmentConfig, ExperimentConfig, TTAConfig
from trainer.data import AlignedFaces
from trainer.losses import CosFace, FaceReconstruction, copy_consistency, target_cosine
from trainer.progress import progress as progress_of
from trainer.targets import rotated

log = logging.getLogger(__name__)
View = Literal["original", "scrambled"]
# Seconds between checkpoints: with its AdamW state a ResNet-18 (full-resolution stem, flatten
# head) checkpoint is 0.31 GiB at 64 px and 0.70 GiB at 112 px, while a GPU epoch of the design
# study takes about a second; the last epoch is always written.
CHECKPOINT_INTERVAL_S = 60.0


def augment(faces: torch.Tensor, spec: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flip, brightness and contrast, small rotation and scaling, and integer shift of
    (N, 3, S, S) ORIGINAL faces in [0, 1] (before any scrambling), on the faces' device; random
    numbers come from the CPU ``generator`` so a run is reproducible on any device."""
    count, size, device = len(faces), faces.shape[-1], faces.device
    if spec.brightness or spec.contrast:
        offset = (torch.rand(count, generator=generator) * 2 - 1) * spec.brightness
        factor = 1 + (torch.rand(count, generator=generator) * 2 - 1) * spec.contrast
        offset, factor = (
            offset.to(device)[:, None, None, None],
            factor.to(device)[:, None, None, None],
        )
        mean = faces.mean(dim=(1, 2, 3), keepdim=True)
        faces = ((faces - mean) * factor + mean + offset).clamp(0, 1)
    if spec.flip:
        flipped = (torch.rand(count, generator=generator) < 0.5).to(device)
        faces = torch.where(flipped[:, None, None, None], faces.flip(-1), faces)
    if spec.rotate or spec.scale:
        angle = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(spec.rotate)
        zoom = 1 + (torch.rand(count, generator=generator) * 2 - 1) * spec.scale
        cos, sin, zero = torch.cos(angle) / zoom, torch.sin(angle) / zoom, torch.zeros(count)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        grid = functional.affine_grid(theta.to(device), list(faces.shape), align_corners=False)
        faces = functional.grid_sample(faces, grid, padding_mode="border", align_corners=False)
    if spec.shift:
        padded = functional.pad(faces, (spec.shift,) * 4, mode="replicate")
        offsets = torch.randint(0, 2 * spec.shift + 1, (count, 2), generator=generator).to(device)
        span = torch.arange(size, device=device)
        rows, cols = offsets[:, :1] + span, offsets[:, 1:] + span  # (N, S) each
        batch = torch.arange(count, device=device)[:, None, None]
        faces = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
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
        """(N, 3, S, S) float RGB in [0, 1] -> (N, S, S) 8-bit grey levels (as float): the
        SN's wire pixels, or the original face's luma."""
        with torch.no_grad():
            if self.scrambler is not None and self.view == "scrambled":
                sn = self.scrambler
                return sn.to_pixels(sn(sn_input(faces, sn.config.in_channels)))[:, 0]
            return torch.round(grey(faces) * 255.0).clamp(0, 255)

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        return recognizer_input(self.pixels(faces))


def batches(n: int, size: int, generator: torch.Generator | None) -> Iterator[np.ndarray]:
    order = torch.randperm(n, generator=generator).numpy() if generator else np.arange(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def moved(faces: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """(N, C, S, S) faces translated by whole pixels, edges replicated (augment's shift)."""
    reach = max(abs(down), abs(right))
    if not reach:
        return faces
    size = faces.shape[-1]
    padded = functional.pad(faces, (reach,) * 4, mode="replicate")
    top, left = reach - down, reach - right
    return padded[..., top : top + size, left : left + size]


def tta_moves(spec: TTAConfig) -> Iterator[tuple[bool, int, int]]:
    """(mirrored, down, right) of each copy ``spec`` asks for, in order; mirroring comes first."""
    offsets = range(-spec.shift, spec.shift + 1)
    for mirrored in (False, True) if spec.flip else (False,):
        for down in offsets:
            for right in offsets:
                yield mirrored, down, right


def tta_copies(faces: torch.Tensor, spec: TTAConfig) -> Iterator[torch.Tensor]:
    """The copies of (N, C, S, S) original faces that ``spec`` asks for."""
    for mirrored, down, right in tta_moves(spec):
        yield moved(faces.flip(-1) if mirrored else faces, down, right)


@torch.no_grad()
def embed(
    recognizer: Recognizer,
    view: FaceView,
    faces: np.ndarray,
    batch: int = 128,
    tta: TTAConfig | None = None,
) -> np.ndarray:
    """L2-normalized embeddings of aligned uint8 faces seen through ``view``; with
    ``tta``, the normalized mean over its copies (each scrambled on its own)."""
    recognizer.eval()
    spec = tta or TTAConfig()
    out = []
    for idx in batches(len(faces), batch, None):
        copies = tta_copies(to_unit(faces[idx], view.device), spec)
        total = torch.stack([recognizer(view(copy)) for copy in copies]).sum(dim=0)
        out.append(functional.normalize(total, dim=1).cpu().numpy())
    return np.concatenate(out)


@dataclass
class TrainResult:
    recognizer: Recognizer
    history: list[dict[str, Any]]
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


def total_epochs(config: ExperimentConfig, view: View) -> int:
    """Epochs a finished ``view`` model of ``config`` has trained, pretraining included."""
    return sum(epochs for _, epochs in _stages(config, view))


# What an original-face model does not depend on: it may be shared by experiments that
# differ only in these (the design study trains one per recipe, not one per SN variant).
_SCRAMBLED_ONLY = {"name": None, "scrambler": None, "key_seeds": None}
_SCRAMBLED_LOSSES = ("distill_weight", "reconstruction_weight")


def comparable_config(document: dict[str, Any], view: View) -> dict[str, Any]:
    """The part of an experiment's config that a model of ``view`` depends on; epochs are
    left out (resuming may extend the schedule)."""
    optim = {k: v for k, v in document["optim"].items() if k not in ("epochs", "amp")}
    # name labels the run; key_b_init only picks the key-B model's seed, which it records
    result = {**document, "optim": optim, "device": None, "tta": None, "name": None}
    result.pop("key_b_init", None)
    # how many processes described the photos changes no target
    teacher = {k: v for k, v in document.get("teacher", {}).items() if k != "workers"}
    result["teacher"] = teacher
    if view == "original":
        optim.pop("pretrain_epochs", None)
        loss = {k: v for k, v in document["loss"].items() if k not in _SCRAMBLED_LOSSES}
        data = {k: v for k, v in document["data"].items() if k != "unlabeled_faces"}
        result |= _SCRAMBLED_ONLY | {"loss": loss, "data": data}
    return result


def check_same_experiment(
    saved: dict[str, Any], config: ExperimentConfig, view: View, path: Path
) -> None:
    """Resuming may extend the schedule (more epochs), nothing else."""
    current = config.model_dump(mode="json")
    saved = ExperimentConfig.model_validate(saved).model_dump(mode="json")  # fills new defaults
    if comparable_config(saved, view) != comparable_config(current, view):
        raise ValueError(f"{path} belongs to a different experiment; give this one another name")


def finished_student(config: ExperimentConfig, view: View, runs: Path) -> Recognizer:
    """The trained recognizer of ``config``'s ``view`` run under ``runs`` (as ``train`` leaves
    it: ``<name>/<original | scrambled-key-a>/checkpoint.pt``); ValueError if it is missing,
    unfinished, or of another experiment (the check resuming makes)."""
    checkpoint = runs / config.name / ("original" if view == "original" else "scrambled-key-a")
    checkpoint = checkpoint / "checkpoint.pt"
    if not checkpoint.exists():
        raise ValueError(f"{checkpoint} is missing: train {config.name} first")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    check_same_experiment(saved["config"], config, view, checkpoint)
    if saved["epoch"] != total_epochs(config, view):
        raise ValueError(
            f"{checkpoint} has {saved['epoch']} of {total_epochs(config, view)} epochs: unfinished"
        )
    return checkpoint_recognizer(saved)  # the checkpoint is read once


def reconstruction_tap(recognizer: Recognizer) -> tuple[nn.Module, int]:
    """The trunk stage whose output the reconstruction head reads, and its channels: the last
    stage with a feature map at least a quarter of the input's side (compact: the first
    stride-4 block; ResNet: layer3 and DenseNet: denseblock3 at the full-resolution stem)."""
    stages = list(recognizer.trunk.children())
    if isinstance(stages[0], nn.Sequential):  # DenseNet: (features, ReLU)
        stages = list(stages[0].children()) + stages[1:]
    side = recognizer.config.input_size
    x = torch.zeros(1, 1, side, side, device=next(recognizer.parameters()).device)
    was_training = recognizer.training
    recognizer.eval()
    found: tuple[nn.Module, int] | None = None
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
            if x.shape[-1] * 4 >= side:
                found = stage, x.shape[1]
    recognizer.train(was_training)
    if found is None:
        raise ValueError(f"no feature map of side >= {side // 4} in the trunk")
    return found


@contextmanager
def outputs_of(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects what ``module`` returns while the block runs (in call order)."""
    outputs: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        hook.remove()


def mirrors_suffice(config: ExperimentConfig) -> bool:
    """Whether a mirror flip is the only change augmentation makes and no loss needs the
    original faces: a face then has at most two scrambles, computed once (``MirroredScrambles``)."""
    spec, loss = config.augment, config.loss
    moved = spec.shift or spec.rotate or spec.scale or spec.brightness or spec.contrast
    needs_faces = loss.distill_weight or loss.reconstruction_weight or config.data.unlabeled_faces
    return not moved and spec.copies == 1 and not needs_faces


class MirroredScrambles:
    """The wire pixels of every training face and of its mirror image, scrambled once per run.
    The SN costs about half a compact recognizer's training step at 64 px on a CPU, and flip is
    the only augmentation, so every epoch after the first reuses these. Batches draw the same
    random flips ``augment`` would, so the run's randomness is unchanged."""

    def __init__(self, data: AlignedFaces, view: FaceView, batch: int = 256) -> None:
        plain, mirrored = [], []
        for start in range(0, len(data), batch):
            faces = to_unit(data.faces[start : start + batch], view.device)
            plain.append(view.pixels(faces).to(torch.uint8))
            mirrored.append(view.pixels(faces.flip(-1)).to(torch.uint8))
        self.plain, self.mirrored = torch.cat(plain), torch.cat(mirrored)

    def inputs(self, index: np.ndarray, flip: bool, generator: torch.Generator) -> torch.Tensor:
        """Recognizer input of the faces ``index``, each mirrored with probability 1/2."""
        rows = torch.from_numpy(index)
        if not flip:
            return recognizer_input(self.plain[rows])
        flipped = (torch.rand(len(index), generator=generator) < 0.5).to(self.plain.device)
        return recognizer_input(
            torch.where(flipped[:, None, None], self.mirrored[rows], self.plain[rows])
        )


class _Run:
    """The mutable state of one training run: model, loss head, optimizer, RNG, history."""

    def __init__(
        self,
        config: ExperimentConfig,
        view: View,
        classes: int,
        run_dir: Path,
        teacher: Recognizer | None = None,
        initial: Recognizer | None = None,
        rotation_seed: int | None = None,
    ) -> None:
        self.config, self.view = config, view
        seeds = config.teacher.rotation_seeds
        self.rotation_seed = rotation_seed if rotation_seed is not None or not seeds else seeds[0]
        self.teacher = teacher.eval() if teacher is not None else None
        self.device = pick_device(config.device)
        self.run_dir = run_dir
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.recognizer = Recognizer(config.recognizer).to(self.device)
        if initial is not None:  # fine-tuning (a key rotation starts from the previous epoch)
            self.recognizer.load_state_dict(initial.state_dict())
        loss = config.loss
        self.head = CosFace(
            config.recognizer.embedding_dim, max(classes, 1), loss.scale, loss.margin
        )
        self.head.to(self.device)
        parameters = list(self.recognizer.parameters()) + list(self.head.parameters())
        self.reconstruction: FaceReconstruction | None = None
        if loss.reconstruction_weight and view == "scrambled":
            self.tap, channels = reconstruction_tap(self.recognizer)
            self.reconstruction = FaceReconstruction(channels).to(self.device)
            parameters += list(self.reconstruction.parameters())
        optim = config.optim
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
            if optim.optimizer == "adamw"
            else torch.optim.SGD(
                parameters,
                lr=optim.lr,
                momentum=0.9,
                weight_decay=optim.weight_decay,
                nesterov=True,
            )
        )
        self.mirrors: MirroredScrambles | None = None
        self.history: list[dict[str, Any]] = []
        self.epochs_done, self.seconds = 0, 0.0
        self.saved_at = time.monotonic()

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def resume(self) -> None:
        if not self.checkpoint_path.exists():
            return
        checkpoint = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        check_same_experiment(checkpoint["config"], self.config, self.view, self.checkpoint_path)
        if checkpoint.get("rotation_seed") != self.rotation_seed:
            raise ValueError(f"{self.checkpoint_path} regressed targets of another Q_e seed")
        self.recognizer.load_state_dict(checkpoint["recognizer"])
        self.head.load_state_dict(checkpoint["head"])
        if self.reconstruction is not None:
            self.reconstruction.load_state_dict(checkpoint["reconstruction"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.generator.set_state(checkpoint["generator"].cpu())  # map_location moved it
        self.epochs_done, self.history = checkpoint["epoch"], checkpoint["history"]
        self.seconds = checkpoint["seconds"]
        # epochs logged after the last checkpoint are trained again: the log keeps what was kept
        lines = [json.dumps(entry) + "\n" for entry in self.history]
        (self.run_dir / "train_log.jsonl").write_text("".join(lines))
        log.info("resumed %s at epoch %d", self.run_dir, self.epochs_done)

    def epoch(
        self,
        data: AlignedFaces,
        view: FaceView,
        epoch: int,
        epochs: int,
        bar: bool,
        unlabeled: AlignedFaces | None = None,
        last: bool = True,
    ) -> None:
        """Train one epoch (``epoch`` counts from 0 within its stage of ``epochs`` epochs);
        ``last``: the run's final epoch, always checkpointed."""
        optim, started = self.config.optim, time.perf_counter()
        steps = math.ceil(len(data) / optim.batch_size)
        self.recognizer.train()
        losses, correct = [], 0
        progress = progress_of(
            batches(len(data), optim.batch_size, self.generator),
            total=steps,
            desc=f"{self.run_dir.name} {view.view} epoch {epoch + 1}/{epochs}",
            disable=not bar,
            leave=False,
            terminal_only=True,  # a log gets one line per few epochs from train()
        )
        for step, index in enumerate(progress):
            if len(index) < 2:
                continue  # BatchNorm needs two samples
            factor = _schedule(epoch * steps + step, epochs * steps, optim.warmup_epochs * steps)
            for group in self.optimizer.param_groups:
                group["lr"] = optim.lr * factor
            copies = self.config.augment.copies
            labels = torch.from_numpy(data.labels[index]).to(self.device).repeat(copies)
            targets = self._targets(data, index, copies)
            faces: torch.Tensor | None = None
            if self.mirrors is not None and view.view == "scrambled":
                inputs = self.mirrors.inputs(index, self.config.augment.flip, self.generator)
            else:
                original = to_unit(data.faces[index], self.device).repeat(copies, 1, 1, 1)
                faces = augment(original, self.config.augment, self.generator)
                inputs = view(faces)  # outside autocast: the SN's output must be exact
            with self._autocast(), self._features() as features:
                embeddings = self.recognizer(inputs).float()
                loss = self._cosface(embeddings, labels) + self._teacher(embeddings, targets)
                loss = loss + self._distillation(faces, embeddings, view)
                loss = loss + self._reconstruction(faces, features, view)
                loss = loss + self._consistency(embeddings)
                if unlabeled is not None and view.view == "scrambled":
                    loss = loss + self._unlabeled_distillation(unlabeled, len(index), view)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            correct += int((self.head.cosine(embeddings).argmax(1) == labels).sum())
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
        self.seconds += time.perf_counter() - started
        self.epochs_done += 1
        accuracy = correct / max(1, int((data.labels >= 0).sum()) * copies)
        self._record(view.view, float(np.mean(losses)), accuracy, last)

    def _targets(self, data: AlignedFaces, index: np.ndarray, copies: int) -> torch.Tensor | None:
        if not self.config.teacher.weight:
            return None
        if data.targets is None:
            raise ValueError("teacher.weight needs the faces' teacher targets (data.targets)")
        targets = rotated(data.targets[index], self.rotation_seed)  # Q_e of this model
        return torch.from_numpy(targets).to(self.device).repeat(copies, 1)

    def _cosface(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CosFace on the labeled faces of the batch (unlabeled ones are -1)."""
        labeled = labels >= 0
        weight = self.config.loss.cosface_weight
        if not weight or not labeled.any():
            return embeddings.new_zeros(())
        return weight * self.head(embeddings[labeled], labels[labeled])

    def _teacher(self, embeddings: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            return embeddings.new_zeros(())
        return self.config.teacher.weight * target_cosine(embeddings, targets)

    def _autocast(self) -> torch.autocast:
        enabled = self.config.optim.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @contextmanager
    def _features(self) -> Iterator[list[torch.Tensor]]:
        """The tapped feature maps of the forward passes inside the block (none without the
        reconstruction head)."""
        if self.reconstruction is None:
            yield []
            return
        with outputs_of(self.tap) as outputs:
            yield outputs

    def _reconstruction(
        self, faces: torch.Tensor | None, features: list[torch.Tensor], view: FaceView
    ) -> torch.Tensor:
        if self.reconstruction is None or view.view != "scrambled":
            return torch.zeros((), device=self.device)
        assert faces is not None  # mirrored scrambles are used only without this loss
        grey = FaceView("original", None, self.device)(faces)
        # the main forward's map (the unlabeled-face pass runs later)
        weight = self.config.loss.reconstruction_weight
        return weight * self.reconstruction(features[-1], grey)

    def _consistency(self, embeddings: torch.Tensor) -> torch.Tensor:
        weight = self.config.loss.consistency_weight
        if not weight:
            return embeddings.new_zeros(())
        return weight * copy_consistency(embeddings, self.config.augment.copies)

    def _distillation(
        self, faces: torch.Tensor | None, embeddings: torch.Tensor, view: FaceView
    ) -> torch.Tensor:
        weight = self.config.loss.distill_weight
        if self.teacher is None or not weight or view.view != "scrambled":
            return embeddings.new_zeros(())
        assert faces is not None  # mirrored scrambles are used only without this loss
        with torch.no_grad():
            target = self.teacher(FaceView("original", None, self.device)(faces)).float()
        similarity = functional.cosine_similarity(embeddings, target, dim=1)
        return weight * (1 - similarity).mean()

    def _unlabeled_distillation(
        self, unlabeled: AlignedFaces, count: int, view: FaceView
    ) -> torch.Tensor:
        """The distillation term on a random batch of other people's faces (no labels)."""
        pick = torch.randint(0, len(unlabeled), (count,), generator=self.generator).numpy()
        faces = augment(
            to_unit(unlabeled.faces[pick], self.device), self.config.augment, self.generator
        )
        embeddings = self.recognizer(view(faces)).float()
        return self._distillation(faces, embeddings, view)

    def _record(self, view: View, loss: float, train_accuracy: float, last: bool) -> None:
        entry = {"epoch": self.epochs_done, "view": view, "loss": loss}
        entry |= {"train_accuracy": train_accuracy, "seconds": self.seconds}
        self.history.append(entry)
        with (self.run_dir / "train_log.jsonl").open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if last or time.monotonic() - self.saved_at >= CHECKPOINT_INTERVAL_S:
            self._save()

    def _save(self) -> None:
        checkpoint = {
            "recognizer": self.recognizer.state_dict(),
            "head": self.head.state_dict(),
            "reconstruction": (
                self.reconstruction.state_dict() if self.reconstruction is not None else None
            ),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epochs_done,
            "history": self.history,
            "seconds": self.seconds,
            "config": self.config.model_dump(mode="json"),
            "rotation_seed": self.rotation_seed,
        }
        torch.save(checkpoint, self.checkpoint_path)
        self.saved_at = time.monotonic()


def train(
    config: ExperimentConfig,
    data: AlignedFaces,
    view: View,
    scrambler: ScramblerNetwork | None,
    run_dir: Path,
    progress: bool = True,
    target_view: FaceView | None = None,
    teacher: Recognizer | None = None,
    initial: Recognizer | None = None,
    unlabeled: AlignedFaces | None = None,
    rotation_seed: int | None = None,
) -> TrainResult:
    """Train (or resume, or load a finished) recognizer for ``view`` on ``data``.
    ``target_view`` replaces the scrambled view (a privacy baseline's protected faces, trained
    on the scrambled schedule); pretraining stages still see original faces. ``teacher`` (a
    recognizer of original faces) is used when ``loss.distill_weight`` > 0; ``initial`` gives the
    starting weights (fine-tuning) unless a checkpoint is resumed. ``unlabeled`` faces (other
    people's, ``data.unlabeled_faces``) add the distillation term on scrambled stages. With
    ``teacher.weight``, ``data.targets`` are regressed, turned by ``Q_e`` of ``rotation_seed``
    (a secret of the model's key epoch; default: ``teacher.rotation_seeds[0]``, key A's)."""
    if config.loss.distill_weight and view == "scrambled" and teacher is None:
        raise ValueError("loss.distill_weight needs the original-face recognizer as teacher")
    if view == "scrambled" and bool(config.data.unlabeled_faces) != (unlabeled is not None):
        raise ValueError("data.unlabeled_faces and the unlabeled faces given must go together")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(config, view, len(data.names), run_dir, teacher, initial, rotation_seed)
    run.resume()
    epoch_index, total = 0, total_epochs(config, view)
    overall = progress_of(
        total=total,
        initial=run.epochs_done,
        desc=f"train {run_dir.name} ({view} faces, {len(data)} of them), epochs",
        disable=not progress,
    )
    for stage_view, epochs in _stages(config, view):
        face_view = (
            target_view
            if target_view is not None and stage_view == "scrambled"
            else FaceView(stage_view, scrambler, run.device)
        )
        run.mirrors = None
        cacheable = stage_view == "scrambled" and target_view is None and mirrors_suffice(config)
        for stage_epoch in range(epochs):
            epoch_index += 1
            if epoch_index > run.epochs_done:
                if cacheable and run.mirrors is None and epochs - stage_epoch > 1:
                    run.mirrors = MirroredScrambles(data, face_view)
                last = epoch_index == total
                run.epoch(data, face_view, stage_epoch, epochs, progress, unlabeled, last)
                overall.update(1)
    overall.close()
    run.recognizer.eval()
    return TrainResult(run.recognizer, run.history, run.seconds)
