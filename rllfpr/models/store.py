"""The model store: per key scope and epoch, the recognizer trained for that key.

The trainer publishes a trained recognizer with its open-set calibration; recognizer hosts load
it. A host never needs the scrambler key itself: it embeds scrambled pixels as they arrive.

Layout, one immutable directory per epoch::

    {root}/{scope}/epoch-{epoch:08d}/
        model.json    StoredModel: ids, RecognizerConfig, calibration, SHA-256 of the weights
        weights.pt    the recognizer's state_dict (loaded with ``weights_only=True``)
        cohort.npy    with score normalization only: the epoch's cohort, (C, D) float32
                      (``rllfpr.scorenorm``; format 2)
    {root}/{scope}/epoch-{epoch:08d}.revoked   tombstone left when an epoch is revoked

``recognizer_id`` is derived from the weights and the configuration; the trainer seals it into
the key bundle header of the same epoch, so a host can check it holds the recognizer trained for
an announced key. Publishing writes a temporary sibling directory and renames it: a reader sees
a whole model or none. Re-publishing the same weights for an epoch is a no-op; different weights
for a published epoch are refused (an epoch's recognizer never changes under running hosts).
A model with a cohort is written as format 2, which a host of format 1 refuses to read: its
calibration is in S-norm units, which raw cosines would misread.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.scorenorm import CohortNorm
from rllfpr.wire.messages import Epoch, TopicLevel, utc_now

STORE_FORMAT_VERSION: Final = 1
NORMALIZED_FORMAT_VERSION: Final = 2  # a model with a cohort (score normalization)
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
COHORT_FILE = "cohort.npy"
ScoreKind = Literal["cosine", "s_norm"]


class ModelStoreError(ValueError):
    """A model is missing, revoked, corrupt, or would overwrite a different one."""


class OpenSetCalibration(BaseModel):
    """Operating point of open-set identification, chosen on held-out people.

    A search is a match when its best subject's score is at least ``threshold`` and beats the
    runner-up subject by at least ``min_margin``; anything else is reported as unknown. Scores,
    threshold and margin are in the unit ``scores`` names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scores: ScoreKind = Field(
        "cosine",
        description="Unit of threshold and margin: cosine (-1..1), or s_norm: cohort-normalized "
        "scores in standard deviations (rllfpr.scorenorm), which the model's cohort gives.",
    )
    threshold: float = Field(allow_inf_nan=False, description="Minimum score of a match.")
    min_margin: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Minimum best minus runner-up."
    )
    target_fpir: float | None = Field(
        None, ge=0, le=1, description="False-positive identification rate aimed for."
    )
    measured: dict[str, float] = Field(
        default_factory=dict,
        description="Rates measured on the calibration people (fpir, fnir, counts).",
    )
    protocol: str = Field("", description="How the calibration data were chosen.")

    @model_validator(mode="after")
    def _cosine_bounds(self) -> OpenSetCalibration:
        if self.scores == "cosine" and not (-1 <= self.threshold <= 1 and self.min_margin <= 2):
            raise ValueError("a cosine threshold lies in -1..1 and a cosine margin in 0..2")
        return self


class ScoreNorm(BaseModel):
    """How a model normalizes its scores (``model.json``); the cohort itself is ``cohort.npy``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int | None = Field(
        description="Each face's statistics use its top_k highest cohort cosines; null: all."
    )
    cohort_size: int = Field(ge=2, description="Rows of the cohort.")
    cohort_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of cohort.npy.")


class StoredModel(BaseModel):
    """``model.json``: what a recognizer host needs besides the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1, 2] = STORE_FORMAT_VERSION
    scope: TopicLevel
    epoch: Epoch
    recognizer_id: str = Field(min_length=1, max_length=128)
    recognizer: RecognizerConfig
    calibration: OpenSetCalibration
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: AwareDatetime = Field(default_factory=utc_now)
    source: str = Field("", description="Where the weights came from (run, checkpoint).")
    score_norm: ScoreNorm | None = Field(
        None, description="Cohort score normalization (format 2); null: raw cosine scores."
    )

    @model_validator(mode="after")
    def _consistent(self) -> StoredModel:
        normalized = self.score_norm is not None
        if normalized != (self.format_version == NORMALIZED_FORMAT_VERSION):
            raise ValueError("format 2 is exactly the format of a model with score_norm")
        if normalized != (self.calibration.scores == "s_norm"):
            raise ValueError("a model with a cohort is calibrated on s_norm scores, else cosine")
        return self


