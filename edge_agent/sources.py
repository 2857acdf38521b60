"""Frame sources: image folders, video files, cameras and network streams.

Every source yields ``Frame`` objects (RGB uint8). Frames of one *scene* share tracks; a new
scene resets the tracker:

- an image folder replays its images (sorted, recursively; decoded by
  ``rllfpr.faces.pixels.load_rgb``, as the station and the trainer decode photos) at a set frame
  rate; each image is its own scene unless the folder is declared a sequence;
- a video file plays once at a set frame rate, one scene;
- a camera index or a stream URL (RTSP, HTTP) runs at its own rate and is reopened with
  exponential back-off when it fails; each reconnection starts a new scene.

Unreadable images and frames are skipped and counted, never fatal. A folder or file that
cannot be opened at all raises ``SourceError`` with the reason.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from rllfpr.faces.pixels import load_rgb
from rllfpr.wire.messages import utc_now

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff"})
_STREAM_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class SourceError(RuntimeError):
    """A source cannot be opened or read at all."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    index: int  # position in the source, from 0
    scene: int  # frames of one scene share tracks
    captured_at: datetime
    origin: str  # file name or stream position, for logs


class FrameSource(Protocol):
    """An iterable of frames; ``live`` sources cannot wait for a slow pipeline."""

    live: bool
    description: str

    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...


Unreadable = Callable[[str], None]  # called with the reason when a frame is skipped


def _ignore(_reason: str) -> None:
    return None


