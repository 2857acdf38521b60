"""The edge agent: frames in, scrambled faces out, and never a raw face off the device.

Pipeline per batch of frames (taken from the read-ahead buffer, at most ``max_batch_frames``):

1. plan which frames to detect: a scene's first frame and every ``detect_every``-th after;
2. detect them in one MTCNN batch at reduced resolution; gate size and score;
3. link detections to tracks (IoU); the other frames only count;
4. under the active key: align each face at the key's input size, gate sharpness, ask the
   track whether the face is worth a message, scramble the chosen faces in one batch;
5. encode each as a face message (header without landmarks; pixels = SN output only) and
   write it to the spool, from which the MQTT link publishes it.

Without an active key, faces are counted as dropped (``no_key``) before alignment: nothing
raw is ever queued waiting for a key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_agent.backends import ScramblerBackend, build_backend, resolve
from edge_agent.keys import ActiveKey, AgentKeys
from edge_agent.link import AgentLink
from edge_agent.metrics import AgentMetrics, HealthServer
from edge_agent.prepare import AlignedFace, FacePreparer
from edge_agent.sources import Backoff, Frame, FrameReader, FrameSource, open_source
from edge_agent.spool import Spool
from edge_agent.tracker import IouTracker, Verdict
from rllfpr.config import AgentSettings, Settings
from rllfpr.faces.detect import Detection, FaceDetector, crop_box
from rllfpr.faces.pixels import pick_device
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import FaceHeader, PixelFormat

log = logging.getLogger(__name__)


class AgentConfigError(ValueError):
    """The agent's configuration is incomplete or inconsistent."""


@dataclass(frozen=True)
class Identity:
    agent: str
    site: str
    camera: str


def identity(settings: AgentSettings) -> Identity:
    if not settings.site or not settings.camera:
        raise AgentConfigError("the agent needs a site and a camera (--site, --camera)")
    agent = settings.id or f"{settings.site}-{settings.camera}"[:64]
    return Identity(topics.level(agent), topics.level(settings.site), topics.level(settings.camera))


@dataclass(frozen=True)
class Candidate:
    frame: Frame
    track_id: int
    aligned: AlignedFace


