"""The Keys page's table: every key epoch this recognizer knows, with its state.

Sources, all local to the recognizer (rotation itself stays a trainer operation):
the model store (published and revoked epochs, the recognizer of each), the loaded models and
their grace-window deadlines, and the signed announcements and revocations the key watch
verified. An epoch's state, first match wins:

- ``revoked``: a tombstone in the model store, or a verified revocation;
- ``retired``: a newer epoch is active and the grace window has passed;
- ``retiring``: a newer epoch is active, faces of this one are accepted until ``until``;
- ``active`` / ``staged``: the latest verified announcement says so;
- ``published``: a model is in the store, no announcement was seen (no trusted signer set, or
  the trainer has not announced it yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from recognizer_service.epochs import EpochModels
from recognizer_service.keywatch import KeyWatch
from rllfpr.models.store import ModelStoreError, StoredModel
from rllfpr.wire.messages import KeyState


@dataclass(frozen=True)
class EpochRow:
    scope: str
    epoch: int
    state: str
    until: datetime | None  # end of the grace window (retiring, retired)
    grace_s: int | None  # the grace window announced with this epoch's activation
    announced_at: datetime | None
    loaded: bool
    model: StoredModel | None


def key_table(models: EpochModels, keywatch: KeyWatch | None, scopes: list[str]) -> list[EpochRow]:
    announcements = keywatch.announcements() if keywatch else {}
    revocations = keywatch.revocations() if keywatch else {}
    loaded = {(info.scope, info.epoch): info for info in models.loaded()}
    store = models.store
    rows = []
    for scope in scopes:
        published = set(store.epochs(scope))
        revoked = set(store.revoked_epochs(scope)) | {e for s, e in revocations if s == scope}
        epochs = published | revoked | {e for s, e in announcements if s == scope}
        now = datetime.now(timezone.utc)
        for epoch in sorted(epochs, reverse=True):
            announcement = announcements.get((scope, epoch))
            deadline = models.retirement(scope, epoch)
            until = datetime.fromtimestamp(deadline, timezone.utc) if deadline else None
            if epoch in revoked or (announcement and announcement.state is KeyState.REVOKED):
                state = "revoked"
            elif until is not None:
                state = "retired" if now > until else "retiring"
            elif announcement is not None:
                state = announcement.state.value
            else:
                state = "published"
            model = loaded.get((scope, epoch))
            if model is None and epoch in published:
                try:
                    model = store.info(scope, epoch)
                except ModelStoreError:
                    model = None
            rows.append(
                EpochRow(
                    scope=scope,
                    epoch=epoch,
                    state=state,
                    until=until,
                    grace_s=announcement.grace_s
                    if announcement and announcement.state is KeyState.ACTIVE
                    else None,
                    announced_at=announcement.issued_at if announcement else None,
                    loaded=(scope, epoch) in loaded,
                    model=model,
                )
            )
    return rows
