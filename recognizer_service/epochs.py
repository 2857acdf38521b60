"""The recognizers of the key epochs this service accepts, several at once during a rotation.

Every published, not revoked epoch of the served scopes is loaded from the model store;
``refresh`` picks up newly published epochs and drops revoked ones (the key-rotation
protocol calls ``load``/``revoke`` directly). A face is embedded only by the recognizer of its
own (scope, epoch): a face of any other epoch is rejected, never guessed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from rllfpr.faces.pixels import embed_wire
from rllfpr.models.store import LoadedModel, ModelStore, ModelStoreError, StoredModel

log = logging.getLogger(__name__)
EpochKey = tuple[str, int]  # (scope, epoch)


class EpochModels:
    def __init__(self, store: ModelStore, scopes: Iterable[str], device: torch.device) -> None:
        self.store = store
        self.scopes = list(scopes)
        self.device = device
        self._models: dict[EpochKey, LoadedModel] = {}
        self._not_after: dict[EpochKey, float] = {}  # retirement deadlines, UNIX seconds
        self._lock = threading.Lock()

    def refresh(self) -> list[EpochKey]:
        """Load newly published epochs, unload revoked ones; returns the epochs loaded now."""
        published = {(scope, epoch) for scope in self.scopes for epoch in self.store.epochs(scope)}
        with self._lock:
            for gone in set(self._models) - published:
                log.info("unloading scope %s epoch %d: no longer published", *gone)
                del self._models[gone]
        loaded = []
        for scope, epoch in sorted(published - set(self._models)):
            try:
                self.load(scope, epoch)
                loaded.append((scope, epoch))
            except ModelStoreError as error:
                log.error("cannot load scope %s epoch %d: %s", scope, epoch, error)
        return loaded

    def load(self, scope: str, epoch: int) -> StoredModel:
        model = self.store.load(scope, epoch, self.device)
        with self._lock:
            self._models[(scope, epoch)] = model
        log.info(
            "loaded scope %s epoch %d: recognizer %s (%s, %d px, %d-d)",
            scope,
            epoch,
            model.info.recognizer_id,
            model.info.recognizer.backbone,
            model.info.recognizer.input_size,
            model.info.recognizer.embedding_dim,
        )
        return model.info

    def revoke(self, scope: str, epoch: int) -> None:
        """Stop accepting an epoch and delete its model from the store for good."""
        with self._lock:
            self._models.pop((scope, epoch), None)
        self.store.revoke(scope, epoch)

    def retire(self, scope: str, epoch: int, not_after: float) -> None:
        """A newer epoch is active: accept this one's faces until ``not_after`` (the grace
        window), none after. An earlier deadline wins (a replayed announcement cannot extend)."""
        with self._lock:
            current = self._not_after.get((scope, epoch), float("inf"))
            self._not_after[(scope, epoch)] = min(current, not_after)

    def retirement(self, scope: str, epoch: int) -> float | None:
        """The end of an epoch's grace window (UNIX seconds), if a newer one is active."""
        with self._lock:
            return self._not_after.get((scope, epoch))

    def is_retired(self, scope: str, epoch: int) -> bool:
        with self._lock:
            return time.time() > self._not_after.get((scope, epoch), float("inf"))

    def get(self, scope: str, epoch: int) -> LoadedModel | None:
        """The model of an epoch whose faces are accepted now; None when unknown, revoked or
        past its grace window."""
        if self.is_retired(scope, epoch):
            return None
        with self._lock:
            return self._models.get((scope, epoch))

    def epochs_of(self, scope: str) -> list[int]:
        with self._lock:
            return sorted(epoch for s, epoch in self._models if s == scope)

    def is_revoked(self, scope: str, epoch: int) -> bool:
        return self.store.is_revoked(scope, epoch)

    def loaded(self) -> list[StoredModel]:
        with self._lock:
            return [model.info for _, model in sorted(self._models.items())]

    def embed(self, model: LoadedModel, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """(N, S, S) wire pixels of one epoch -> (N, D) unit float32 embeddings: the service's
        (uint8 or float16 grey levels); bf16 autocast on a GPU, float32 on the CPU."""
        return embed_wire(model.recognizer, pixels, self.device, bf16_on_gpu=True)