class Agent:
    def __init__(
        self,
        settings: Settings,
        source: str | FrameSource,
        detector: FaceDetector | None = None,
    ) -> None:
        """``source``: a folder, video file, camera index or stream URL, or a ready source.
        Raises ``AgentConfigError``, ``SourceError`` or ``KeyMaterialError`` with the reason."""
        self.settings = settings
        config = settings.agent
        self.config = config
        self.who = identity(config)
        self.metrics = AgentMetrics()
        self.source = source if not isinstance(source, str) else self._open(source)
        self.spool = Spool(
            config.spool_dir / f"{self.who.agent}.sqlite3",
            config.spool_max_messages,
            int(config.spool_max_mb * 1024 * 1024),
            on_drop=lambda reason, count: self.metrics.faces_dropped.labels(reason).inc(count),
        )
        if config.threads:
            torch.set_num_threads(config.threads)
        backend_name = resolve(config.backend)
        device = str(pick_device(config.device))

        def make_backend(network: ScramblerNetwork, engine_dir: Path) -> ScramblerBackend:
            return build_backend(
                backend_name, network, device=device, engine_dir=engine_dir, threads=config.threads
            )

        self.backend_name = backend_name
        self.keys = AgentKeys(
            settings.keys,
            settings.keys.directory / f"agent-{self.who.agent}",
            make_backend,
            self.metrics,
            config.key_settle_s,
            on_change=self._key_changed,
            on_revoke=self.spool.drop_epoch,
        )
        self.link = AgentLink(
            settings.mqtt,
            agent=self.who.agent,
            site=self.who.site,
            camera=self.who.camera,
            key_scope=settings.keys.scope,
            spool=self.spool,
            metrics=self.metrics,
            on_key_message=self.keys.submit,
            max_inflight=config.max_inflight,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            status_interval_s=config.status_interval_s,
        )
        self.preparer = FacePreparer(
            detector
            or FaceDetector(
                min_face_size=config.min_face_size,
                min_score=0.0,
                device=device,
                backend=config.detector_backend,
                threads=config.threads,
                cache=settings.cache,
            ),
            detect_width=config.detect_width,
            min_face_size=config.min_face_size,
            min_detection_score=config.min_detection_score,
            min_sharpness=config.min_sharpness,
        )
        self.tracker = IouTracker(
            config.iou_threshold,
            config.max_missed_detections,
            config.max_messages_per_track,
            config.improvement_ratio,
            first_id=int(time.time() * 1000) % 2**31,  # distinct across restarts
        )
        self.topic = topics.faces(self.who.site, self.who.camera)
        self.stop_event = threading.Event()
        self._scene: int | None = None  # of the last frame the tracker saw
        self._planned_scene: int | None = None  # of the last frame planned for detection
        self._since_detection = 0
        self._last_frame_at = time.monotonic()
        self._failure: str | None = None
        self.http: HealthServer | None = None

    def _open(self, spec: str) -> FrameSource:
        config, metrics = self.config, self.metrics
        return open_source(
            spec,
            fps=config.replay_fps,
            sequence=config.sequence,
            backoff=Backoff(config.reconnect_initial_s, config.reconnect_max_s),
            on_unreadable=lambda _reason: metrics.frames_skipped.labels("unreadable").inc(),
            on_reconnect=metrics.source_reconnects.inc,
        )

    # ----- life cycle
    def start(self) -> None:
        self.keys.start()
        self.link.start()
        self._key_changed(self.keys.current())
        self.http = HealthServer(
            self.metrics, self.health, self.config.metrics_host, self.config.metrics_port
        )
        log.info(
            "agent %s: %s -> %s, detector %s, scrambler backend %s, metrics on port %d",
            self.who.agent,
            self.source.description,
            self.topic,
            self.preparer.detector.backend,
            self.backend_name,
            self.http.port,
        )

    def close(self, flush_timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        self.link.close(flush_timeout_s)
        self.keys.close()
        if self.http is not None:
            self.http.close()
        self.spool.close()

    def run(self) -> None:
        """Process frames until the source ends or ``stop_event`` is set."""
        reader = FrameReader(
            self.source,
            self.config.frame_buffer,
            on_overflow=lambda: self.metrics.frames_skipped.labels("behind").inc(),
        )
        try:
            while not self.stop_event.is_set():
                with self.metrics.timed("read"):
                    frames = reader.take(self.config.max_batch_frames, timeout_s=0.5)
                if frames is None:
                    log.info("source ended: %s", self.source.description)
                    return
                if frames:
                    self.process(frames)
        except Exception as error:
            self._failure = str(error)
            raise
        finally:
            reader.close()

    def wait_for_key(self, timeout_s: float) -> bool:
        """Wait until a key is active (restored from disk or received); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.keys.current() is None and time.monotonic() < deadline:
            if self.stop_event.wait(0.05):
                break
        return self.keys.current() is not None

    def drain(self, timeout_s: float) -> bool:
        """Wait until the spool is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.spool.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.spool.depth == 0

    # ----- status and health
    def _key_changed(self, key: ActiveKey | None) -> None:
        if key is None:
            self.link.set_status(None, "no active key: faces are dropped")
        else:
            self.link.set_status(key.epoch, None)

    def health(self) -> tuple[bool, dict[str, Any]]:
        key = self.keys.current()
        frame_age = time.monotonic() - self._last_frame_at
        failing = self._failure is not None or frame_age > self.config.stale_after_s
        degraded = key is None or not self.link.connected.is_set()
        details = {
            "status": "failing" if failing else "degraded" if degraded else "ok",
            "agent": self.who.agent,
            "source": self.source.description,
            "key_epoch": None if key is None else key.epoch,
            "broker_connected": self.link.connected.is_set(),
            "spool_messages": self.spool.depth,
            "seconds_since_frame": round(frame_age, 3),
            "error": self._failure,
        }
        return not failing, details

    # ----- the pipeline
    def process(self, frames: list[Frame]) -> None:
        self._last_frame_at = time.monotonic()
        self.metrics.frames.inc(len(frames))
        plan = [self._detect_now(frame) for frame in frames]
        chosen = [frame for frame, detect in zip(frames, plan, strict=True) if detect]
        with self.metrics.timed("detect"):
            detections, rejected = self.preparer.detect([frame.image for frame in chosen])
        self._count("faces_rejected", rejected)
        found = dict(zip((id(frame) for frame in chosen), detections, strict=True))
        with self.keys.using() as key:
            with self.metrics.timed("align"):
                candidates = self._track_and_select(frames, found, key)
            if key is None or not candidates:
                return
            with self.metrics.timed("scramble"):
                pixels = key.backend.scramble(np.stack([c.aligned.face for c in candidates]))
            # Spooled while the key is held: a revocation waits for this, then drops the
            # epoch's spooled faces; spooled after it, they would be published under a
            # revoked key.
            self._spool(candidates, key, pixels)

    def _detect_now(self, frame: Frame) -> bool:
        """A scene's first frame, then every ``detect_every``-th (decided before detecting)."""
        if frame.scene != self._planned_scene:
            self._planned_scene = frame.scene
            self._since_detection = 0
            return True
        self._since_detection += 1
        return self._since_detection % self.config.detect_every == 0

    def _track_and_select(
        self, frames: list[Frame], found: dict[int, list[Detection]], key: ActiveKey | None
    ) -> list[Candidate]:
        """In frame order: link detections to tracks, then keep the aligned faces that pass
        the sharpness gate and that their track wants sent. Without a key, nothing is aligned
        and every face is dropped."""
        rejected: Counter[str] = Counter()
        suppressed: Counter[str] = Counter()
        chosen = []
        for frame in frames:
            if self._scene != frame.scene:
                self._scene = frame.scene
                self.tracker.new_scene()
            detections = found.get(id(frame))
            if detections is None:
                continue
            self.metrics.faces_detected.inc(len(detections))
            track_ids, _ended = self.tracker.update([d.box for d in detections])
            if key is None:
                self.metrics.faces_dropped.labels("no_key").inc(len(detections))
                continue
            for detection, track_id in zip(detections, track_ids, strict=True):
                aligned = self.preparer.align(frame.image, detection, key.input_size)
                if isinstance(aligned, str):
                    rejected[aligned] += 1
                    continue
                verdict = self.tracker.judge(track_id, aligned.sharpness)
                if verdict is Verdict.PUBLISH:
                    chosen.append(Candidate(frame, track_id, aligned))
                else:
                    suppressed[verdict.value] += 1
        self.metrics.tracks.set(len(self.tracker.tracks))
        self._count("faces_rejected", rejected)
        self._count("faces_suppressed", suppressed)
        return chosen

    def _spool(self, candidates: list[Candidate], key: ActiveKey, pixels: np.ndarray) -> None:
        with self.metrics.timed("encode"):
            messages = [
                self._encode(candidate, key, image)
                for candidate, image in zip(candidates, pixels, strict=True)
            ]
        with self.metrics.timed("spool"):
            expires_at = time.time() + self.settings.mqtt.message_expiry_s
            for payload in messages:
                self.spool.put(self.topic, payload, expires_at, key.epoch)
        self.metrics.faces_queued.inc(len(messages))
        self.metrics.spool_depth.set(self.spool.depth)
        self.link.wake()

    def _encode(self, candidate: Candidate, key: ActiveKey, pixels: np.ndarray) -> bytes:
        frame, detection = candidate.frame, candidate.aligned.detection
        header = FaceHeader(
            agent=self.who.agent,
            site=self.who.site,
            camera=self.who.camera,
            captured_at=frame.captured_at,
            key_epoch=key.epoch,
            key_scope=key.scope,
            track_id=candidate.track_id,
            detection_score=min(1.0, max(0.0, detection.score)),
            quality=candidate.aligned.sharpness,
            crop=crop_box(detection.box, frame.image.shape),
            height=pixels.shape[0],
            width=pixels.shape[1],
            pixel_format=PixelFormat.UINT8,
        )
        return codec.encode(header, pixels)

    def _count(self, metric: str, counts: Counter[str]) -> None:
        counter = getattr(self.metrics, metric)
        for reason, count in counts.items():
            counter.labels(reason).inc(count)
