"""Prometheus metrics of one recognizer service (its own registry, so replicas in one process
and tests do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.received = Counter(
            "rllfpr_faces_received", "Face and enrollment messages received.", registry=registry
        )
        self.rejected = Counter(
            "rllfpr_faces_rejected",
            "Messages rejected and acknowledged without processing, by reason.",
            ["reason"],
            registry=registry,
        )
        self.processed = Counter(
            "rllfpr_faces_processed",
            "Messages processed, by purpose.",
            ["purpose"],
            registry=registry,
        )
        self.acknowledged = Counter(
            "rllfpr_faces_acknowledged", "Messages acknowledged to the broker.", registry=registry
        )
        self.events = Counter(
            "rllfpr_events_published",
            "Recognition events published, by decision.",
            ["decision"],
            registry=registry,
        )
        self.transient_failures = Counter(
            "rllfpr_transient_failures",
            "Batches that failed transiently and will be retried unacknowledged, by component.",
            ["component"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "rllfpr_batch_size",
            "Messages per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        self.embed_seconds = Histogram(
            "rllfpr_embed_seconds",
            "Embedding time per micro-batch.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.search_seconds = Histogram(
            "rllfpr_search_seconds",
            "Gallery search time per micro-batch.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.decision_latency = Histogram(
            "rllfpr_decision_latency_seconds",
            "From capture of the latest face to decision.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "rllfpr_mqtt_connected", "1 while connected to the broker.", registry=registry
        )
        self.redis_up = Gauge(
            "rllfpr_redis_up", "1 while the last Redis operation succeeded.", registry=registry
        )
        self.models_loaded = Gauge(
            "rllfpr_models_loaded", "Key epochs whose recognizer is loaded.", registry=registry
        )
        self.enrollments = Counter(
            "rllfpr_templates_enrolled", "Templates enrolled.", registry=registry
        )
        self.key_messages_refused = Counter(
            "rllfpr_key_messages_refused",
            "Key announcements or revocations not acted on (bad signature, error).",
            ["reason"],
            registry=registry,
        )
        self.erasures = Counter(
            "rllfpr_templates_erased",
            "Templates erased (by request or retention).",
            ["cause"],
            registry=registry,
        )
