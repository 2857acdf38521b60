"""Enrollment station: photos of one person -> aligned -> scrambled -> enrollment face messages.

Everything before the scrambler runs on the station; only scrambled one-channel faces leave it,
as ordinary face messages with ``purpose: enroll``. Each photo contributes the face nearest its
centre (MTCNN + 5-point alignment, as the trainer prepares faces). Photos without a usable face
are reported, never silently skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from rllfpr.faces.align import AlignmentError, align
from rllfpr.faces.detect import FaceDetector, central_face, crop_box
from rllfpr.faces.pixels import load_rgb, scramble, sharpness
from rllfpr.keys.scrambler_key import ScramblerKey
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import CropBox, FaceHeader, PixelFormat, utc_now

log = logging.getLogger(__name__)
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}


@dataclass(frozen=True)
class ScrambledFace:
    source: Path
    pixels: np.ndarray  # (S, S) uint8 wire pixels
    detection_score: float
    crop: CropBox
    quality: float = 0.0  # sharpness of the aligned face, as the edge agent measures it


def photos_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder of photos: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def scramble_photos(
    paths: Sequence[Path], key: ScramblerKey, detector: FaceDetector
) -> tuple[list[ScrambledFace], list[str]]:
    """Scrambled faces of the photos, and a reason for each photo that gave none."""
    size = key.network.config.input_size
    faces, failures = [], []
    for path in paths:
        try:
            image = load_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            failures.append(f"{path.name}: unreadable ({error})")
            continue
        detection = central_face(detector.detect([image])[0], image.shape)
        if detection is None:
            failures.append(f"{path.name}: no face found")
            continue
        try:
            aligned = align(image, detection.landmarks, size)
        except AlignmentError as error:
            failures.append(f"{path.name}: {error}")
            continue
        wire = scramble(key.network, aligned[None])[0]
        crop = crop_box(detection.box, image.shape)
        faces.append(ScrambledFace(path, wire, detection.score, crop, sharpness(aligned)))
    return faces, failures


def enrollment_messages(
    faces: Sequence[ScrambledFace], key: ScramblerKey, subject: str, site: str, station: str
) -> list[tuple[str, bytes]]:
    """(topic, payload) of each scrambled face as an enrollment face message."""
    messages = []
    for face in faces:
        height, width = face.pixels.shape
        header = FaceHeader(
            purpose="enroll",
            subject=subject,
            agent=station,
            site=site,
            camera="enrollment",
            captured_at=utc_now(),
            key_epoch=key.header.epoch,
            key_scope=key.header.scope,
            track_id=0,
            detection_score=min(1.0, max(0.0, face.detection_score)),
            quality=face.quality,
            crop=face.crop,
            height=height,
            width=width,
            pixel_format=PixelFormat.UINT8,
        )
        messages.append((topics.enroll(site, subject), codec.encode(header, face.pixels)))
    return messages
