"""Face detection with MTCNN (facenet-pytorch's networks and weights), on three runtimes."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from rllfpr.faces import mtcnn
from rllfpr.faces.mtcnn import Networks
from rllfpr.wire.messages import CropBox

MTCNN_SMALLEST_FACE = mtcnn.WINDOW  # P-Net's window: MTCNN finds no smaller face at any scale


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


DetectorBackend = Literal["torch", "onnxruntime", "tensorrt"]
DetectorChoice = Literal["auto", "torch", "onnxruntime", "tensorrt"]


def resolve_backend(choice: DetectorChoice, device: str = "cpu") -> DetectorBackend:
    """The detector backend to run on ``device``. ``auto`` on a GPU: TensorRT when installed,
    else ONNX Runtime when it has the CUDA provider, else torch; on the CPU: ONNX Runtime when
    installed, else torch. An explicit choice this machine cannot run is an error."""
    from rllfpr.runtimes import onnxruntime_available, onnxruntime_cuda, tensorrt_available

    on_gpu = device != "cpu"
    available = {
        "torch": True,
        "onnxruntime": onnxruntime_available() and (not on_gpu or onnxruntime_cuda()),
        "tensorrt": on_gpu and tensorrt_available(),
    }
    if choice == "auto":
        return next(name for name in ("tensorrt", "onnxruntime", "torch") if available[name])
    if not available[choice]:
        names = ", ".join(name for name, ok in available.items() if ok)
        raise RuntimeError(
            f"detector backend {choice!r} cannot run on {device} here (these can: {names}; "
            "ONNX Runtime on a GPU needs onnxruntime-gpu, TensorRT needs tensorrt and a GPU)"
        )
    return choice


class FaceDetector:
    """Batched MTCNN. Images are RGB uint8 arrays; same-sized images are detected together.

    ``backend``: ``torch`` is facenet-pytorch's own MTCNN in eager torch (the reference);
    ``onnxruntime`` and ``tensorrt`` run the same networks exported to ONNX
    (``rllfpr.faces.mtcnn_runtime``) inside ``rllfpr.faces.mtcnn``'s NumPy pipeline, which
    reproduces the reference's pyramid, thresholds and NMS; tests hold their boxes and
    landmarks to the reference's. ``device`` is where torch or ONNX Runtime run (``cuda``
    needs onnxruntime-gpu for ``onnxruntime``); ``threads`` are ONNX Runtime's intra-op
    threads (0: its default); ``cache`` holds the ONNX files and TensorRT engines
    (default ``~/.cache/rllfpr``)."""

    def __init__(
        self,
        min_face_size: int = 40,
        min_score: float = 0.9,
        device: str = "cpu",
        backend: DetectorChoice = "torch",
        threads: int = 0,
        cache: Path | None = None,
    ) -> None:
        self.min_score = min_score
        self.min_face_size = min_face_size
        self.backend = resolve_backend(backend, device)
        self._networks: Networks | None = None
        self._mtcnn: Any = None
        if self.backend == "torch":
            from facenet_pytorch import MTCNN  # heavy import, only where detection is needed

            self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, device=device)
        elif self.backend == "onnxruntime":
            from rllfpr.faces.mtcnn_runtime import OnnxRuntimeNetworks

            self._networks = OnnxRuntimeNetworks(cache, threads=threads, device=device)
        else:
            from rllfpr.faces.mtcnn_runtime import TensorRTNetworks

            self._networks = TensorRTNetworks(cache)

    def detect(
        self, images: list[np.ndarray], min_face_size: int | None = None
    ) -> list[list[Detection]]:
        """Faces of each image, largest first. ``min_face_size`` (pixels) overrides the
        detector's for this call."""
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {index}: expected HxWx3 uint8 RGB, got {image.shape}")
            by_shape[image.shape].append(index)
        smallest = self.min_face_size if min_face_size is None else min_face_size
        results: list[list[Detection]] = [[] for _ in images]
        for indices in by_shape.values():
            batch = np.stack([images[i] for i in indices])
            for i, faces in zip(indices, self._detect_batch(batch, smallest), strict=True):
                results[i] = [
                    Detection(box=box, score=float(score), landmarks=marks)
                    for box, score, marks in zip(*faces, strict=True)
                    if score >= self.min_score
                ]
        return results

    def _detect_batch(
        self, batch: np.ndarray, min_face_size: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Boxes, scores and landmarks of each image of ``batch`` (N, H, W, 3)."""
        if self._networks is not None:
            return [
                (faces.boxes, faces.scores, faces.landmarks)
                for faces in mtcnn.detect(batch, min_face_size, self._networks)
            ]
        self._mtcnn.min_face_size = min_face_size
        try:
            boxes, scores, landmarks = self._mtcnn.detect(batch, landmarks=True)
        finally:
            self._mtcnn.min_face_size = self.min_face_size
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2)))
        return [
            empty if b is None else (b, np.asarray(s, np.float32), marks)
            for b, s, marks in zip(boxes, scores, landmarks, strict=True)
        ]

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
        found = self.detect(small, max(MTCNN_SMALLEST_FACE, int(min_face_size * scale)))
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


def padded(image: np.ndarray, fraction: float) -> np.ndarray:
    """``image`` with a black border of ``fraction`` of its larger side on every edge: MTCNN
    needs some background around a face that fills the photo (UTKFace's crops)."""
    if not fraction:
        return image
    border = round(fraction * max(image.shape[:2]))
    return cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT, value=0)


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
