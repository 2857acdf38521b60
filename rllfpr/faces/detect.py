"""Face detection with facenet-pytorch's MTCNN (weights ship inside the package)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np


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


def central_face(detections: list[Detection], image_shape: tuple[int, ...]) -> Detection | None:
    """The detection nearest the image centre (LFW's labelled person), ties to the larger."""
    if not detections:
        return None
    centre = np.array([image_shape[1] / 2.0, image_shape[0] / 2.0])

    def distance(detection: Detection) -> tuple[float, float]:
        box_centre = (detection.box[:2] + detection.box[2:]) / 2.0
        return float(np.linalg.norm(box_centre - centre)), -detection.size

    return min(detections, key=distance)
