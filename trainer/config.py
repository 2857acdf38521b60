"""Typed experiment configuration: one YAML file per experiment, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rllfpr.models.recognizer import RecognizerConfig
from rllfpr.models.scrambler import DEPLOYED_FACE_SIZE, DEPLOYED_SN, ScramblerConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    dataset: str = Field("lfw", description="Folder under the data root (or a path).")
    alignment: Literal["mtcnn", "resize"] = Field("mtcnn", description="How faces are aligned.")
    size: int = Field(112, ge=32, le=256, description="Side of the aligned face, pixels.")
    min_images: int = Field(10, ge=2, description="Identities with at least this many images.")
    max_identities: int | None = Field(None, description="Keep the first N identities.")
    max_images: int | None = Field(None, description="Use at most N images per identity.")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="Held-out share per identity.")
    split_seed: int = Field(0, description="Seed of the per-identity split.")
    max_train_people: int | None = Field(
        None, description="View 1 only: train on the first N people of peopleDevTrain.txt."
    )
    unlabeled_faces: int = Field(
        0,
        ge=0,
        description="Closed set only: up to this many faces of the dataset's OTHER people (never "
        "a probe's person), used without labels: scrambled runs also distil on one batch of "
        "them per step, with loss.distill_weight.",
    )


class AugmentConfig(Strict):
    """Applied to the original face, before scrambling."""

    flip: bool = Field(True, description="Random horizontal flip.")
    shift: int = Field(2, ge=0, le=16, description="Random translation, up to this many pixels.")
    rotate: float = Field(0.0, ge=0, le=30, description="Random rotation, up to this many degrees.")
    scale: float = Field(
        0.0, ge=0, le=0.3, description="Random zoom by a factor in [1 - scale, 1 + scale]."
    )
    brightness: float = Field(
        0.0, ge=0, le=0.5, description="Random offset of every channel in [-b, b] (of 1.0)."
    )
    contrast: float = Field(
        0.0,
        ge=0,
        le=0.9,
        description="Random contrast factor in [1 - c, 1 + c] around each face's mean level.",
    )
    copies: int = Field(
        1,
        ge=1,
        le=8,
        description="Independent augmentations of every face in each step, each scrambled on "
        "its own (a step then holds batch_size x copies images); with loss.consistency_weight "
        "they also teach one scramble what the test-time mean of several would give.",
    )


class TTAConfig(Strict):
    """Test-time augmentation (evaluation only; training is unchanged): each face is also embedded
    slightly moved and mirrored, every copy scrambled with the same key, and its embedding is
    the normalized mean of the copies'. Both views and every gallery and probe get the same
    copies. Off by default: a deployed agent sends one scramble per face (issue 4 measures what
    more would buy; sending several is a privacy change, see docs/threat-model.md)."""

    flip: bool = Field(False, description="Add the mirrored face (doubles the copies).")
    shift: int = Field(
        0, ge=0, le=4, description="Add every integer offset up to this many pixels each way."
    )

    @property
    def views(self) -> int:
        return (2 * self.shift + 1) ** 2 * (2 if self.flip else 1)


class OptimConfig(Strict):
    optimizer: Literal["sgd", "adamw"] = Field("adamw", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (cosine schedule).")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay.")
    epochs: int = Field(30, ge=1, description="Epochs on the target faces.")
    pretrain_epochs: int = Field(
        0, ge=0, description="Epochs on original faces first (paper §4.1); scrambled runs only."
    )
    warmup_epochs: int = Field(1, ge=0, description="Linear warm-up epochs.")
    batch_size: int = Field(64, ge=2, description="Faces per batch.")
    amp: bool = Field(
        True, description="bf16 autocast of the recognizer on CUDA (the SN stays float32)."
    )


class LossConfig(Strict):
    scale: float = Field(30.0, gt=0, description="CosFace s (paper: 30).")
    margin: float = Field(0.5, ge=0, description="CosFace m (paper: 0.5).")
    distill_weight: float = Field(
        0.0,
        ge=0,
        description="Scrambled runs only: weight of 1 - cos(student(SN(x)), teacher(x)), the "
        "teacher being the run's recognizer trained on the same original faces x.",
    )
    consistency_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of 1 - cos(e_k, m), averaged over a face's augment.copies "
        "embeddings e_k, m being their normalized mean (no gradient through m): every copy is "
        "pulled toward the mean that test-time augmentation would compute. Needs copies >= 2.",
    )
    reconstruction_weight: float = Field(
        0.0,
        ge=0,
        description="Scrambled runs only: weight of an auxiliary loss that predicts the grey "
        "original face, downsampled, from the recognizer's feature map at a quarter of the "
        "input side (trainer.losses.FaceReconstruction). The head is used in training only; "
        "the recognizer itself is unchanged.",
    )


DEFAULT_SIZE = 112  # DataConfig.size's default
SN_DEFAULT_SIDE = ScramblerConfig.model_fields["input_size"].default


class ExperimentConfig(Strict):
    name: str = Field(description="Run name: checkpoints and results go to runs/<name>/.")
    protocol: Literal["closed_set", "verification_view1"] = Field(
        "closed_set",
        description="Closed-set identification on a per-person held-out split, or open-set "
        "verification on LFW View 1 (people never seen in training).",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    scrambler: ScramblerConfig = Field(
        default_factory=ScramblerConfig,
        description="SN architecture; `deployed` is the SN deployments use "
        "(`rllfpr.models.scrambler.DEPLOYED_SN`), which needs `data.size: 64`. The SN's input "
        "size always follows `data.size`.",
    )
    recognizer: RecognizerConfig = Field(default_factory=RecognizerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    tta: TTAConfig = Field(
        default_factory=TTAConfig,
        description="Test-time augmentation: when it asks for more than one copy, results add "
        "an evaluation with it beside the plain one (same models).",
    )
    key_seeds: tuple[int, int] = Field(
        (1, 2), description="SN seeds of key A (trained on) and key B (revocability check)."
    )
    seed: int = Field(0, description="Seed of initialization, shuffling and augmentation.")
    key_b_init: Literal["shared", "own"] = Field(
        "shared",
        description="How the closed-set protocol's key-B model (the next key epoch of its "
        "revocation checks) starts. 'shared': key A's seed and original-face teacher, so both "
        "models begin from the same weights. 'own': its own seed (seed + 1) and, with "
        "distillation, its own teacher trained from that seed, as two independently drawn "
        "epochs would be. It changes no other model. History: docs/results/defaults.md.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")

    @model_validator(mode="before")
    @classmethod
    def _deployed_scrambler(cls, data: Any) -> Any:
        """`scrambler: deployed` names the one definition of the deployed SN."""
        if not isinstance(data, dict) or data.get("scrambler") != "deployed":
            return data
        size = (data.get("data") or {}).get("size", DataConfig.model_fields["size"].default)
        if size != DEPLOYED_FACE_SIZE:
            raise ValueError(
                f"the deployed SN's input low-pass was chosen for {DEPLOYED_FACE_SIZE} px faces; "
                f"data.size is {size}: use it, or give the scrambler's fields"
            )
        return data | {"scrambler": DEPLOYED_SN.model_dump(mode="json")}

    @model_validator(mode="before")
    @classmethod
    def _one_input_size(cls, document: Any) -> Any:
        """``data.size`` is the side of every face of the experiment: the SN's input
        (``sn_config``) and the recognizer's. ``recognizer.input_size`` follows it when left
        out and must equal it when given. ``scrambler.input_size`` is not read: given, it must
        equal ``data.size`` or be the SN's default side, which every experiment document
        written before this rule carries."""
        if not isinstance(document, dict):
            return document
        data = document.get("data")
        size = data.size if isinstance(data, DataConfig) else DEFAULT_SIZE
        if isinstance(data, dict):
            size = data.get("size", DEFAULT_SIZE)
        allowed = {"scrambler": {size, SN_DEFAULT_SIDE}, "recognizer": {size}}
        for section, sides in allowed.items():
            part = document.get(section, {})
            if isinstance(part, (ScramblerConfig, RecognizerConfig)):
                given = part.input_size if "input_size" in part.model_fields_set else None
            else:
                given = part.get("input_size") if isinstance(part, dict) else None
            if given is not None and given not in sides:
                raise ValueError(
                    f"{section}.input_size {given} is not data.size {size}: the faces have one "
                    f"side, data.size; leave {section}.input_size out"
                )
        recognizer = document.get("recognizer", {})
        if isinstance(recognizer, RecognizerConfig):
            if "input_size" not in recognizer.model_fields_set:
                recognizer = recognizer.model_copy(update={"input_size": size})
                document = document | {"recognizer": recognizer}
        elif isinstance(recognizer, dict) and "input_size" not in recognizer:
            document = document | {"recognizer": recognizer | {"input_size": size}}
        return document

    @property
    def sn_config(self) -> ScramblerConfig:
        """The SN of this experiment: ``scrambler`` at the faces' side, ``data.size``."""
        return self.scrambler.model_copy(update={"input_size": self.data.size})

    @model_validator(mode="after")
    def _consistency_needs_copies(self) -> ExperimentConfig:
        if self.loss.consistency_weight and self.augment.copies < 2:
            raise ValueError("loss.consistency_weight compares copies: set augment.copies >= 2")
        return self

    @model_validator(mode="after")
    def _unlabeled_faces_need_a_teacher(self) -> ExperimentConfig:
        if self.data.unlabeled_faces and not self.loss.distill_weight:
            raise ValueError(
                "data.unlabeled_faces is used for distillation: set loss.distill_weight"
            )
        if self.data.unlabeled_faces and self.protocol != "closed_set":
            raise ValueError("data.unlabeled_faces is for the closed-set protocol only")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> ExperimentConfig:
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})


# Fields added after results were recorded, whose default leaves training as it was: at that
# default they are left out of an experiment's identity (run folders, cache keys), so earlier
# checkpoints and caches still match.
_ADDED_LATER = (
    ("", "key_b_init"),  # "": a top-level field
    ("augment", "copies"),
    ("loss", "consistency_weight"),
    ("loss", "reconstruction_weight"),
    ("scrambler", "input_blur"),
    ("scrambler", "pool_blur"),
)


def identity(document: dict[str, Any]) -> dict[str, Any]:
    """An experiment config's JSON document, without later fields that are at their default."""
    defaults = ExperimentConfig(name="defaults").model_dump(mode="json")
    result = {
        key: dict(value) if isinstance(value, dict) else value for key, value in document.items()
    }
    for section, field in _ADDED_LATER:
        part, default = (result, defaults) if not section else (result[section], defaults[section])
        if part.get(field) == default[field]:
            del part[field]
    return result
