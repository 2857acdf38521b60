"""Folder datasets (``<identity>/<image>``) and their aligned copies cached outside the repo.

The aligned copy is kept per identity in ``{cache}/aligned/{dataset}/{method}-{size}/`` so
subsets reuse it. Images that cannot be read or in which no face is found are counted and
listed in the cache, never dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from rllfpr.faces.align import AlignmentError, align
from rllfpr.faces.detect import FaceDetector, central_face
from rllfpr.faces.pixels import load_rgb
from trainer.progress import progress as progress_of

log = logging.getLogger(__name__)
AlignMethod = Literal["mtcnn", "resize"]
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".gif", ".bmp", ""}


def dataset_root(dataset: str, data_root: Path) -> Path:
    """A dataset setting's folder: a path as given if it is one, else a folder of the data root."""
    return Path(dataset) if Path(dataset).is_dir() else data_root / dataset


def list_identities(
    root: Path,
    min_images: int = 1,
    max_images: int | None = None,
    max_identities: int | None = None,
) -> dict[str, list[Path]]:
    """Identity -> sorted image files (the first ``max_images``), for the first
    ``max_identities`` identities (sorted by name) with at least ``min_images`` images."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {root.resolve()} (datasets are found under the `data` "
            "setting: RLLFPR_DATA, or `data:` in the config file)"
        )
    identities = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if len(images) >= min_images:
            identities[folder.name] = images[:max_images]
    return dict(list(identities.items())[:max_identities])


def read_people_file(path: Path) -> list[str]:
    """Names from an LFW ``people*.txt`` file (first line: count; then ``name<TAB>n``)."""
    lines = path.read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


@dataclass
class AlignedFaces:
    """Aligned RGB faces with integer labels; ``names[label]`` is the identity."""

    faces: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    names: list[str]
    sources: list[str]  # "<identity>/<file>" of each face
    failures: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def relabeled(self) -> AlignedFaces:
        """The same faces with labels 0..k-1 over the k identities present (after a subset)."""
        present, labels = np.unique(self.labels, return_inverse=True)
        names = [self.names[label] for label in present]
        return AlignedFaces(self.faces, labels.astype(np.int64), names, self.sources)

    def subset(self, indices: Sequence[int] | np.ndarray) -> AlignedFaces:
        index = np.asarray(indices, dtype=np.int64)
        return AlignedFaces(
            self.faces[index],
            self.labels[index],
            self.names,
            [self.sources[i] for i in index],
        )


class Aligner:
    """Aligns images of one dataset and caches the result per identity."""

    def __init__(
        self, dataset_root: Path, cache: Path, size: int = 112, method: AlignMethod = "mtcnn"
    ) -> None:
        self.root = dataset_root
        self.size = size
        self.method = method
        self.cache_dir = cache / "aligned" / dataset_root.name / f"{method}-{size}"
        self._detector: FaceDetector | None = None

    def _align_batch(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        if self.method == "resize":
            size = (self.size, self.size)
            return [
                np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
                for image in images
            ]
        if self._detector is None:
            self._detector = FaceDetector(min_face_size=40)
        aligned: list[np.ndarray | None] = []
        for image, detections in zip(images, self._detector.detect(images), strict=True):
            face = central_face(detections, image.shape)
            try:
                aligned.append(None if face is None else align(image, face.landmarks, self.size))
            except AlignmentError:
                aligned.append(None)
        return aligned

    def _identity(self, name: str, images: list[Path]) -> tuple[np.ndarray, list[str], list[str]]:
        """Aligned faces of the requested images of one identity, aligning only those the
        cache does not hold yet (a cache built for a subset is extended, never trusted blindly)."""
        known, failed = self._read_cache(name)
        missing = [path for path in images if path.name not in known and path.name not in failed]
        if missing:
            aligned, newly_failed = self._align_files(missing)
            known.update(aligned)
            failed.update(newly_failed)
            self._write_cache(name, known, failed)
        requested = [path.name for path in images]
        files = [file for file in requested if file in known]
        faces = (
            np.stack([known[file] for file in files])
            if files
            else np.zeros((0, self.size, self.size, 3), np.uint8)
        )
        return faces, files, [file for file in requested if file in failed]

    def uncached(self, identities: dict[str, list[Path]]) -> int:
        """How many of these images ``load`` would have to align (not in the cache yet)."""
        missing = 0
        for name, images in identities.items():
            known, failed = self._read_cache(name)
            missing += sum(path.name not in known and path.name not in failed for path in images)
        return missing

    def _read_cache(self, name: str) -> tuple[dict[str, np.ndarray], set[str]]:
        cached = self.cache_dir / f"{name}.npz"
        if not cached.exists():
            return {}, set()
        with np.load(cached, allow_pickle=False) as archive:
            known = dict(zip(archive["files"].tolist(), archive["faces"], strict=True))
            return known, set(archive["failed"].tolist())

    def _write_cache(self, name: str, known: dict[str, np.ndarray], failed: set[str]) -> None:
        files = sorted(known)
        faces = (
            np.stack([known[f] for f in files])
            if files
            else np.zeros((0, self.size, self.size, 3), np.uint8)
        )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cached = self.cache_dir / f"{name}.npz"
        temporary = cached.with_suffix(".tmp.npz")
        np.savez(
            temporary,
            faces=faces,
            files=np.array(files, dtype=str),
            failed=np.array(sorted(failed), dtype=str),
        )
        temporary.replace(cached)

    def _align_files(self, paths: list[Path]) -> tuple[dict[str, np.ndarray], set[str]]:
        readable, loaded, failed = [], [], set()
        for path in paths:
            try:
                loaded.append(load_rgb(path))
                readable.append(path.name)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                log.warning("cannot read %s: %s", path, error)
                failed.add(path.name)
        aligned: dict[str, np.ndarray] = {}
        for start in range(0, len(loaded), 32):
            batch = self._align_batch(loaded[start : start + 32])
            for file, face in zip(readable[start : start + 32], batch, strict=True):
                if face is None:
                    failed.add(file)
                else:
                    aligned[file] = face
        return aligned, failed

    def load(self, identities: dict[str, list[Path]], progress: bool = True) -> AlignedFaces:
        all_faces: list[np.ndarray] = []
        labels: list[int] = []
        sources: list[str] = []
        failures: list[str] = []
        names: list[str] = []
        for name, images in progress_of(
            identities.items(), desc=f"align {self.root.name}", disable=not progress
        ):
            faces, files, failed = self._identity(name, images)
            failures += [f"{name}/{file}" for file in failed]
            if len(faces) == 0:
                continue
            label = len(names)
            names.append(name)
            all_faces.append(faces)
            labels += [label] * len(faces)
            sources += [f"{name}/{file}" for file in files]
        if failures:
            log.warning(
                "%d of %d images yielded no face", len(failures), len(failures) + len(labels)
            )
        if not all_faces:
            raise ValueError(f"no face could be aligned in {self.root}")
        return AlignedFaces(
            np.concatenate(all_faces), np.array(labels, np.int64), names, sources, failures
        )


def pick_unlabeled(sources: Iterable[str], exclude: set[str], count: int, seed: int) -> list[str]:
    """Up to ``count`` of ``sources`` ("<identity>/<file>") whose identity is not in
    ``exclude``, drawn evenly at random (seeded), in source order."""
    candidates = sorted(s for s in sources if s.split("/")[0] not in exclude)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(candidates))[:count]
    return [candidates[i] for i in sorted(chosen)]


def load_other_people(
    root: Path, aligner: Aligner, exclude: set[str], count: int, seed: int
) -> AlignedFaces | None:
    """Up to ``count`` aligned faces (``pick_unlabeled``) of the dataset's people outside
    ``exclude``; None when ``count`` is 0."""
    if not count:
        return None
    files = {f"{name}/{p.name}": p for name, paths in list_identities(root).items() for p in paths}
    identities: dict[str, list[Path]] = {}
    for source in pick_unlabeled(files, exclude, count, seed):
        identities.setdefault(source.split("/")[0], []).append(files[source])
    return aligner.load(identities)


def split_per_identity(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split inside each identity: at least one training and one test image each."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_test = min(max(1, round(len(members) * test_fraction)), len(members) - 1)
        test += members[:n_test].tolist()
        train += members[n_test:].tolist()
    return np.sort(np.array(train)), np.sort(np.array(test))


def save_split(path: Path, sources: Iterable[str], train: np.ndarray, test: np.ndarray) -> None:
    names = list(sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"train": [names[i] for i in train], "test": [names[i] for i in test]}, indent=1)
    )
