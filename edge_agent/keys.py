"""The agent's keys: the SN comes only from verified key bundles, and goes when revoked.

Messages arrive on the retained key topics of the agent's scope (``rllfpr/v1/keys/{scope}/#``)
and are classified by their payload, not their topic: a key bundle (``RLKB``), a signed
``KeyAnnouncement`` or a signed ``Revocation``. Retained messages are delivered in no
particular order, so messages are applied after a short quiet time (``key_settle_s``) in a
fixed order: revocations, then bundles by epoch, then announcements by epoch and state.

Rules (the trainer's side is issue 8; this is what an agent does):

- a bundle is verified and accepted by the shared ``KeyRing`` (signature, decryption, scope,
  clock skew, revoked and stale epochs refused; format 1, whose header carries the seed, only
  with ``keys.accept_format_1``); an accepted bundle is *staged*: its SN is
  built into a backend ahead of time and the bundle bytes are kept on disk;
- a signed ``active`` announcement switches the agent to its epoch when the bundle it names
  (id and SHA-256) is staged; an announcement for a bundle that has not arrived yet waits for
  it. Activation only moves forward: an announcement for an epoch below the active one is a
  replay and is ignored. Keys older than the new active one are forgotten;
- a signed ``Revocation`` (or a ``revoked`` announcement) forgets its epoch: backend dropped
  from memory, bundle, engine cache and stored announcement deleted from disk. If it was
  the active key the agent has no key and drops faces (counted) until the next activation;
- the active announcement is stored (still signed) so a restarted agent resumes with its key
  before the broker is reachable; stored files are verified again when loaded.

The switch is a reference swap under a lock that the pipeline holds while it scrambles a
batch: the stream never stops, and once a revocation returns, no face is scrambled with the
revoked key any more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum
from pathlib import Path

from pydantic import ValidationError

from edge_agent.backends import ScramblerBackend
from edge_agent.metrics import AgentMetrics
from rllfpr.config import KeySettings
from rllfpr.files import private_dir, remove, write_private
from rllfpr.keys import bundle, envelope, material
from rllfpr.keys.bundle import BundleError, KeyBundle
from rllfpr.keys.envelope import SignatureError, SignedEnvelope
from rllfpr.keys.keyring import KeyRing
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.wire.messages import KeyAnnouncement, KeyState, utc_now

log = logging.getLogger(__name__)

BackendFactory = Callable[[ScramblerNetwork, Path], ScramblerBackend]  # network, engine dir


class Kind(IntEnum):  # also the order in which a settled batch of messages is applied
    REVOCATION = 0
    BUNDLE = 1
    ANNOUNCEMENT = 2


_STATE_ORDER = {KeyState.STAGED: 0, KeyState.ACTIVE: 1, KeyState.REVOKED: 2}


@dataclass(frozen=True)
class ActiveKey:
    scope: str
    epoch: int
    backend: ScramblerBackend

    @property
    def input_size(self) -> int:
        return self.backend.input_size


@dataclass(frozen=True)
class StagedKey:
    epoch: int
    bundle_id: str
    sha256: str
    backend: ScramblerBackend


def classify(payload: bytes) -> tuple[Kind, int, int] | None:
    """(kind, epoch, order within the epoch) read without verification, for sorting only;
    ``None`` for an empty payload (a cleared retained topic)."""
    if not payload:
        return None
    if payload.startswith(bundle.MAGIC):
        return Kind.BUNDLE, bundle.read_header(payload).epoch, 0
    sealed = SignedEnvelope.model_validate_json(payload)
    if sealed.kind == "revocation":
        return Kind.REVOCATION, 0, 0
    announcement = KeyAnnouncement.model_validate_json(sealed.payload)
    return Kind.ANNOUNCEMENT, announcement.epoch, _STATE_ORDER[announcement.state]


class KeyRefusedError(ValueError):
    """A key message was refused; the text says why."""


class AgentKeys:
    def __init__(
        self,
        settings: KeySettings,
        state_dir: Path,
        build_backend: BackendFactory,
        metrics: AgentMetrics,
        settle_s: float,
        on_change: Callable[[ActiveKey | None], None] = lambda _key: None,
        on_revoke: Callable[[int], object] = lambda _epoch: None,
    ) -> None:
        if not settings.trusted_signers or settings.fleet_key_file is None:
            raise material.KeyMaterialError(
                "the agent needs keys.trusted_signers and keys.fleet_key_file to verify and "
                "decrypt key bundles"
            )
        self.scope = settings.scope
        self._trusted = material.trusted_signers(settings.trusted_signers)
        self._skew = timedelta(seconds=settings.max_clock_skew_s)
        self.state_dir = private_dir(state_dir)
        self._ring = KeyRing(
            self._trusted,
            [material.load_fleet_key(settings.fleet_key_file)],
            scopes=[self.scope],
            max_clock_skew=self._skew,
            state_file=state_dir / "keyring.json",
            accept_format_1=settings.accept_format_1,
        )
        self._build_backend = build_backend
        self._metrics = metrics
        self._settle_s = settle_s
        self._on_change = on_change
        self._on_revoke = on_revoke
        self._lock = threading.Lock()  # held while scrambling and while switching keys
        self._active: ActiveKey | None = None
        self._staged: dict[int, StagedKey] = {}
        # An activation whose bundle has not arrived yet, with its signed bytes.
        self._waiting: tuple[KeyAnnouncement, bytes] | None = None
        self._inbox: list[bytes] = []
        self._inbox_changed = threading.Condition()
        self._last_arrival = 0.0
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="agent-keys", daemon=True)

    # ----- files
    def _bundle_path(self, epoch: int) -> Path:
        return self.state_dir / "bundles" / f"{self.scope}-{epoch}.rlkb"

    def engine_dir(self, epoch: int) -> Path:
        return self.state_dir / "engines" / f"{self.scope}-{epoch}"

    @property
    def _announcement_path(self) -> Path:
        return self.state_dir / f"active-{self.scope}.json"

    # ----- life cycle
    def start(self) -> None:
        """Restore the stored keys (verified again), then apply messages as they come."""
        stored = sorted((self.state_dir / "bundles").glob(f"{self.scope}-*.rlkb"))
        messages = [path.read_bytes() for path in stored]
        if self._announcement_path.is_file():
            messages.append(self._announcement_path.read_bytes())
        self._apply_all(messages)
        self._worker.start()

    def close(self) -> None:
        with self._inbox_changed:
            self._closed = True
            self._inbox_changed.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=10)

    def submit(self, payload: bytes) -> None:
        """Queue a message from a key topic (called from the MQTT thread)."""
        with self._inbox_changed:
            self._inbox.append(payload)
            self._last_arrival = time.monotonic()
            self._inbox_changed.notify_all()

    def _work(self) -> None:
        while True:
            with self._inbox_changed:
                while not self._inbox and not self._closed:
                    self._inbox_changed.wait()
                if self._closed:
                    return
                quiet_for = time.monotonic() - self._last_arrival
                if quiet_for < self._settle_s:
                    self._inbox_changed.wait(self._settle_s - quiet_for)
                    continue
                batch, self._inbox = self._inbox, []
            try:
                self._apply_all(batch)
            except Exception:  # keep listening: the next bundle or revocation must get through
                log.exception("unexpected failure while applying key messages")

    # ----- the pipeline's side
    def current(self) -> ActiveKey | None:
        return self._active

    @contextmanager
    def using(self) -> Iterator[ActiveKey | None]:
        """The active key, which cannot change or be revoked until the block ends."""
        with self._lock:
            yield self._active

    # ----- applying messages
    def _apply_all(self, payloads: list[bytes]) -> None:
        ordered: list[tuple[tuple[Kind, int, int], bytes]] = []
        for payload in payloads:
            try:
                order = classify(payload)
            except (BundleError, ValidationError, ValueError) as error:
                self._refuse("unknown", f"unreadable key message: {error}")
                continue
            if order is not None:
                ordered.append((order, payload))
        for (kind, _epoch, _rank), payload in sorted(ordered, key=lambda item: item[0]):
            try:
                self._apply(kind, payload)
            except (BundleError, SignatureError, KeyRefusedError) as error:
                self._refuse(kind.name.lower(), str(error))

    def _refuse(self, kind: str, reason: str) -> None:
        log.warning("refused %s: %s", kind, reason)
        self._metrics.key_messages.labels(kind, "refused").inc()

    def _apply(self, kind: Kind, payload: bytes) -> None:
        if kind is Kind.REVOCATION:
            revocation = self._ring.revoke(payload)
            self._revoke(revocation.epoch, revocation.reason)
        elif kind is Kind.BUNDLE:
            self._stage(payload)
        else:
            self._announce(envelope.open_signed(payload, KeyAnnouncement, self._trusted), payload)
        self._metrics.key_messages.labels(kind.name.lower(), "applied").inc()

    def _stage(self, payload: bytes) -> None:
        acceptance = self._ring.accept(payload)
        key = acceptance.bundle
        epoch = key.header.epoch
        if key.header.format_version != bundle.FORMAT_VERSION:
            log.warning(
                "using key epoch %d of scope %s from a format-1 bundle, whose seed is public "
                "(keys.accept_format_1): rotate to a format-2 epoch and revoke this one",
                epoch,
                self.scope,
            )
        active = self._active
        if active is not None and epoch <= active.epoch:
            if epoch < active.epoch:
                log.info("ignoring bundle of epoch %d, older than the active one", epoch)
            return
        if epoch not in self._staged:
            self._staged[epoch] = StagedKey(
                epoch, str(key.header.bundle_id), key.sha256, self._backend_for(key)
            )
            log.info("staged key epoch %d of scope %s", epoch, self.scope)
        if not self._bundle_path(epoch).is_file():
            write_private(self._bundle_path(epoch), payload)
        if self._waiting is not None and self._waiting[0].epoch == epoch:
            self._activate(*self._waiting)

    def _backend_for(self, key: KeyBundle) -> ScramblerBackend:
        try:
            network = ScramblerNetwork.from_key_state(key.architecture, key.state)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise KeyRefusedError(
                f"bundle of epoch {key.header.epoch} does not hold a usable SN: {error}"
            ) from error
        try:
            return self._build_backend(network, self.engine_dir(key.header.epoch))
        except Exception as error:  # a runtime's own failure must not stop the key thread
            log.exception("cannot build the scrambler backend of epoch %d", key.header.epoch)
            raise KeyRefusedError(
                f"scrambler backend for epoch {key.header.epoch} failed to build: {error}"
            ) from error

    def _announce(self, announcement: KeyAnnouncement, payload: bytes) -> None:
        if announcement.scope != self.scope:
            raise KeyRefusedError(
                f"announcement for scope {announcement.scope!r}, not {self.scope}"
            )
        if announcement.issued_at - utc_now() > self._skew:
            raise KeyRefusedError("announcement issued in the future")
        if announcement.state is KeyState.REVOKED:
            self._revoke(announcement.epoch, "announced revoked")
        elif announcement.state is KeyState.ACTIVE:
            self._activate(announcement, payload)
        else:
            log.info("epoch %d of scope %s announced staged", announcement.epoch, self.scope)

    def _activate(self, announcement: KeyAnnouncement, payload: bytes) -> None:
        epoch = announcement.epoch
        active = self._active
        if active is not None and epoch <= active.epoch:
            if epoch < active.epoch:
                raise KeyRefusedError(
                    f"replayed activation of epoch {epoch} (active: {active.epoch})"
                )
            return
        if self._ring.is_revoked(self.scope, epoch):
            raise KeyRefusedError(f"activation of revoked epoch {epoch}")
        staged = self._staged.get(epoch)
        if staged is None:
            log.info("epoch %d announced active; waiting for its bundle", epoch)
            self._waiting = (announcement, payload)
            return
        if (str(announcement.bundle_id), announcement.bundle_sha256) != (
            staged.bundle_id,
            staged.sha256,
        ):
            raise KeyRefusedError(f"activation of epoch {epoch} names another bundle than staged")
        with self._lock:
            self._active = ActiveKey(self.scope, epoch, staged.backend)
        self._waiting = None
        write_private(self._announcement_path, payload)
        log.info("key epoch %d of scope %s is active", epoch, self.scope)
        for older in [e for e in self._staged if e < epoch]:
            self._forget(older, "superseded")
        self._changed()

    def _revoke(self, epoch: int, reason: str) -> None:
        self._forget(epoch, f"revoked: {reason}")
        self._on_revoke(epoch)

    def _forget(self, epoch: int, why: str) -> None:
        with self._lock:
            was_active = self._active is not None and self._active.epoch == epoch
            if was_active:
                self._active = None
            self._staged.pop(epoch, None)
        if self._waiting is not None and self._waiting[0].epoch == epoch:
            self._waiting = None
        remove(self._bundle_path(epoch))
        remove(self.engine_dir(epoch))
        if was_active:
            remove(self._announcement_path)
            self._changed()
        log.info("forgot key epoch %d of scope %s (%s)", epoch, self.scope, why)

    def _changed(self) -> None:
        active = self._active
        self._metrics.key_epoch.set(-1 if active is None else active.epoch)
        self._on_change(active)
