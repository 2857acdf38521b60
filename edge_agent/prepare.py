"""Detection gates, alignment and sharpness: from frames to aligned faces worth scrambling.

Detection runs on downscaled copies of the frames (``detect_width``), in one MTCNN batch per
frame size; alignment crops from the full-resolution frame with the shared 5-point template.
A face is rejected, with the reason counted, when it is smaller than ``min_face_size``, less
certain than ``min_detection_score``, cannot be aligned, or is blurrier than
``min_sharpness`` (variance of the Laplacian of the aligned grey face, which is also the
quality that ranks a track's faces). Aligned faces live only in memory, until scrambled.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import cv2
import numpy as np

from rllfpr.faces.align import AlignmentError, align
from rllfpr.faces.detect import Detection, FaceDetector
from rllfpr.wire.messages import CropBox


def sharpness(face: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB face's grey levels: low means blurred."""
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


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
