"""The recognizer service: one worker thread turns micro-batches of faces into events.

The MQTT network thread only queues deliveries. The worker collects a micro-batch (up to
``max_batch`` faces, or what arrived within ``max_wait_ms`` of the first), processes it,
publishes the events it decided, and only then acknowledges the batch in arrival order. A
transient failure (Redis or the broker away) retries the same batch with exponential back-off
and acknowledges nothing meanwhile; the broker stops sending once its in-flight window is full.
Between batches the worker publishes timed-out track rounds, and periodically applies the
retention limits and rescans the model store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import redis

from recognizer_service.audit import AuditLog
from recognizer_service.console.feed import ConsoleFeed
from recognizer_service.consumer import RecognizerLink
from recognizer_service.epochs import EpochModels
from recognizer_service.gallery import Gallery, RedisClient, connect_redis
from recognizer_service.keywatch import KeyWatch
from recognizer_service.metrics import Metrics
from recognizer_service.pipeline import (
    BatchProcessor,
    Delivery,
    Face,
    PoisonMessageError,
    TransientError,
)
from recognizer_service.recent_faces import RecentFaces
from recognizer_service.tracks import Tracks
from rllfpr.config import Settings
from rllfpr.faces.pixels import pick_device
from rllfpr.models.store import ModelStore
from rllfpr.wire.messages import utc_now

log = logging.getLogger(__name__)
SWEEP_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Readiness:
    mqtt: bool
    redis: bool
    models: int
    worker: bool

    @property
    def ready(self) -> bool:
        return self.mqtt and self.redis and self.models > 0 and self.worker


class RecognizerService:
    def __init__(
        self,
        settings: Settings,
        client_id: str | None = None,
        redis_client: RedisClient | None = None,
    ) -> None:
        self.settings = settings
        options = settings.recognizer
        self.metrics = Metrics()
        self.redis = redis_client or connect_redis(settings.redis)
        prefix = settings.redis.key_prefix
        self.models = EpochModels(
            ModelStore(options.model_store), options.scopes, pick_device(options.device)
        )
        self.gallery = Gallery(
            self.redis,
            prefix,
            shards=options.shards,
            quantization=options.quantization,
            hnsw_m=options.hnsw_m,
            build_ef=options.build_ef,
            search_ef=options.search_ef,
            search_count=options.search_count,
            max_templates_per_subject=options.max_templates_per_subject,
        )
        self.tracks = Tracks(
            self.redis,
            prefix,
            consensus_faces=options.consensus_faces,
            consensus_timeout_ms=options.consensus_timeout_ms,
            lease_s=options.consensus_lease_s,
            idle_s=options.track_idle_s,
        )
        self.audit = AuditLog(
            self.redis,
            prefix,
            max_entries=options.audit_max_entries,
            retention=timedelta(days=options.audit_retention_days),
        )
        self.link = RecognizerLink(
            settings.mqtt,
            options.group,
            self.metrics,
            client_id=client_id,
            publish_timeout_s=options.publish_timeout_s,
            event_expiry_s=options.event_expiry_s,
        )
        console = options.console
        self.recent_faces = RecentFaces(
            self.redis, prefix, console.face_retention_s if console.enabled else 0
        )
        self.processor = BatchProcessor(
            options,
            self.models,
            self.gallery,
            self.tracks,
            self.audit,
            self.metrics,
            self.link,
            recent_faces=self.recent_faces,
        )
        self.keywatch = (
            KeyWatch(
                settings,
                self.models.epochs_of,
                self.models.retire,
                lambda scope, epoch: self.drop_epoch(scope, epoch, actor="key-revocation"),
                on_refused=lambda reason: self.metrics.key_messages_refused.labels(reason).inc(),
            )
            if settings.keys.trusted_signers
            else None
        )
        self.console_feed = (
            ConsoleFeed(settings) if console.enabled or options.homeassistant.enabled else None
        )
        self._stop = threading.Event()
        self._busy = threading.Event()  # a batch is in hand
        self._worker: threading.Thread | None = None
        self._last_maintenance = 0.0

    # Life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models, connect, and start the worker; raises if the broker is absent."""
        self.models.refresh()
        self.metrics.models_loaded.set(len(self.models.loaded()))
        if not self.models.loaded():
            log.warning(
                "no model for scopes %s in %s: every face will be rejected until one is published",
                self.settings.recognizer.scopes,
                self.settings.recognizer.model_store,
            )
        self._last_maintenance = time.monotonic()
        self.link.start()
        if self.console_feed is not None:
            self.console_feed.start()
        if self.keywatch is not None:
            self.keywatch.start()
        else:
            log.warning("no trusted signer configured: key activations and revocations are ignored")
        self._worker = threading.Thread(target=self._run, name="recognizer-worker", daemon=True)
        self._worker.start()
        log.info("recognizer %s consuming %s", self.link.client_id, self.link.filters)

    def stop(self, leave_group: bool = False) -> None:
        """Finish the batch in hand, then disconnect. The session stays, with the faces the
        broker assigned to it, for this replica's return (a restart). ``leave_group`` is for a
        replica that is removed for good: it unsubscribes, drains what was already assigned to
        it, and ends its session, so nothing waits for a member that will not come back."""
        if leave_group and self.worker_alive:
            self.link.leave_group()
            self._drain()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
        self.link.stop(end_session=leave_group)
        if self.keywatch is not None:
            self.keywatch.close()
        if self.console_feed is not None:
            self.console_feed.close()

    def _drain(self, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Wait until no delivery arrived for ``quiet_s`` and every one was handled."""
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if not self.link.intake.empty() or self._busy.is_set():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            time.sleep(0.05)
        log.warning("leaving the group with deliveries still in hand after %.0f s", timeout_s)

    def readiness(self) -> Readiness:
        try:
            redis_ok = bool(self.redis.ping())
        except redis.RedisError:
            redis_ok = False
        return Readiness(
            mqtt=self.link.is_connected(),
            redis=redis_ok,
            models=len(self.models.loaded()),
            worker=self.worker_alive,
        )

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # The worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._collect()
                if batch:
                    self._handle(batch)
                self._sweep()
                self._maintain_if_due()
            except Exception:  # the worker must outlive any bug; /healthz watches it
                log.exception("recognizer worker iteration failed")
                self._stop.wait(1.0)

    def _collect(self) -> list[Delivery]:
        options = self.settings.recognizer
        try:
            first = self.link.intake.get(timeout=SWEEP_INTERVAL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + options.max_wait_ms / 1000
        while len(batch) < options.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self.link.intake.get(timeout=remaining)
                    if remaining > 0
                    else self.link.intake.get_nowait()
                )
            except queue.Empty:
                break
        current = self.link.generation
        return [delivery for delivery in batch if delivery.generation == current]

    def _handle(self, batch: list[Delivery]) -> None:
        self._busy.set()
        try:
            self._retry_until_processed(batch)
        finally:
            self._busy.clear()

    def _retry_until_processed(self, batch: list[Delivery]) -> None:
        self.metrics.batch_size.observe(len(batch))
        faces = self.processor.triage(batch)
        attempt = 0
        while True:
            try:
                self._handle_isolating(faces)
                break
            except TransientError as error:
                self._note_transient(error)
                delay = self._backoff(attempt)
                log.warning(
                    "batch of %d not processed (%s); retrying in %.1f s, unacknowledged",
                    len(batch),
                    error,
                    delay,
                )
                if self._stop.wait(delay):
                    return  # shutting down: the broker redelivers the batch to this session
                attempt += 1
        self.metrics.redis_up.set(1)
        self.link.acknowledge(batch)

    def _handle_isolating(self, faces: list[Face]) -> None:
        """Handle a batch's faces; if that fails for an unforeseen reason, one face at a time,
        so a single poison message is rejected instead of blocking the queue."""
        try:
            self.processor.handle(faces)
            return
        except TransientError:
            raise
        except Exception:
            log.exception("batch of %d failed; processing its faces one by one", len(faces))
        for face in faces:
            try:
                self.processor.handle([face])
            except TransientError:
                raise
            except Exception as error:
                log.exception("message on %s cannot be processed", face.delivery.topic)
                self.processor.reject(
                    face.delivery, PoisonMessageError("internal_error", str(error))
                )

    def _backoff(self, attempt: int) -> float:
        options = self.settings.recognizer
        return float(min(options.redis_retry_max_s, options.redis_retry_initial_s * 2**attempt))

    def _note_transient(self, error: TransientError) -> None:
        self.metrics.transient_failures.labels(error.component).inc()
        if error.component == "redis":
            self.metrics.redis_up.set(0)

    def _sweep(self) -> None:
        try:
            self.processor.sweep()
        except TransientError as error:
            self._note_transient(error)
            log.debug("sweep postponed: %s", error)

    def _maintain_if_due(self) -> None:
        if (
            time.monotonic() - self._last_maintenance
            < self.settings.recognizer.maintenance_interval_s
        ):
            return
        self._last_maintenance = time.monotonic()
        try:
            self.maintain()
        except redis.RedisError as error:
            log.warning("maintenance postponed: %s", error)

    def maintain(self) -> None:
        """Pick up published or revoked models; apply template and audit retention."""
        options = self.settings.recognizer
        for scope, epoch in self.models.refresh():
            self.audit.record("load", "recognizer", scope=scope, epoch=epoch)
        self.metrics.models_loaded.set(len(self.models.loaded()))
        if options.template_retention_days is not None:
            cutoff = utc_now() - timedelta(days=options.template_retention_days)
            expired = self.gallery.expire(cutoff)
            if expired:
                self.metrics.erasures.labels("retention").inc(expired)
                self.audit.record("expire", "retention", templates=expired)
        self.audit.trim()

    # Gallery management (HTTP API) -----------------------------------------------------------

    def erase(self, subject: str, actor: str, scope: str | None = None) -> int:
        removed = self.gallery.erase(subject, scope)
        self.audit.record("erase", actor, subject=subject, scope=scope, templates=removed)
        self.metrics.erasures.labels("request").inc(removed)
        return removed

    def drop_epoch(self, scope: str, epoch: int, actor: str) -> int:
        """Revocation: delete an epoch's gallery and model; its faces are rejected from now on."""
        self.models.revoke(scope, epoch)
        removed = self.gallery.drop(scope, epoch)
        self.audit.record("drop", actor, scope=scope, epoch=epoch, templates=removed)
        self.metrics.models_loaded.set(len(self.models.loaded()))
        return removed
