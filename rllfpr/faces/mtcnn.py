"""MTCNN's detection pipeline in NumPy, around three networks that any runtime can run.

This is facenet-pytorch's ``detect_face`` (version 2.6.0), step for step and in the same
float32 arithmetic, so a runtime that computes the networks like torch finds the same faces:

1. an image pyramid from ``12 / min_face_size`` down by ``FACTOR`` while the short side holds
   a 12-pixel window; at each scale P-Net (fully convolutional) scores every 12x12 window of
   every image of the batch in one call; windows above ``THRESHOLDS[0]`` become boxes, NMS at
   IoU 0.5 per scale and image, then 0.7 per image over all scales;
2. R-Net scores 24x24 crops of the survivors (one call for every box of every image), keeps
   those above ``THRESHOLDS[1]``, NMS 0.7, box regression;
3. O-Net scores 48x48 crops (one call), keeps those above ``THRESHOLDS[2]``, adds the five
   landmarks, box regression, NMS 0.7 on the intersection over the smaller box.

Resizing is torch's ``interpolate(mode="area")`` (adaptive average pooling: each output pixel
is the mean of the input pixels its window covers), computed here from an integral image:
the same sums, the same two divisions, bit for bit. Crops clip to the image as
facenet-pytorch does (no zero padding). NMS is the reference's own code (torchvision's
``batched_nms``, facenet-pytorch's ``batched_nms_numpy``), so ties break the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net
FACTOR = 0.709  # pyramid step
WINDOW = 12  # P-Net's window: no smaller face is found at any scale
_F = np.float32


class Networks(Protocol):
    """MTCNN's three networks on normalized float32 NCHW input ((pixel - 127.5) / 128)."""

    def pnet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) -> box regression (N, 4, h, w) and face probability (N, h, w)."""
        ...

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, 3, 24, 24) -> box regression (K, 4) and face probability (K,)."""
        ...

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(K, 3, 48, 48) -> box regression (K, 4), landmarks (K, 10), probability (K,)."""
        ...


@dataclass(frozen=True)
class Faces:
    """The faces of one image, largest first (as facenet-pytorch's ``MTCNN.detect``)."""

    boxes: np.ndarray  # (k, 4) float32: x1, y1, x2, y2
    scores: np.ndarray  # (k,) float32
    landmarks: np.ndarray  # (k, 5, 2) float32: eyes, nose, mouth corners


def pyramid(height: int, width: int, min_face_size: int) -> list[float]:
    """The scales at which P-Net looks for faces of at least ``min_face_size`` pixels."""
    m = 12.0 / min_face_size
    shortest = min(height, width) * m
    scales, scale = [], m
    while shortest >= 12:
        scales.append(scale)
        scale *= FACTOR
        shortest *= FACTOR
    return scales


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """P-Net's input size at ``scale`` (facenet-pytorch rounds up by one pixel)."""
    return int(height * scale + 1), int(width * scale + 1)


def detect(images: np.ndarray, min_face_size: int, networks: Networks) -> list[Faces]:
    """Faces in each image of ``images`` (N, H, W, 3) uint8 RGB."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    count, height, width = images.shape[:3]
    integral = np.stack([cv2.integral(image) for image in images])  # (N, H+1, W+1, 3) int32
    boxes, owner = _propose(integral, height, width, min_face_size, networks)
    if len(boxes):
        boxes, owner = _refine(integral, boxes, owner, height, width, networks)
    landmarks = np.zeros((0, 5, 2), _F)
    if len(boxes):
        boxes, owner, landmarks = _output(integral, boxes, owner, height, width, networks)
    faces = []
    for index in range(count):
        mine = np.flatnonzero(owner == index)
        box, points = boxes[mine], landmarks[mine]
        order = np.argsort((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[::-1]
        box, points = box[order], points[order]
        faces.append(Faces(box[:, :4].copy(), box[:, 4].copy(), points.copy()))
    return faces


# ----- the three stages
def _propose(
    integral: np.ndarray, height: int, width: int, min_face_size: int, networks: Networks
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: P-Net over the pyramid: squared boxes (M, 5) and the image of each."""
    every_box, every_owner = [], []
    for scale in pyramid(height, width, min_face_size):
        size = scaled_size(height, width, scale)
        images = _normalized(resize_images(integral, size))
        regression, probability = networks.pnet(images)
        boxes, owner = _windows(regression, probability, scale, THRESHOLDS[0])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.5)
        every_box.append(boxes[keep])
        every_owner.append(owner[keep])
    if not every_box:
        return np.zeros((0, 9), _F), np.zeros(0, np.intp)
    boxes, owner = np.concatenate(every_box), np.concatenate(every_owner)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
    boxes, owner = boxes[keep], owner[keep]
    span_x, span_y = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    regressed = np.stack(
        [
            boxes[:, 0] + boxes[:, 5] * span_x,
            boxes[:, 1] + boxes[:, 6] * span_y,
            boxes[:, 2] + boxes[:, 7] * span_x,
            boxes[:, 3] + boxes[:, 8] * span_y,
            boxes[:, 4],
        ],
        axis=1,
    )
    return _square(regressed), owner