@dataclass(frozen=True)
class LoadedModel:
    info: StoredModel
    recognizer: Recognizer  # in eval mode, on the requested device
    norm: CohortNorm | None = None  # the epoch's cohort, with info.score_norm

    @property
    def scores(self) -> ScoreKind:
        return self.info.calibration.scores


def _cohort_bytes(norm: CohortNorm) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(norm.cohort, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _serialize(recognizer: Recognizer) -> bytes:
    buffer = io.BytesIO()
    state = {name: tensor.detach().cpu() for name, tensor in recognizer.state_dict().items()}
    torch.save(state, buffer)
    return buffer.getvalue()


def recognizer_id_of(weights: bytes, config: RecognizerConfig) -> str:
    """Content id of a recognizer: its configuration and its serialized weights."""
    digest = hashlib.sha256(config.model_dump_json().encode() + b"\0" + weights)
    return f"rec-{digest.hexdigest()[:16]}"


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _directory(self, scope: str, epoch: int) -> Path:
        return self.root / scope / f"epoch-{epoch:08d}"

    def _tombstone(self, scope: str, epoch: int) -> Path:
        return self.root / scope / f"epoch-{epoch:08d}.revoked"

    def publish(
        self,
        scope: str,
        epoch: int,
        recognizer: Recognizer,
        calibration: OpenSetCalibration,
        source: str = "",
        norm: CohortNorm | None = None,
    ) -> StoredModel:
        """Store ``recognizer`` as the model of (scope, epoch), with ``norm``'s cohort when its
        scores are normalized; returns its metadata."""
        if self.is_revoked(scope, epoch):
            raise ModelStoreError(f"epoch {epoch} of scope {scope} is revoked")
        weights = _serialize(recognizer)
        cohort = None if norm is None else _cohort_bytes(norm)
        score_norm = None
        if norm is not None and cohort is not None:
            if norm.dimension != recognizer.config.embedding_dim:
                raise ModelStoreError(
                    f"a {norm.dimension}-d cohort for a {recognizer.config.embedding_dim}-d "
                    "recognizer"
                )
            score_norm = ScoreNorm(
                top_k=norm.top_k,
                cohort_size=len(norm.cohort),
                cohort_sha256=hashlib.sha256(cohort).hexdigest(),
            )
        try:
            info = StoredModel(
                format_version=STORE_FORMAT_VERSION if norm is None else NORMALIZED_FORMAT_VERSION,
                scope=scope,
                epoch=epoch,
                recognizer_id=recognizer_id_of(weights, recognizer.config),
                recognizer=recognizer.config,
                calibration=calibration,
                weights_sha256=hashlib.sha256(weights).hexdigest(),
                source=source,
                score_norm=score_norm,
            )
        except ValidationError as error:
            raise ModelStoreError(f"not a consistent model: {error}") from error
        target = self._directory(scope, epoch)
        if target.exists():
            existing = self.info(scope, epoch)
            if (existing.weights_sha256, existing.score_norm) != (
                info.weights_sha256,
                info.score_norm,
            ):
                raise ModelStoreError(
                    f"{target} already holds recognizer {existing.recognizer_id}; an epoch's "
                    "recognizer and cohort are immutable (train a new epoch instead)"
                )
            return existing
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        (staging / WEIGHTS_FILE).write_bytes(weights)
        if cohort is not None:
            (staging / COHORT_FILE).write_bytes(cohort)
        (staging / MODEL_FILE).write_text(info.model_dump_json(indent=2) + "\n")
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:  # a concurrent publisher won the race
            shutil.rmtree(staging, ignore_errors=True)
            return self.publish(scope, epoch, recognizer, calibration, source, norm)
        return info

    def epochs(self, scope: str) -> list[int]:
        """Published, not revoked epochs of ``scope``, oldest first."""
        folder = self.root / scope
        if not folder.is_dir():
            return []
        found = []
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name.startswith("epoch-") and entry.name[6:].isdigit():
                epoch = int(entry.name[6:])
                if (entry / MODEL_FILE).is_file() and not self.is_revoked(scope, epoch):
                    found.append(epoch)
        return sorted(found)

    def revoked_epochs(self, scope: str) -> list[int]:
        """Epochs of ``scope`` with a revocation tombstone, oldest first."""
        folder = self.root / scope
        if not folder.is_dir():
            return []
        return sorted(
            int(entry.name[6:-8])
            for entry in folder.iterdir()
            if entry.name.startswith("epoch-")
            and entry.name.endswith(".revoked")
            and entry.name[6:-8].isdigit()
        )

    def is_revoked(self, scope: str, epoch: int) -> bool:
        return self._tombstone(scope, epoch).exists()

    def info(self, scope: str, epoch: int) -> StoredModel:
        path = self._directory(scope, epoch) / MODEL_FILE
        if self.is_revoked(scope, epoch):
            raise ModelStoreError(f"epoch {epoch} of scope {scope} is revoked")
        if not path.is_file():
            raise ModelStoreError(f"no model for scope {scope} epoch {epoch} in {self.root}")
        try:
            info = StoredModel.model_validate_json(path.read_text())
        except ValidationError as error:
            raise ModelStoreError(f"{path} is not a valid model description: {error}") from error
        if (info.scope, info.epoch) != (scope, epoch):
            raise ModelStoreError(f"{path} describes scope {info.scope} epoch {info.epoch}")
        return info

    def load(self, scope: str, epoch: int, device: torch.device | str = "cpu") -> LoadedModel:
        """The recognizer of (scope, epoch) and its cohort, checked against ``model.json``."""
        info = self.info(scope, epoch)
        weights = (self._directory(scope, epoch) / WEIGHTS_FILE).read_bytes()
        if hashlib.sha256(weights).hexdigest() != info.weights_sha256:
            raise ModelStoreError(f"weights of scope {scope} epoch {epoch} are corrupt")
        recognizer = Recognizer(info.recognizer)
        recognizer.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        norm = None
        if info.score_norm is not None:
            norm = self._load_cohort(scope, epoch, info)
        return LoadedModel(info, recognizer.to(device).eval(), norm)

    def _load_cohort(self, scope: str, epoch: int, info: StoredModel) -> CohortNorm:
        spec = info.score_norm
        assert spec is not None
        path = self._directory(scope, epoch) / COHORT_FILE
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != spec.cohort_sha256:
            raise ModelStoreError(f"cohort of scope {scope} epoch {epoch} is missing or corrupt")
        cohort = np.load(io.BytesIO(data), allow_pickle=False)
        expected = (spec.cohort_size, info.recognizer.embedding_dim)
        if cohort.shape != expected:
            raise ModelStoreError(
                f"cohort of scope {scope} epoch {epoch} is {cohort.shape}, not {expected}"
            )
        try:
            return CohortNorm(cohort, spec.top_k)
        except ValueError as error:
            raise ModelStoreError(f"cohort of scope {scope} epoch {epoch}: {error}") from error

    def revoke(self, scope: str, epoch: int, reason: str = "revoked") -> None:
        """Delete the epoch's weights and leave a tombstone so it is never loaded again."""
        tombstone = self._tombstone(scope, epoch)
        tombstone.parent.mkdir(parents=True, exist_ok=True)
        tombstone.write_text(f"{utc_now().isoformat()} {reason}\n")
        shutil.rmtree(self._directory(scope, epoch), ignore_errors=True)


def load_checkpoint_recognizer(checkpoint: Path) -> tuple[Recognizer, dict[str, Any]]:
    """The recognizer of a trainer checkpoint (``trainer/train.py``) and the run's config."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return checkpoint_recognizer(saved), saved["config"]


def checkpoint_recognizer(saved: dict[str, Any]) -> Recognizer:
    """The recognizer of a checkpoint already loaded with ``torch.load``, in eval mode."""
    recognizer = Recognizer(RecognizerConfig.model_validate(saved["config"]["recognizer"]))
    recognizer.load_state_dict(saved["recognizer"])
    return recognizer.eval()


def publish_checkpoint(
    store: ModelStore,
    scope: str,
    epoch: int,
    checkpoint: Path,
    calibration: OpenSetCalibration,
) -> StoredModel:
    """Trainer side: publish the recognizer of a finished training run for a key epoch."""
    recognizer, config = load_checkpoint_recognizer(checkpoint)
    source = f"{config.get('name', '?')}: {checkpoint}"
    return store.publish(scope, epoch, recognizer, calibration, source=source)
