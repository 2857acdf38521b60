"""One micro-batch: validate, embed per key epoch, enroll or search, decide, publish events.

``BatchProcessor.triage`` rejects, once and for good, what can never be processed (logged
with the reason, counted); ``handle`` then either completes every remaining face, so the caller
may acknowledge the whole batch, or raises ``TransientError`` and leaves the caller to retry
the same faces later without acknowledging anything. Every step is idempotent per message id
(template ids are message ids; track rounds remember their faces), so a retried or
redelivered batch does no harm.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import redis

from recognizer_service.audit import AuditLog
from recognizer_service.decision import Decision, decide, normalize, observe
from recognizer_service.epochs import EpochModels
from recognizer_service.gallery import Enrollment, Gallery, Template
from recognizer_service.metrics import Metrics
from recognizer_service.recent_faces import RecentFaces
from recognizer_service.tracks import (
    FaceObservation,
    ObserveStatus,
    Round,
    RoundRef,
    TrackId,
    Tracks,
)
from rllfpr.config import RecognizerSettings
from rllfpr.models.store import LoadedModel, ScoreKind
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import Candidate, FaceHeader, RecognitionEvent, utc_now

log = logging.getLogger(__name__)

# Redis away, loading, or a cluster in failover: the same request succeeds later. A cluster
# answers CLUSTERDOWN (ClusterDownError; MasterDownError is one) while a replica takes over a
# dead primary's slots, TRYAGAIN while a slot migrates, and redis-py raises SlotNotCoveredError
# while its slot map lacks a node; a pipeline does not retry these itself.
REDIS_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


class TransientError(RuntimeError):
    """Processing cannot complete now (Redis or the broker is away): retry, do not acknowledge."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component}: {reason}")
        self.component = component


class PoisonMessageError(ValueError):
    """A message that can never be processed: acknowledge it, log and count it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    topic: str
    payload: bytes
    mid: int
    generation: int  # MQTT connection it arrived on: acknowledgements are per connection


@dataclass(frozen=True)
class Face:
    delivery: Delivery
    header: FaceHeader
    pixels: np.ndarray
    model: LoadedModel


class EventPublisher(Protocol):
    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish with QoS 1 and return once the broker confirmed all; else TransientError."""


@contextmanager
def redis_errors_are_transient() -> Iterator[None]:
    try:
        yield
    except REDIS_TRANSIENT as error:
        raise TransientError("redis", str(error) or type(error).__name__) from error


