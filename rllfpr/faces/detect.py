"""Face detection with facenet-pytorch's MTCNN (weights ship inside the package)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from rllfpr.wire.messages import CropBox

MTCNN_SMALLEST_FACE = 12  # P-Net's window: MTCNN finds no smaller face at any scale


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector:
    """Batched MTCNN. Images are RGB uint8 arrays; same-sized images are detected together."""

    def __init__(
        self, min_face_size: int = 40, min_score: float = 0.9, device: str = "cpu"
    ) -> None:
        from facenet_pytorch import MTCNN  # heavy import, only where detection is needed

        self.min_score = min_score
        self.min_face_size = min_face_size
        self._mtcnn: Any = MTCNN(keep_all=True, min_face_size=min_face_size, device=device)

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {index}: expected HxWx3 uint8 RGB, got {image.shape}")
            by_shape[image.shape].append(index)
        results: list[list[Detection]] = [[] for _ in images]
        for indices in by_shape.values():
            batch = np.stack([images[i] for i in indices])
            boxes, scores, landmarks = self._mtcnn.detect(batch, landmarks=True)
            for i, b, s, marks in zip(indices, boxes, scores, landmarks, strict=True):
                if b is None:
                    continue
                results[i] = [
                    Detection(box=box, score=float(score), landmarks=mark)
                    for box, score, mark in zip(b, s, marks, strict=True)
                    if score >= self.min_score
                ]
        return results

    def detect_downscaled(
        self, images: list[np.ndarray], max_width: int, min_face_size: int
    ) -> list[list[Detection]]:
        """Detect on copies at most ``max_width`` wide, with boxes and landmarks mapped back
        to the original pixels. MTCNN's cost grows with the pixel count, so this is the cheap
        way to find faces that are large enough; ``min_face_size`` is in original pixels."""
        if not images:
            return []
        width = images[0].shape[1]
        scale = min(1.0, max_width / width)
        if any(image.shape[1] != width for image in images):
            raise ValueError("detect_downscaled expects images of one width")
        original_height = images[0].shape[0]
        height = max(1, round(original_height * scale))
        small = images
        if scale < 1.0:
            size = (max_width, height)
            small = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images]
        self._mtcnn.min_face_size = max(MTCNN_SMALLEST_FACE, int(min_face_size * scale))
        try:
            found = self.detect(small)
        finally:
            self._mtcnn.min_face_size = self.min_face_size
        if scale == 1.0:
            return found
        factors = np.array([width / max_width, original_height / height], dtype=np.float32)
        return [[_rescaled(detection, factors) for detection in row] for row in found]


def _rescaled(detection: Detection, factors: np.ndarray) -> Detection:
    """Map a detection by per-axis ``factors`` (x, y)."""
    return Detection(
        box=detection.box * np.tile(factors, 2),
        score=detection.score,
        landmarks=detection.landmarks * factors,
    )


def central_face(detections: list[Detection], image_shape: tuple[int, ...]) -> Detection | None:
    """The detection nearest the image centre (LFW's labelled person), ties to the larger."""
    if not detections:
        return None
    centre = np.array([image_shape[1] / 2.0, image_shape[0] / 2.0])

    def distance(detection: Detection) -> tuple[float, float]:
        box_centre = (detection.box[:2] + detection.box[2:]) / 2.0
        return float(np.linalg.norm(box_centre - centre)), -detection.size

    return min(detections, key=distance)


def crop_box(box: np.ndarray, frame_shape: tuple[int, ...]) -> CropBox:
    """The detection box rounded outwards to whole pixels and clipped to the frame."""
    height, width = frame_shape[:2]
    x1 = min(max(0, math.floor(float(box[0]))), width - 1)
    y1 = min(max(0, math.floor(float(box[1]))), height - 1)
    x2 = max(x1 + 1, min(width, math.ceil(float(box[2]))))
    y2 = max(y1 + 1, min(height, math.ceil(float(box[3]))))
    return CropBox(
        x=x1, y=y1, width=x2 - x1, height=y2 - y1, frame_width=width, frame_height=height
    )
