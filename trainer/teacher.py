"""The face teacher: dlib's pretrained ResNet descriptor of original photos (trainer only).

Contract: for one photo, the teacher finds the face the student is trained on — MTCNN's
``central_face``, exactly as ``trainer.data.Aligner`` picks it — runs dlib's 5-point shape
predictor inside that face's box (mapped to the box convention dlib's predictor was trained on),
and returns dlib's 128-d descriptor of the aligned 150 px chip. A bystander never becomes the
target: there is no second detector that could pick another face. A photo without a face has no
target (``None``), never a guess.

Descriptors are computed once per photo and cached under
``{cache}/teacher/{TEACHER_PIPELINE}-pad{pad}/{sha[:2]}/{sha}.npy`` (``sha``: SHA-256 of the
file's bytes), written atomically; an empty array records "no face". The teacher is never run
while serving: the recognizer service gets the student only. Installed with the ``teacher`` extra
(``dlib-bin``, ``face_recognition_models``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rllfpr.faces.detect import Detection, FaceDetector, central_face, padded
from rllfpr.faces.pixels import load_rgb
from trainer.progress import progress as progress_of

log = logging.getLogger(__name__)

DIM = 128
# Bumped whenever a descriptor of the same photo could change (detector, box mapping, chip).
TEACHER_PIPELINE = "dlib-resnet-v1-sp5-mtcnn40-central-chip150-v1"
# dlib's frontal-face (HOG) box as a fraction of MTCNN's box (x1, y1, x2, y2), measured on 148
# LFW faces; the shape predictor starts from its mean shape in the box it is given, so it gets
# the box convention it was trained on (descriptors then match dlib's own pipeline: median
# cosine 0.9996 to those from dlib's detection).
_DLIB_BOX = np.array([-0.09, 0.12, 1.04, 0.965])
_MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")


class TeacherError(ValueError):
    """A photo the teacher cannot read, or a missing teacher installation."""


def model_files() -> tuple[Path, Path]:
    """The 5-point shape predictor and the ResNet descriptor's weights, found without importing
    ``face_recognition_models`` (its ``__init__`` imports ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError(
            "the face teacher needs the trainer's 'teacher' extra: pip install 'rllfpr[teacher]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    predictor, descriptor = (folder / name for name in _MODEL_FILES)
    for path in (predictor, descriptor):
        if not path.is_file():
            raise TeacherError(f"teacher weights missing: {path}")
    return predictor, descriptor


def dlib_box(detection: Detection) -> tuple[int, int, int, int]:
    """MTCNN's box mapped to dlib's detector convention (left, top, right, bottom)."""
    x1, y1, x2, y2 = detection.box
    w, h = x2 - x1, y2 - y1
    left, top, right, bottom = (x1, y1, x1, y1) + _DLIB_BOX * (w, h, w, h)
    return round(left), round(top), round(right), round(bottom)


def content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_folder(cache: Path, pad: float = 0.0) -> Path:
    """Where the descriptors of photos detected with border ``pad`` are cached."""
    return cache / "teacher" / f"{TEACHER_PIPELINE}-pad{pad:g}"


def cache_entry(cache: Path, pad: float, key: str) -> Path:
    """The cache file of the photo whose content hash is ``key``."""
    return cache_folder(cache, pad) / key[:2] / f"{key}.npy"


def is_cached(cache: Path, pad: float, path: Path) -> bool:
    """Whether the teacher's answer for the photo at ``path`` (a descriptor or "no face") is in
    the cache; a file that cannot be read counts as not cached (describing it reports why)."""
    try:
        return cache_entry(cache, pad, content_hash(path)).exists()
    except OSError:
        return False


def read_photo(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, or a TeacherError that names the file."""
    try:
        return load_rgb(path)
    except (OSError, ValueError) as error:
        raise TeacherError(f"{path}: not a readable image ({error})") from error


class FaceTeacher:
    """dlib's descriptor of the central MTCNN face of each photo, cached per photo.

    ``pad``: a border of this fraction of the image side added before detection, for photos the
    face fills (UTKFace), so MTCNN sees the whole face; part of the cache key.
    """

    def __init__(self, cache: Path | None, pad: float = 0.0) -> None:
        import dlib  # the teacher extra; imported only where the teacher runs

        predictor, descriptor = model_files()
        self._dlib: Any = dlib
        self._shape = dlib.shape_predictor(str(predictor))
        self._descriptor = dlib.face_recognition_model_v1(str(descriptor))
        self._detector: FaceDetector | None = None
        self.pad = pad
        self.cache = cache

    def describe_face(self, image: np.ndarray, face: Detection) -> np.ndarray:
        """The descriptor (128 float32) of ``face`` in ``image`` (HxWx3 uint8 RGB)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise TeacherError(f"expected an HxWx3 uint8 RGB image, got {image.shape}")
        box = self._dlib.rectangle(*dlib_box(face))
        shape = self._shape(image, box)
        descriptor = self._descriptor.compute_face_descriptor(image, shape)  # 150 px chip
        return np.asarray(descriptor, dtype=np.float32)

    def describe_image(self, image: np.ndarray) -> np.ndarray | None:
        """The descriptor of the image's central face, or None when MTCNN finds no face."""
        if self._detector is None:
            self._detector = FaceDetector(min_face_size=40)  # the Aligner's settings
        image = padded(image, self.pad)
        face = central_face(self._detector.detect([image])[0], image.shape)
        return None if face is None else self.describe_face(image, face)

    def describe(self, path: Path, face: Detection | bool | None = True) -> np.ndarray | None:
        """The cached descriptor of the photo at ``path`` (computed once), None if no face.
        ``face``: the central face already found in the photo padded by ``pad`` (the
        Aligner's cached detection, so both see the same face), None if none was found, or
        True to detect it here."""
        if not path.is_file():
            raise TeacherError(f"{path}: no such file")
        key = content_hash(path)
        cached = self._cached(key)
        if cached is not None:
            return cached if len(cached) else None
        if face is True:
            descriptor = self.describe_image(read_photo(path))
        elif isinstance(face, Detection):
            descriptor = self.describe_face(padded(read_photo(path), self.pad), face)
        else:
            descriptor = None
        self._store(key, descriptor)
        return descriptor

    def describe_all(
        self, paths: Iterable[Path], progress: bool = True
    ) -> tuple[dict[Path, np.ndarray], list[str]]:
        """Descriptors of the photos that have a face; the others listed as 'path: reason'."""
        found: dict[Path, np.ndarray] = {}
        failures: list[str] = []
        for path in progress_of(list(paths), desc="teacher", disable=not progress):
            try:
                descriptor = self.describe(path)
            except TeacherError as error:
                log.warning("%s", error)
                failures.append(str(error))
                continue
            if descriptor is None:
                failures.append(f"{path}: no face found")
            else:
                found[path] = descriptor
        return found, failures

    def _path(self, key: str) -> Path | None:
        return None if self.cache is None else cache_entry(self.cache, self.pad, key)

    def _cached(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        vector = np.load(path, allow_pickle=False)
        if vector.shape not in ((DIM,), (0,)) or vector.dtype != np.float32:
            raise TeacherError(f"corrupt teacher cache entry {path}: delete it")
        return vector

    def _store(self, key: str, descriptor: np.ndarray | None) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        vector = descriptor if descriptor is not None else np.zeros(0, np.float32)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, vector, allow_pickle=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
