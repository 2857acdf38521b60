"""The model store: per key scope and epoch, the recognizer trained for that key.

The trainer publishes a trained recognizer with its open-set calibration; recognizer hosts load
it. A host never needs the scrambler key itself: it embeds scrambled pixels as they arrive.

Layout, one immutable directory per epoch::

    {root}/{scope}/epoch-{epoch:08d}/
        model.json    StoredModel: ids, RecognizerConfig, calibration, SHA-256 of the weights
        weights.pt    the recognizer's state_dict (loaded with ``weights_only=True``)
    {root}/{scope}/epoch-{epoch:08d}.revoked   tombstone left when an epoch is revoked

``recognizer_id`` is derived from the weights and the configuration; the trainer seals it into
the key bundle header of the same epoch, so a host can check it holds the recognizer trained for
an announced key. Publishing writes a temporary sibling directory and renames it: a reader sees
a whole model or none. Re-publishing the same weights for an epoch is a no-op; different weights
for a published epoch are refused (an epoch's recognizer never changes under running hosts).
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

import torch
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.wire.messages import Epoch, TopicLevel, utc_now

STORE_FORMAT_VERSION: Final = 1
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


class ModelStoreError(ValueError):
    """A model is missing, revoked, corrupt, or would overwrite a different one."""


class OpenSetCalibration(BaseModel):
    """Operating point of open-set identification, chosen on held-out people.

    A search is a match when its best subject's score is at least ``threshold`` and beats the
    runner-up subject by at least ``min_margin``; anything else is reported as unknown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(ge=-1, le=1, description="Minimum cosine score of a match.")
    min_margin: float = Field(0.0, ge=0, le=2, description="Minimum best minus runner-up.")
    target_fpir: float | None = Field(
        None, ge=0, le=1, description="False-positive identification rate aimed for."
    )
    measured: dict[str, float] = Field(
        default_factory=dict,
        description="Rates measured on the calibration people (fpir, fnir, counts).",
    )
    protocol: str = Field("", description="How the calibration data were chosen.")


class StoredModel(BaseModel):
    """``model.json``: what a recognizer host needs besides the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = STORE_FORMAT_VERSION
    scope: TopicLevel
    epoch: Epoch
    recognizer_id: str = Field(min_length=1, max_length=128)
    recognizer: RecognizerConfig
    calibration: OpenSetCalibration
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: AwareDatetime = Field(default_factory=utc_now)
    source: str = Field("", description="Where the weights came from (run, checkpoint).")


@dataclass(frozen=True)
class LoadedModel:
    info: StoredModel
    recognizer: Recognizer  # in eval mode, on the requested device


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
    ) -> StoredModel:
        """Store ``recognizer`` as the model of (scope, epoch); returns its metadata."""
        if self.is_revoked(scope, epoch):
            raise ModelStoreError(f"epoch {epoch} of scope {scope} is revoked")
        weights = _serialize(recognizer)
        info = StoredModel(
            scope=scope,
            epoch=epoch,
            recognizer_id=recognizer_id_of(weights, recognizer.config),
            recognizer=recognizer.config,
            calibration=calibration,
            weights_sha256=hashlib.sha256(weights).hexdigest(),
            source=source,
        )
        target = self._directory(scope, epoch)
        if target.exists():
            existing = self.info(scope, epoch)
            if existing.weights_sha256 != info.weights_sha256:
                raise ModelStoreError(
                    f"{target} already holds recognizer {existing.recognizer_id}; an epoch's "
                    "recognizer is immutable (train a new epoch instead)"
                )
            return existing
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / MODEL_FILE).write_text(info.model_dump_json(indent=2) + "\n")
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:  # a concurrent publisher won the race
            shutil.rmtree(staging, ignore_errors=True)
            return self.publish(scope, epoch, recognizer, calibration, source)
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
        """The recognizer of (scope, epoch), its weights checked against ``model.json``."""
        info = self.info(scope, epoch)
        weights = (self._directory(scope, epoch) / WEIGHTS_FILE).read_bytes()
        if hashlib.sha256(weights).hexdigest() != info.weights_sha256:
            raise ModelStoreError(f"weights of scope {scope} epoch {epoch} are corrupt")
        recognizer = Recognizer(info.recognizer)
        recognizer.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        return LoadedModel(info, recognizer.to(device).eval())

    def revoke(self, scope: str, epoch: int, reason: str = "revoked") -> None:
        """Delete the epoch's weights and leave a tombstone so it is never loaded again."""
        tombstone = self._tombstone(scope, epoch)
        tombstone.parent.mkdir(parents=True, exist_ok=True)
        tombstone.write_text(f"{utc_now().isoformat()} {reason}\n")
        shutil.rmtree(self._directory(scope, epoch), ignore_errors=True)


def load_checkpoint_recognizer(checkpoint: Path) -> tuple[Recognizer, dict[str, Any]]:
    """The recognizer of a trainer checkpoint (``trainer/train.py``) and the run's config."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = RecognizerConfig.model_validate(saved["config"]["recognizer"])
    recognizer = Recognizer(config)
    recognizer.load_state_dict(saved["recognizer"])
    return recognizer.eval(), saved["config"]


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