def to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR, BGRA or grey image -> RGB uint8; raises ``ValueError`` otherwise."""
    if image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"expected a non-empty uint8 image, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"unsupported image shape {image.shape}")


class Pacer:
    """Sleeps so that successive ``wait`` calls return at ``fps`` (no sleeping when 0)."""

    def __init__(self, fps: float) -> None:
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._next = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        if not self._period:
            return
        delay = self._next - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        self._next = max(self._next + self._period, time.monotonic() - self._period)


class ImageFolderSource:
    live = False

    def __init__(
        self,
        folder: Path,
        fps: float,
        sequence: bool,
        on_unreadable: Unreadable = _ignore,
    ) -> None:
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self.files = sorted(
            path
            for path in folder.rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.fps = fps
        self.sequence = sequence
        self.description = f"image folder {folder} ({len(self.files)} images)"
        self._on_unreadable = on_unreadable

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        pacer = Pacer(self.fps)
        for index, path in enumerate(self.files):
            if stop.is_set():
                return
            pacer.wait(stop)
            try:
                image = load_rgb(path)
            except (OSError, ValueError) as error:
                log.warning("skipping unreadable image %s: %s", path, error)
                self._on_unreadable(str(error))
                continue
            scene = 0 if self.sequence else index
            yield Frame(image, index, scene, utc_now(), path.name)


@dataclass(frozen=True)
class Backoff:
    initial_s: float
    max_s: float

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield min(delay, self.max_s)
            delay = min(delay * 2, self.max_s)


class CaptureSource:
    """OpenCV ``VideoCapture`` of a camera index, a stream URL or a video file."""

    def __init__(
        self,
        spec: str,
        fps: float,
        backoff: Backoff,
        on_unreadable: Unreadable = _ignore,
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.target: int | str = int(spec) if spec.isdigit() else spec
        self.live = isinstance(self.target, int) or bool(_STREAM_URL.match(spec))
        if not self.live:
            path = Path(spec)
            if not path.is_file():
                raise SourceError(f"video file not found: {spec}")
            if not self._open().isOpened():
                raise SourceError(f"cannot open video file {spec} (not a video OpenCV reads)")
        self.description = f"{'camera' if isinstance(self.target, int) else 'stream'} {spec}"
        if not self.live:
            self.description = f"video file {spec}"
        self.fps = fps
        self.backoff = backoff
        self._on_unreadable = on_unreadable
        self._on_reconnect = on_reconnect

    def _open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.target)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        if not self.live:
            yield from self._play_file(stop)
            return
        index = 0
        scene = 0
        delays = self.backoff.delays()
        while not stop.is_set():
            capture = self._open()
            if not capture.isOpened():
                delay = next(delays)
                log.error("cannot open %s; retrying in %.1f s", self.description, delay)
                self._on_reconnect()
                stop.wait(delay)
                continue
            log.info("%s opened", self.description)
            delays = self.backoff.delays()  # a successful open resets the back-off
            for frame in self._read_until_failure(capture, stop, index, scene):
                index = frame.index + 1
                yield frame
            scene += 1
            if not stop.is_set():
                log.warning("%s stopped delivering frames; reopening", self.description)
                self._on_reconnect()

    def _read_until_failure(
        self, capture: cv2.VideoCapture, stop: threading.Event, index: int, scene: int
    ) -> Iterator[Frame]:
        try:
            while not stop.is_set():
                ok, image = capture.read()
                if not ok or image is None:
                    return
                try:
                    rgb = to_rgb(image)
                except ValueError as error:
                    self._on_unreadable(str(error))
                    continue
                yield Frame(rgb, index, scene, utc_now(), f"frame {index}")
                index += 1
        finally:
            capture.release()

    def _play_file(self, stop: threading.Event) -> Iterator[Frame]:
        pacer = Pacer(self.fps)
        capture = self._open()
        for frame in self._read_until_failure(capture, stop, 0, 0):
            pacer.wait(stop)
            yield frame


def open_source(
    spec: str,
    *,
    fps: float,
    sequence: bool,
    backoff: Backoff,
    on_unreadable: Unreadable = _ignore,
    on_reconnect: Callable[[], None] = lambda: None,
) -> FrameSource:
    """A folder path, a video file path, a camera index (``0``) or a stream URL."""
    if not _STREAM_URL.match(spec) and not spec.isdigit():
        path = Path(spec).expanduser()
        if path.is_dir():
            return ImageFolderSource(path, fps, sequence, on_unreadable)
        if not path.exists():
            raise SourceError(f"source not found: {spec} (a folder, video file, index or URL)")
        spec = str(path)
    return CaptureSource(spec, fps, backoff, on_unreadable, on_reconnect)


class FrameReader:
    """Reads a source in a thread, ahead of the pipeline, into a bounded buffer.

    Live sources drop the oldest buffered frame when the buffer is full (``on_overflow``);
    files and folders make the reader wait. A source that fails raises ``SourceError`` from
    ``take`` once the frames read before the failure are consumed.
    """

    def __init__(
        self,
        source: FrameSource,
        capacity: int,
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self._buffer: deque[Frame | None] = deque()  # None marks the end of the source
        self._capacity = capacity
        self._on_overflow = on_overflow
        self._condition = threading.Condition()
        self._failure: BaseException | None = None
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source.frames(self.stop):
                self._put(frame)
        except Exception as error:  # reported to the pipeline by take()
            log.exception("source %s failed", self.source.description)
            self._failure = error
        self._put(None)

    def _put(self, item: Frame | None) -> None:
        with self._condition:
            while item is not None and len(self._buffer) >= self._capacity:
                if self.source.live:
                    self._buffer.popleft()
                    self._on_overflow()
                elif self.stop.is_set():
                    return
                else:
                    self._condition.wait(0.1)
            self._buffer.append(item)
            self._condition.notify_all()

    def take(self, limit: int, timeout_s: float) -> list[Frame] | None:
        """Up to ``limit`` buffered frames, waiting up to ``timeout_s`` for the first; an
        empty list when none came in time, ``None`` when the source has ended."""
        with self._condition:
            if not self._buffer:
                self._condition.wait(timeout_s)
            frames: list[Frame] = []
            while self._buffer and len(frames) < limit:
                head = self._buffer[0]
                if head is None:
                    break
                frames.append(head)
                self._buffer.popleft()
            ended = not frames and bool(self._buffer) and self._buffer[0] is None
            self._condition.notify_all()
        if ended and self._failure is not None:
            raise SourceError(f"{self.source.description} failed: {self._failure}")
        return None if ended else frames

    def close(self) -> None:
        self.stop.set()
        with self._condition:
            self._condition.notify_all()
        self._thread.join(timeout=5)