def _refine(
    integral: np.ndarray,
    boxes: np.ndarray,
    owner: np.ndarray,
    height: int,
    width: int,
    networks: Networks,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2: R-Net on 24x24 crops of every proposal."""
    boxes, owner, windows = _crop_windows(boxes, owner, height, width)
    if not len(boxes):
        return boxes, owner
    regression, score = networks.rnet(_normalized(resize_crops(integral, owner, windows, 24)))
    passed = score > THRESHOLDS[1]
    boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
    owner, regression = owner[passed], regression[passed]
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
    return _square(_regress(boxes[keep], regression[keep])), owner[keep]


def _output(
    integral: np.ndarray,
    boxes: np.ndarray,
    owner: np.ndarray,
    height: int,
    width: int,
    networks: Networks,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 3: O-Net on 48x48 crops: final boxes, scores and landmarks."""
    boxes, owner, windows = _crop_windows(boxes, owner, height, width)
    if not len(boxes):
        return boxes, owner, np.zeros((0, 5, 2), _F)
    regression, points, score = networks.onet(
        _normalized(resize_crops(integral, owner, windows, 48))
    )
    passed = score > THRESHOLDS[2]
    boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
    owner, regression, points = owner[passed], regression[passed], points[passed]
    span_x = boxes[:, 2] - boxes[:, 0] + _F(1)
    span_y = boxes[:, 3] - boxes[:, 1] + _F(1)
    landmarks = np.stack(
        [
            span_x[:, None] * points[:, :5] + boxes[:, 0, None] - _F(1),
            span_y[:, None] * points[:, 5:] + boxes[:, 1, None] - _F(1),
        ],
        axis=2,
    )
    boxes = _regress(boxes, regression)
    keep = _nms_min(boxes, owner, 0.7)
    return boxes[keep], owner[keep], landmarks[keep]


# ----- P-Net windows and box arithmetic
def _windows(
    regression: np.ndarray, probability: np.ndarray, scale: float, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """P-Net's windows above ``threshold`` as boxes (M, 9): x1 y1 x2 y2 score and regression."""
    image, row, column = np.nonzero(probability >= _F(threshold))
    score = probability[image, row, column]
    offsets = regression[image, :, row, column]
    corner = np.stack([column, row], axis=1).astype(_F)
    scale32 = _F(scale)
    first = np.floor((_F(2) * corner + _F(1)) / scale32)
    last = np.floor((_F(2) * corner + _F(12)) / scale32)
    boxes = np.concatenate([first, last, score[:, None], offsets], axis=1).astype(_F)
    return boxes, image.astype(np.intp)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the box regression of R-Net or O-Net (facenet-pytorch's ``bbreg``)."""
    span_x = boxes[:, 2] - boxes[:, 0] + _F(1)
    span_y = boxes[:, 3] - boxes[:, 1] + _F(1)
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + offsets[:, 0] * span_x
    out[:, 1] = boxes[:, 1] + offsets[:, 1] * span_y
    out[:, 2] = boxes[:, 2] + offsets[:, 2] * span_x
    out[:, 3] = boxes[:, 3] + offsets[:, 3] * span_y
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    """Squares around each box's centre, side the longer one (facenet-pytorch's ``rerec``)."""
    out = boxes.copy()
    span_y = boxes[:, 3] - boxes[:, 1]
    span_x = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(span_x, span_y)
    out[:, 0] = boxes[:, 0] + span_x * _F(0.5) - side * _F(0.5)
    out[:, 1] = boxes[:, 1] + span_y * _F(0.5) - side * _F(0.5)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _crop_windows(
    boxes: np.ndarray, owner: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel windows (K, 4: top, bottom, left, right, end exclusive) of the boxes, clipped to
    the image as facenet-pytorch's ``pad``; boxes whose window is empty are dropped."""
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    left = np.maximum(corners[:, 0], 1) - 1
    top = np.maximum(corners[:, 1], 1) - 1
    right = np.minimum(corners[:, 2], width)
    bottom = np.minimum(corners[:, 3], height)
    usable = (bottom > top) & (right > left)
    windows = np.stack([top, bottom, left, right], axis=1)[usable]
    return boxes[usable], owner[usable], windows


# ----- resizing (torch's area interpolation, from integral images)
def _bounds(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling: the windows [first, last) of ``out`` cells over
    [start, start + length), one row per (start, length)."""
    cells = np.arange(out, dtype=np.int64)[None, :]
    first = start[:, None] + (cells * length[:, None]) // out
    last = start[:, None] - (-(cells + 1) * length[:, None]) // out
    return first, last


def _mean(sums: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Window sums (..., h, w, 3) int32 -> means (..., 3, h, w) float32, divided as torch does
    (by the window's height, then by its width)."""
    means = sums.astype(_F) / rows[..., :, None, None].astype(_F)
    means /= columns[..., None, :, None].astype(_F)
    return np.ascontiguousarray(np.moveaxis(means, -1, -3))


def resize_images(integral: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Whole images, from their integral images (N, H+1, W+1, 3), resized by area to
    ``size`` (height, width): (N, 3, height, width) float32."""
    height, width = integral.shape[1] - 1, integral.shape[2] - 1
    top, bottom = _bounds(np.zeros(1, np.int64), np.array([height]), size[0])
    left, right = _bounds(np.zeros(1, np.int64), np.array([width]), size[1])
    band = integral.take(bottom[0], axis=1) - integral.take(top[0], axis=1)
    sums = band.take(right[0], axis=2) - band.take(left[0], axis=2)
    return _mean(sums, bottom[0] - top[0], right[0] - left[0])


def resize_crops(
    integral: np.ndarray, owner: np.ndarray, windows: np.ndarray, size: int
) -> np.ndarray:
    """Windows (K, 4: top, bottom, left, right) of images ``owner`` (K,), resized by area to
    ``size`` x ``size``: (K, 3, size, size) float32."""
    stride_y, stride_x = integral.shape[1], integral.shape[2]
    flat = integral.reshape(-1, 3)
    top, bottom = _bounds(windows[:, 0], windows[:, 1] - windows[:, 0], size)
    left, right = _bounds(windows[:, 2], windows[:, 3] - windows[:, 2], size)
    base = owner.astype(np.int64)[:, None, None] * (stride_y * stride_x)
    upper, lower = base + top[:, :, None] * stride_x, base + bottom[:, :, None] * stride_x
    sums = (
        flat.take(lower + right[:, None, :], axis=0)
        - flat.take(upper + right[:, None, :], axis=0)
        - flat.take(lower + left[:, None, :], axis=0)
        + flat.take(upper + left[:, None, :], axis=0)
    )
    return _mean(sums, bottom - top, right - left)


def _normalized(pixels: np.ndarray) -> np.ndarray:
    return (pixels - _F(127.5)) * _F(0.0078125)


# ----- NMS: the reference's own functions
def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float
) -> np.ndarray:
    """torchvision's ``batched_nms`` (IoU, within each group): kept indices by score."""
    from torchvision.ops import batched_nms as torchvision_batched_nms

    if not len(boxes):
        return np.zeros(0, np.intp)
    keep = torchvision_batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), threshold
    )
    return keep.numpy()


def _nms_min(boxes: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch's final NMS: overlap over the smaller box, within each group."""
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy

    keep = batched_nms_numpy(
        torch.from_numpy(boxes[:, :4]),
        torch.from_numpy(boxes[:, 4]),
        torch.from_numpy(groups),
        threshold,
        "Min",
    )
    return keep.numpy()
