"""The key-ring policy every agent and recognizer applies to incoming bundles and revocations.

Rules, per key scope:
- a bundle must be signed by a trusted signer and decrypt with a held fleet key; format 1
  (seed in clear, issue 21) is refused unless the ring was built with ``accept_format_1``;
- its scope must be one this process serves;
- it is *stale* unless its epoch is newer than every epoch accepted before; re-delivery of
  the very bundle already accepted (retained topics redeliver on reconnect) is a no-op;
- a revoked epoch is never accepted again, and revocations only move forward;
- a bundle created further in the future than the allowed clock skew is refused.

The state (highest epoch, accepted bundle ids, revocations) persists as JSON with mode 0600.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rllfpr.files import write_private
from rllfpr.keys.bundle import BundleError, KeyBundle, open_bundle
from rllfpr.keys.envelope import open_signed
from rllfpr.keys.material import FleetKey
from rllfpr.wire.messages import Revocation, utc_now


@dataclass
class ScopeState:
    highest_epoch: int = -1
    accepted: dict[int, str] = field(default_factory=dict)  # epoch -> bundle id
    revoked: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Acceptance:
    bundle: KeyBundle
    is_new: bool  # False when this exact bundle had been accepted before


class KeyRing:
    def __init__(
        self,
        trusted: Mapping[str, Ed25519PublicKey],
        fleet_keys: Iterable[FleetKey],
        scopes: Iterable[str] = ("fleet",),
        max_clock_skew: timedelta = timedelta(minutes=5),
        state_file: Path | None = None,
        accept_format_1: bool = False,
    ) -> None:
        if not trusted:
            raise ValueError("a key ring needs at least one trusted signer")
        self._trusted = dict(trusted)
        self._fleet_keys = {key.key_id: key for key in fleet_keys}
        self._scopes = set(scopes)
        self._max_clock_skew = max_clock_skew
        self._state_file = state_file
        self._accept_format_1 = accept_format_1
        self._state: dict[str, ScopeState] = {scope: ScopeState() for scope in self._scopes}
        if state_file is not None and state_file.exists():
            self._load(state_file)

    def state(self, scope: str) -> ScopeState:
        return self._state[scope]

    def accept(self, data: bytes, now: datetime | None = None) -> Acceptance:
        """Verify a bundle and apply the policy; raises ``BundleError`` with the reason."""
        bundle = open_bundle(
            data, self._trusted, self._fleet_keys, accept_format_1=self._accept_format_1
        )
        header = bundle.header
        if header.scope not in self._scopes:
            raise BundleError(
                f"bundle for scope {header.scope!r}; this process serves {sorted(self._scopes)}"
            )
        now = now or utc_now()
        if header.created_at - now > self._max_clock_skew:
            raise BundleError(f"bundle created in the future ({header.created_at.isoformat()})")
        scope = self._state[header.scope]
        if header.epoch in scope.revoked:
            raise BundleError(f"epoch {header.epoch} of scope {header.scope} is revoked")
        if scope.accepted.get(header.epoch) == str(header.bundle_id):
            return Acceptance(bundle, is_new=False)
        if header.epoch <= scope.highest_epoch:
            raise BundleError(
                f"stale or replayed bundle: epoch {header.epoch} is not newer than "
                f"{scope.highest_epoch} in scope {header.scope}"
            )
        scope.highest_epoch = header.epoch
        scope.accepted[header.epoch] = str(header.bundle_id)
        self._save()
        return Acceptance(bundle, is_new=True)

    def revoke(self, data: bytes) -> Revocation:
        """Verify a signed revocation and record it; returns it (idempotent)."""
        revocation = open_signed(data, Revocation, self._trusted)
        if revocation.scope not in self._scopes:
            raise BundleError(f"revocation for scope {revocation.scope!r} not served here")
        scope = self._state[revocation.scope]
        scope.revoked.add(revocation.epoch)
        scope.accepted.pop(revocation.epoch, None)
        scope.highest_epoch = max(scope.highest_epoch, revocation.epoch)
        self._save()
        return revocation

    def is_revoked(self, scope: str, epoch: int) -> bool:
        return scope in self._state and epoch in self._state[scope].revoked

    def _save(self) -> None:
        if self._state_file is None:
            return
        document = {
            scope: {
                "highest_epoch": state.highest_epoch,
                "accepted": {str(epoch): bundle for epoch, bundle in state.accepted.items()},
                "revoked": sorted(state.revoked),
            }
            for scope, state in self._state.items()
        }
        write_private(self._state_file, json.dumps(document, indent=2).encode())

    def _load(self, path: Path) -> None:
        document = json.loads(path.read_text())
        for scope, saved in document.items():
            if scope in self._state:
                self._state[scope] = ScopeState(
                    highest_epoch=int(saved["highest_epoch"]),
                    accepted={int(epoch): bundle for epoch, bundle in saved["accepted"].items()},
                    revoked={int(epoch) for epoch in saved["revoked"]},
                )
