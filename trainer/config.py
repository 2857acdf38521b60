"""Typed experiment configuration: one YAML file per experiment, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rllfpr.models.recognizer import RecognizerConfig
from rllfpr.models.scrambler import (
    DEPLOYABLE_FACE_SIZES,
    DEPLOYED_SN,
    ScramblerConfig,
    deployed_sn,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaceFolderConfig(Strict):
    """A folder of face photos added to the training corpus: identity folders, or one flat
    folder of faces without identities."""

    dataset: str = Field(description="Folder under the data root (or a path).")
    name: str | None = Field(
        None, description="Its cache folder (default: the dataset's first path component)."
    )
    labeled: bool = Field(
        False,
        description="Identity folders whose labels also train the CosFace head; false: the "
        "faces serve the teacher's targets only (a flat folder is always unlabeled).",
    )
    pad: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Black border, as a fraction of the photo's side, added before detection "
        "(0.25 for UTKFace, whose crops the face fills).",
    )
    max_faces: int | None = Field(
        None, ge=1, description="Use at most this many of its faces (a seeded draw)."
    )

    @property
    def cache_name(self) -> str:
        return self.name or Path(self.dataset).parts[0]


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
    extra_folders: tuple[FaceFolderConfig, ...] = Field(
        (),
        description="LFW View 1 only: more training faces, labeled or not (never the test "
        "people's); unlabeled ones need the teacher (teacher.weight > 0).",
    )
    exclude_names_from: str | None = Field(
        None,
        description="A file under the data root (or a path) of people's names, one per line "
        "(spaces or underscores), whose photos are left out of training: "
        "cfp/Data/list_name.txt keeps CFP's 10-fold protocol on people never seen in training.",
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
    cosface_weight: float = Field(
        1.0, ge=0, description="Weight of CosFace on the labeled faces (0: the teacher only)."
    )
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


class TeacherConfig(Strict):
    """The pretrained face teacher (trainer.teacher, trainer only): the student regresses,
    through whichever view it is trained on, where the teacher puts the original photo."""

    weight: float = Field(
        0.0,
        ge=0,
        description="Weight of 1 - cos(student(view(x)), target(x)); 0: no teacher. Needs "
        "recognizer.embedding_dim 128 (the teacher's).",
    )
    whiten: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Targets are the teacher's unit descriptors centered on the training "
        "corpus' mean; whiten w multiplies them by C^(-w/2) (C: their covariance; 1 whitens "
        "fully) before renormalizing (trainer.targets.TargetSpace).",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Processes that describe the photos the teacher's cache lacks (MTCNN's "
        "detection and dlib's descriptor), each a share of the identities, one per 100 photos "
        "at most; 0: one per CPU core this process may run on. The descriptors do not depend "
        "on it.",
    )
    rotation_seeds: tuple[int, int] | None = Field(
        (1001, 1002),
        description="Seeds of the secret orthogonal maps Q_e of key A's and key B's targets "
        "(trainer.targets.orthogonal_map); null: no map. A key rotation draws a fresh secret.",
    )


class EvaluateConfig(Strict):
    """Evaluations added to the LFW View 1 protocol (same models)."""

    cfp: bool = Field(False, description="CFP-FF and CFP-FP, 10-fold (the CFP protocol).")
    identification: bool = Field(
        False,
        description="Closed-set rank-1 among peopleDevTest's people with >= 4 photos (half "
        "enrolled), never seen in training.",
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
        "(`rllfpr.models.scrambler.deployed_sn`: its input low-pass follows the face's side), "
        "for `data.size` 64 or 112 (`DEPLOYABLE_FACE_SIZES`). The SN's input size always "
        "follows `data.size`.",
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
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
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
        if size not in DEPLOYABLE_FACE_SIZES:
            sides = " and ".join(str(side) for side in DEPLOYABLE_FACE_SIZES)
            raise ValueError(
                f"the deployed SN's privacy is measured at {sides} px faces; data.size is "
                f"{size}: use one of them, or give the scrambler's fields"
            )
        # the input low-pass follows the face's side; `input_size` is data.size's (not read)
        blur = deployed_sn(size).input_blur
        return data | {"scrambler": DEPLOYED_SN.model_dump(mode="json") | {"input_blur": blur}}

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

    @model_validator(mode="after")
    def _teacher_fits(self) -> ExperimentConfig:
        if self.teacher.weight and self.recognizer.embedding_dim != 128:
            raise ValueError("teacher.weight needs recognizer.embedding_dim: 128 (the teacher's)")
        unlabeled = any(not folder.labeled for folder in self.data.extra_folders)
        if unlabeled and not self.teacher.weight:
            raise ValueError("unlabeled data.extra_folders need the teacher: set teacher.weight")
        view1_only = self.data.extra_folders or self.data.exclude_names_from
        if view1_only and self.protocol != "verification_view1":
            raise ValueError("data.extra_folders and exclude_names_from are for LFW View 1")
        evaluations = self.evaluate.cfp or self.evaluate.identification
        if evaluations and self.protocol != "verification_view1":
            raise ValueError("evaluate.* adds to the LFW View 1 protocol")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> ExperimentConfig:
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})


# Fields added after results were recorded, whose default leaves training as it was: at that
# default they are left out of an experiment's identity (run folders, cache keys), so earlier
# checkpoints and caches still match.
_ADDED_LATER = (
    ("", "key_b_init"),  # "": a top-level field
    ("", "teacher"),
    ("", "evaluate"),
    ("data", "extra_folders"),
    ("data", "exclude_names_from"),
    ("loss", "cosface_weight"),
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
