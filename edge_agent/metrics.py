"""Prometheus metrics of one agent and its small HTTP endpoint (``/metrics``, ``/healthz``)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import perf_counter
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

STAGES = ("read", "detect", "align", "scramble", "encode", "spool")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AgentMetrics:
    """Every metric of one agent, in its own registry (several agents can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("rllfpr_agent_frames", "Frames read from the source.", registry=r)
        self.frames_skipped = Counter(
            "rllfpr_agent_frames_skipped",
            "Frames not processed: unreadable, or dropped because the pipeline fell behind a "
            "live source.",
            ["reason"],
            registry=r,
        )
        self.source_reconnects = Counter(
            "rllfpr_agent_source_reconnects", "Times the source was reopened.", registry=r
        )
        self.faces_detected = Counter(
            "rllfpr_agent_faces_detected", "Faces found by the detector.", registry=r
        )
        self.faces_rejected = Counter(
            "rllfpr_agent_faces_rejected",
            "Detected faces failing a gate (small, low_score, alignment, blurry).",
            ["reason"],
            registry=r,
        )
        self.faces_suppressed = Counter(
            "rllfpr_agent_faces_suppressed",
            "Usable faces not sent because their track already sent enough or better ones.",
            ["reason"],
            registry=r,
        )
        self.faces_queued = Counter(
            "rllfpr_agent_faces_queued",
            "Scrambled faces encoded and put in the spool.",
            registry=r,
        )
        self.faces_published = Counter(
            "rllfpr_agent_faces_published",
            "Face messages acknowledged by the broker.",
            registry=r,
        )
        self.faces_unrouted = Counter(
            "rllfpr_agent_faces_unrouted",
            "Face messages the broker accepted with no subscriber to hand them to (no "
            "recognizer subscribed): kept in the spool and sent again.",
            registry=r,
        )
        self.faces_dropped = Counter(
            "rllfpr_agent_faces_dropped",
            "Faces lost on purpose: no_key (never scrambled, never sent), spool_full (oldest "
            "message dropped), expired, refused (by the broker), error.",
            ["reason"],
            registry=r,
        )
        self.spool_depth = Gauge(
            "rllfpr_agent_spool_messages", "Messages waiting in the spool.", registry=r
        )
        self.spool_bytes = Gauge(
            "rllfpr_agent_spool_bytes", "Payload bytes waiting in the spool.", registry=r
        )
        self.tracks = Gauge("rllfpr_agent_tracks", "Faces being tracked.", registry=r)
        self.stage_seconds = Histogram(
            "rllfpr_agent_stage_seconds",
            "Time per pipeline stage and batch of frames.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.key_epoch = Gauge(
            "rllfpr_agent_key_epoch", "Active key epoch; -1 without a key.", registry=r
        )
        self.key_epoch.set(-1)
        self.key_messages = Counter(
            "rllfpr_agent_key_messages",
            "Key bundles, announcements and revocations by outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "rllfpr_agent_broker_connected", "1 while connected to the broker.", registry=r
        )

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage).observe(perf_counter() - start)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge (tests and the CLI summary read it)."""
        for suffix in ("_total", ""):
            sample = self.registry.get_sample_value(f"rllfpr_agent_{name}{suffix}", labels)
            if sample is not None:
                return sample
        return 0.0


Health = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (JSON; 503 when failing)."""

    def __init__(self, metrics: AgentMetrics, health: Health, host: str, port: int) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif self.path == "/healthz":
                    healthy, details = health()
                    body = json.dumps(details).encode()
                    self._reply(200 if healthy else 503, "application/json", body)
                else:
                    self._reply(404, "text/plain", b"not found\n")

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="agent-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
