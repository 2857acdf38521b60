"""5-point similarity alignment to the standard ArcFace/CosFace template."""

from __future__ import annotations

import cv2
import numpy as np

# Landmarks of the 112x112 template: left eye, right eye, nose tip, mouth left, mouth right.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


class AlignmentError(ValueError):
    """The landmarks do not define a usable similarity transform."""


def template(size: int) -> np.ndarray:
    """The 5-point template scaled to a ``size`` x ``size`` face (112 and 160 are common)."""
    return TEMPLATE_112 * (size / 112.0)


def similarity_transform(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix mapping the five image landmarks onto the template (least squares)."""
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    if not np.isfinite(points).all():
        raise AlignmentError("landmarks contain NaN or infinity")
    matrix, _ = cv2.estimateAffinePartial2D(points, template(size), method=cv2.LMEDS)
    if matrix is None:
        raise AlignmentError("degenerate landmarks: no similarity transform")
    return matrix


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` (H, W, 3 uint8 RGB) so its landmarks sit on the template."""
    matrix = similarity_transform(landmarks, size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