class BatchProcessor:
    def __init__(
        self,
        settings: RecognizerSettings,
        models: EpochModels,
        gallery: Gallery,
        tracks: Tracks,
        audit: AuditLog,
        metrics: Metrics,
        publisher: EventPublisher,
        clock: Callable[[], datetime] = utc_now,
        recent_faces: RecentFaces | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.gallery = gallery
        self.tracks = tracks
        self.audit = audit
        self.metrics = metrics
        self.publisher = publisher
        self.clock = clock
        self.recent_faces = recent_faces
        # Rounds whose event the broker confirmed and Redis has not yet marked finished.
        self._published: dict[RoundRef, RecognitionEvent] = {}
        self._audited: set[RoundRef] = set()

    # Validation ------------------------------------------------------------------------------

    def validate(self, delivery: Delivery) -> Face:
        """Decode and check a delivery against its topic and the loaded epochs."""
        if len(delivery.payload) > self.settings.max_payload_bytes:
            raise PoisonMessageError(
                "oversized",
                f"{len(delivery.payload)} bytes exceed {self.settings.max_payload_bytes}",
            )
        try:
            message = codec.decode(delivery.payload)
        except codec.CodecError as error:
            raise PoisonMessageError("malformed", str(error)) from error
        header = message.header
        self._check_topic(delivery.topic, header)
        if header.key_scope not in self.settings.scopes:
            raise PoisonMessageError(
                "unknown_scope", f"key scope {header.key_scope!r} is not served here"
            )
        model = self.models.get(header.key_scope, header.key_epoch)
        if model is None:
            if self.models.is_revoked(header.key_scope, header.key_epoch):
                reason, state = "revoked_epoch", "revoked"
            elif self.models.is_retired(header.key_scope, header.key_epoch):
                reason, state = "retired_epoch", "past its grace window"
            else:
                reason, state = "unknown_epoch", "not loaded here"
            raise PoisonMessageError(
                reason, f"key epoch {header.key_epoch} of scope {header.key_scope} is {state}"
            )
        side = model.info.recognizer.input_size
        if (header.height, header.width) != (side, side):
            raise PoisonMessageError(
                "wrong_size",
                f"{header.height}x{header.width} face; epoch {header.key_epoch} expects "
                f"{side}x{side}",
            )
        return Face(delivery, header, message.pixels, model)

    @staticmethod
    def _check_topic(topic: str, header: FaceHeader) -> None:
        try:
            parsed = topics.parse(topic)
        except topics.TopicError:
            parsed = None
        if parsed is None or parsed.kind not in ("faces", "enroll"):
            raise PoisonMessageError("unexpected_topic", f"not a faces or enroll topic: {topic!r}")
        if parsed.kind == "faces":
            fits = header.purpose == "recognize" and header.camera == parsed.camera
        else:
            fits = header.purpose == "enroll" and header.subject == parsed.subject
        if not fits or header.site != parsed.site:
            raise PoisonMessageError("topic_mismatch", f"header does not fit topic {topic!r}")

    # Processing ------------------------------------------------------------------------------

    def triage(self, deliveries: Sequence[Delivery]) -> list[Face]:
        """The deliveries that can be processed; the others are rejected (logged, counted)."""
        faces = []
        for delivery in deliveries:
            try:
                faces.append(self.validate(delivery))
            except PoisonMessageError as rejection:
                self.reject(delivery, rejection)
        return faces

    def handle(self, faces: Sequence[Face]) -> None:
        """Embed, enroll or search, decide and publish; raises ``TransientError``."""
        embeddings = self._embed(faces)
        pairs = list(zip(faces, embeddings, strict=True))
        with redis_errors_are_transient():
            self._enroll([(face, vector) for face, vector in pairs if face.header.subject])
            probes = [(f, v) for f, v in pairs if not f.header.subject]
            if self.recent_faces is not None:
                self.recent_faces.keep(
                    [(str(f.header.message_id), f.delivery.payload) for f, _ in probes]
                )
            claimed = self._observe(probes)
            self.publish_rounds(claimed)

    def reject(self, delivery: Delivery, rejection: PoisonMessageError) -> None:
        log.warning("rejected message on %s: %s: %s", delivery.topic, rejection.reason, rejection)
        self.metrics.rejected.labels(rejection.reason).inc()

    def _embed(self, faces: Sequence[Face]) -> list[np.ndarray]:
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for index, face in enumerate(faces):
            groups[(face.header.key_scope, face.header.key_epoch)].append(index)
        embeddings: list[np.ndarray] = [np.empty(0)] * len(faces)
        started = time.perf_counter()
        for indices in groups.values():
            model = faces[indices[0]].model
            vectors = self.models.embed(model, [faces[i].pixels for i in indices])
            for index, vector in zip(indices, vectors, strict=True):
                embeddings[index] = vector
        if faces:
            self.metrics.embed_seconds.observe(time.perf_counter() - started)
        return embeddings

    def _enroll(
        self, items: Sequence[tuple[Face, np.ndarray]], actor: str | None = None
    ) -> list[Enrollment]:
        """Enroll a batch's enrollment faces: one ``enroll_many`` per gallery (scope, epoch)."""
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for index, (face, _) in enumerate(items):
            groups[(face.header.key_scope, face.header.key_epoch)].append(index)
        results: list[Enrollment] = [None] * len(items)  # type: ignore[list-item]
        for (scope, epoch), indices in groups.items():
            norm = items[indices[0]][0].model.norm
            statistics: list[tuple[float, float] | None] = [None] * len(indices)
            if norm is not None:  # kept with each template: its side of every S-norm score
                means, stds = norm.statistics(np.stack([items[i][1] for i in indices]))
                statistics = [(float(m), float(s)) for m, s in zip(means, stds, strict=True)]
            templates = []
            for index, template_statistics in zip(indices, statistics, strict=True):
                header, vector = items[index][0].header, items[index][1]
                assert header.subject is not None
                templates.append(
                    Template(
                        header.subject,
                        str(header.message_id),
                        vector,
                        header.site,
                        header.captured_at,
                        template_statistics,
                    )
                )
            for index, result in zip(
                indices, self.gallery.enroll_many(scope, epoch, templates), strict=True
            ):
                results[index] = result
        entries: list[tuple[str, str, dict[str, object]]] = []
        for (face, _), result in zip(items, results, strict=True):
            header = face.header
            entries.append(
                (
                    "enroll",
                    actor or f"mqtt:{header.agent}",
                    {
                        "scope": header.key_scope,
                        "epoch": header.key_epoch,
                        "subject": header.subject,
                        "site": header.site,
                        "template": result.template_id,
                        "evicted": result.evicted or None,
                    },
                )
            )
            self.metrics.enrollments.inc()
            if result.evicted:
                self.metrics.erasures.labels("per_subject_limit").inc(result.evicted)
            self.metrics.processed.labels("enroll").inc()
        self.audit.record_many(entries)
        return results

    def enroll_payload(self, payload: bytes, actor: str) -> Enrollment:
        """Enroll one scrambled enrollment face message received outside MQTT (HTTP API)."""
        try:
            header = codec.decode(payload).header
        except codec.CodecError as error:
            raise PoisonMessageError("malformed", str(error)) from error
        if header.subject is None:
            raise PoisonMessageError("topic_mismatch", "not an enrollment face (purpose enroll)")
        face = self.validate(Delivery(topics.enroll(header.site, header.subject), payload, 0, 0))
        vector = self._embed([face])[0]
        with redis_errors_are_transient():
            return self._enroll([(face, vector)], actor)[0]

    def _observe(self, items: Sequence[tuple[Face, np.ndarray]]) -> list[RoundRef]:
        if not items:
            return []
        started = time.perf_counter()
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for index, (face, _) in enumerate(items):
            groups[(face.header.key_scope, face.header.key_epoch)].append(index)
        observed: list[tuple[TrackId, FaceObservation]] = [None] * len(items)  # type: ignore[list-item]
        keep = 2 * self.settings.candidates
        for (scope, epoch), indices in groups.items():
            vectors = [items[i][1] for i in indices]
            norm = items[indices[0]][0].model.norm
            hit_lists = self.gallery.search(scope, epoch, vectors, with_statistics=norm is not None)
            if norm is not None:
                means, stds = norm.statistics(np.stack(vectors))
                hit_lists = [
                    normalize(hits, (float(mean), float(std)))
                    for hits, mean, std in zip(hit_lists, means, stds, strict=True)
                ]
            for index, hits in zip(indices, hit_lists, strict=True):
                header = items[index][0].header
                observed[index] = (
                    TrackId(header.site, header.camera, header.agent, header.track_id),
                    FaceObservation(
                        str(header.message_id),
                        header.captured_at,
                        scope,
                        epoch,
                        observe(hits, keep),
                    ),
                )
        self.metrics.search_seconds.observe(time.perf_counter() - started)
        statuses = self.tracks.observe_many(observed)
        self.metrics.processed.labels("recognize").inc(len(items))
        return [ref for status, ref in statuses if status is ObserveStatus.CLAIMED]

    def sweep(self) -> int:
        """Publish rounds that timed out or whose claimant vanished; returns how many."""
        with redis_errors_are_transient():
            refs = self.tracks.sweep()
            return self.publish_rounds(refs)

    def publish_rounds(self, refs: Sequence[RoundRef]) -> int:
        """Publish the events of claimed rounds, then mark the rounds finished in Redis.

        A round whose event the broker confirmed is remembered until it is finished: if Redis
        fails in between, the retry (or the sweep, once the lease expires) finishes it without
        publishing its event again. Only a crash of this process in that window repeats an
        event (same ``event_id``)."""
        if not refs:
            return 0
        fresh = [ref for ref in refs if ref not in self._published]
        rounds = self.tracks.load(fresh) if fresh else []
        decided = [(r, self._decide(r)) for r in rounds]
        events = [(r, event) for r, event in decided if event is not None]
        self.publisher.publish(
            [
                (topics.events(event.site, event.camera), event.model_dump_json().encode())
                for _, event in events
            ]
        )
        for round_, event in events:
            self._published[round_.ref] = event
            self.metrics.events.labels(event.decision).inc()
            self.metrics.decision_latency.observe(event.decision_latency_ms / 1000)
        unaudited = [ref for ref in refs if ref in self._published and ref not in self._audited]
        self.audit.record_many([_search_entry(self._published[ref]) for ref in unaudited])
        self._audited.update(unaudited)
        self.tracks.finish(list(refs))
        for ref in refs:
            self._published.pop(ref, None)
            self._audited.discard(ref)
        return len(events)

    def _decide(self, round_: Round) -> RecognitionEvent | None:
        found = {(f.key_scope, f.key_epoch) for f in round_.faces}
        models = {key: model for key in found if (model := self.models.get(*key)) is not None}
        usable = [f for f in round_.faces if (f.key_scope, f.key_epoch) in models]
        if len(usable) < len(round_.faces):
            dropped = len(round_.faces) - len(usable)
            log.warning("round %s: %d faces of epochs no longer accepted", round_.event_id, dropped)
            self.metrics.rejected.labels("revoked_epoch").inc(dropped)
        if not usable:
            return None
        latest = max(usable, key=lambda f: f.captured_at)
        model = models[latest.key_scope, latest.key_epoch]
        # A track that spans a rotation: only faces scored in the latest epoch's unit count.
        usable = [f for f in usable if models[f.key_scope, f.key_epoch].scores == model.scores]
        calibration = model.info.calibration
        threshold, margin = self.settings.threshold, self.settings.min_margin
        if model.scores == "s_norm":
            threshold, margin = self.settings.s_norm_threshold, self.settings.s_norm_min_margin
        threshold = calibration.threshold if threshold is None else threshold
        margin = calibration.min_margin if margin is None else margin
        decision = decide(
            [f.observation for f in usable], threshold, margin, self.settings.candidates
        )
        return self._event(round_, usable, latest, decision, model.scores)

    def _event(
        self,
        round_: Round,
        faces: Sequence[FaceObservation],
        latest: FaceObservation,
        decision: Decision,
        score_kind: ScoreKind,
    ) -> RecognitionEvent:
        decided_at = self.clock()
        latency = max(timedelta(0), decided_at - latest.captured_at)
        track = round_.track
        return RecognitionEvent(
            event_id=round_.event_id,
            decision=decision.decision,
            subject=decision.subject,
            score=round(decision.score, 6),
            margin=round(decision.margin, 6),
            score_kind=score_kind,
            candidates=[Candidate(subject=s, score=score) for s, score in decision.candidates],
            site=track.site,
            camera=track.camera,
            agent=track.agent,
            track_id=track.track_id,
            message_ids=[uuid.UUID(f.message_id) for f in faces],
            captured_at=latest.captured_at,
            decided_at=decided_at,
            decision_latency_ms=latency.total_seconds() * 1000,
            key_epoch=latest.key_epoch,
        )


def _search_entry(event: RecognitionEvent) -> tuple[str, str, dict[str, object]]:
    return (
        "search",
        "recognizer",
        {
            "event": event.event_id,
            "decision": event.decision,
            "subject": event.subject,
            "score": f"{event.score:.4f}",
            "site": event.site,
            "camera": event.camera,
            "epoch": event.key_epoch,
            "faces": len(event.message_ids),
        },
    )
