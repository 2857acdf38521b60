"""Detection gates, alignment and sharpness: from frames to aligned faces worth scrambling.

Detection runs on downscaled copies of the frames (``detect_width``), in one MTCNN batch per
frame size; alignment crops from the full-resolution frame with the shared 5-point template.
A face is rejected, with the reason counted, when it is smaller than ``min_face_size``, less
certain than ``min_detection_score``, cannot be aligned, or is blurrier than
``min_sharpness`` (variance of the Laplacian of the aligned grey face, which is also the
quality that ranks a track's faces). Aligned faces live only in memory, until scrambled.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from rllfpr.faces.align import AlignmentError, align
from rllfpr.faces.detect import Detection, FaceDetector
from rllfpr.faces.pixels import sharpness


@dataclass(frozen=True)
class AlignedFace:
    detection: Detection
    face: np.ndarray  # (S, S, 3) uint8 RGB: raw, never stored, never sent
    sharpness: float


class FacePreparer:
    def __init__(
        self,
        detector: FaceDetector,
        *,
        detect_width: int,
        min_face_size: int,
        min_detection_score: float,
        min_sharpness: float,
    ) -> None:
        self.detector = detector
        self.detect_width = detect_width
        self.min_face_size = min_face_size
        self.min_detection_score = min_detection_score
        self.min_sharpness = min_sharpness

    def detect(self, images: list[np.ndarray]) -> tuple[list[list[Detection]], Counter[str]]:
        """Gated detections of each image, and the rejections by reason."""
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[image.shape].append(index)
        found: list[list[Detection]] = [[] for _ in images]
        for indices in by_shape.values():
            batch = [images[i] for i in indices]
            detections = self.detector.detect_downscaled(
                batch, self.detect_width, self.min_face_size
            )
            for index, row in zip(indices, detections, strict=True):
                found[index] = row
        rejected: Counter[str] = Counter()
        gated = [[d for d in row if self._keep(d, rejected)] for row in found]
        return gated, rejected

    def _keep(self, detection: Detection, rejected: Counter[str]) -> bool:
        if detection.size < self.min_face_size:
            rejected["small"] += 1
            return False
        if detection.score < self.min_detection_score:
            rejected["low_score"] += 1
            return False
        return True

    def align(self, image: np.ndarray, detection: Detection, size: int) -> AlignedFace | str:
        """The aligned face, or the reason it is rejected."""
        try:
            face = align(image, detection.landmarks, size)
        except AlignmentError:
            return "alignment"
        quality = sharpness(face)
        if quality < self.min_sharpness:
            return "blurry"
        return AlignedFace(detection, face, quality)
