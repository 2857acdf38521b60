"""Folder datasets (``<identity>/<image>``) and their aligned copies cached outside the repo.

The aligned copy is kept per identity in ``{cache}/aligned/{dataset}/{method}-{size}/`` so
subsets reuse it. Images that cannot be read or in which no face is found are counted and
listed in the cache, never dropped silently.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from rllfpr.faces.align import AlignmentError, align
from rllfpr.faces.detect import Detection, FaceDetector, central_face, padded
from rllfpr.faces.pixels import load_rgb
from trainer.progress import progress as progress_of

log = logging.getLogger(__name__)
AlignMethod = Literal["mtcnn", "resize"]
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".gif", ".bmp", ""}
T = TypeVar("T")

# A worker process spends seconds loading torch and its face models before its first photo: a
# worker is started per this many photos to process, fewer stay in the calling process. dlib
# (the teacher) runs on one thread, so its workers pay from a few hundred photos on (1.6x on 600
# with two cores); MTCNN already runs on torch's threads, so on two cores its workers pay only
# on thousands (0.88x on 600 photos, 1.1x on 3,000: docs/results/alignment-fill.md).
PHOTOS_PER_WORKER = 100
DETECTIONS_PER_WORKER = 1000


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def in_worker_processes(
    task: Callable[[dict[str, list[Path]]], T],
    identities: dict[str, list[Path]],
    workers: int = 0,
    photos_per_worker: int = PHOTOS_PER_WORKER,
) -> list[T]:
    """``task`` run on shares of ``identities`` (identity or group -> photos), each share in
    its own spawned process (no forked torch or dlib state; ``task`` must be picklable): up to
    ``workers`` of them (0: one per available core), at most one per ``photos_per_worker``
    photos and one per identity. Returns each share's result; an empty list when fewer than two
    workers would start, and then nothing ran: the caller does the work itself."""
    if workers < 0:
        raise ValueError(f"workers is 0 (one per core) or more, got {workers}")
    photos = sum(len(paths) for paths in identities.values())
    started = min(workers or available_cores(), len(identities), photos // photos_per_worker)
    if started < 2:
        return []
    groups = sorted(identities)
    shares = [{group: identities[group] for group in groups[i::started]} for i in range(started)]
    log.info("%d photos in %d processes", photos, started)
    with ProcessPoolExecutor(started, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(task, share) for share in shares]
        return [job.result() for job in jobs]


def dataset_root(dataset: str, data_root: Path) -> Path:
    """A dataset setting's folder: a path as given if it is one, else a folder of the data root."""
    return Path(dataset) if Path(dataset).is_dir() else data_root / dataset


def _images(folder: Path) -> list[Path]:
    """Image files under ``folder``, at any depth (CFP: ``<person>/{frontal,profile}/``)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )


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
        images = _images(folder)
        if len(images) >= min_images:
            identities[folder.name] = images[:max_images]
    return dict(list(identities.items())[:max_identities])


def list_unlabeled(root: Path, group: int = 256) -> dict[str, list[Path]]:
    """The image files of a folder without identities (UTKFace), sorted, in groups of
    ``group`` named ``part-0000``...: the unit the aligned cache is written in. The groups are
    NOT identities: train on them without labels."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    files = [
        p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    ]
    return {f"part-{i // group:04d}": files[i : i + group] for i in range(0, len(files), group)}


def image_key(root: Path, name: str, path: Path) -> str:
    """How an image is named inside its identity (or group): its path below the identity's
    folder (``X_0001.jpg``, ``frontal/01.jpg``), or below ``root`` for a group of a flat folder."""
    folder = root / name
    return (
        path.relative_to(folder) if path.is_relative_to(folder) else path.relative_to(root)
    ).as_posix()


def read_people_file(path: Path) -> list[str]:
    """Names from an LFW ``people*.txt`` file (first line: count; then ``name<TAB>n``)."""
    lines = path.read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


@dataclass
class AlignedFaces:
    """Aligned RGB faces with integer labels; ``names[label]`` is the identity, label -1 an
    unlabeled face (training only). ``targets``: the teacher's target of each face, if any."""

    faces: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    names: list[str]
    sources: list[str]  # "<identity>/<file>" of each face
    failures: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None  # (N, D) float32 unit vectors

    def __len__(self) -> int:
        return len(self.labels)

    def relabeled(self) -> AlignedFaces:
        """The same faces with labels 0..k-1 over the k identities present (after a subset)."""
        present, labels = np.unique(self.labels, return_inverse=True)
        names = [self.names[label] for label in present]
        return AlignedFaces(
            self.faces, labels.astype(np.int64), names, self.sources, targets=self.targets
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> AlignedFaces:
        index = np.asarray(indices, dtype=np.int64)
        return AlignedFaces(
            self.faces[index],
            self.labels[index],
            self.names,
            [self.sources[i] for i in index],
            targets=None if self.targets is None else self.targets[index],
        )

    def joined(self, other: AlignedFaces, labeled: bool) -> AlignedFaces:
        """These faces then ``other``'s: its identities added after ours when ``labeled``, else
        its faces unlabeled (-1). Failures are concatenated; targets must be on both or neither."""
        if (self.targets is None) != (other.targets is None):
            raise ValueError("join faces with teacher targets to faces with targets")
        extra = len(self.names) + other.labels if labeled else np.full(len(other), -1)
        targets = (
            None
            if self.targets is None or other.targets is None
            else np.concatenate([self.targets, other.targets])
        )
        return AlignedFaces(
            np.concatenate([self.faces, other.faces]),
            np.concatenate([self.labels, extra.astype(np.int64)]),
            self.names + (other.names if labeled else []),
            self.sources + other.sources,
            self.failures + other.failures,
            targets,
        )


class Aligner:
    """Aligns images of one dataset and caches the result per identity."""

    def __init__(
        self,
        dataset_root: Path,
        cache: Path,
        size: int = 112,
        method: AlignMethod = "mtcnn",
        pad: float = 0.0,
        name: str | None = None,
    ) -> None:
        """``pad``: a black border of this fraction of the image side added before MTCNN, for
        photos the face fills (UTKFace). ``name``: the dataset's cache folder (default: the
        root folder's name)."""
        self.root, self.cache, self.name = dataset_root, cache, name or dataset_root.name
        self.size = size
        self.method = method
        self.pad = pad
        variant = f"{method}-{size}" + (f"-pad{pad:g}" if pad and method == "mtcnn" else "")
        self.cache_dir = cache / "aligned" / self.name / variant
        self.detections_dir = cache / "detections" / self.name / f"mtcnn-pad{pad:g}"
        self._detector: FaceDetector | None = None

    def central_faces(self, name: str, paths: list[Path]) -> dict[str, Detection | None]:
        """MTCNN's central face of each photo of one identity (None: unreadable or no face),
        keyed by ``image_key``, detected once and cached per identity: every aligned size and
        the teacher use the same detection. Coordinates are in the padded image (``pad``)."""
        cached = self.detections_dir / f"{name}.npz"
        known: dict[str, Detection | None] = {}
        if cached.exists():
            with np.load(cached, allow_pickle=False) as archive:
                for file, found, box, score, marks in zip(
                    archive["files"].tolist(),
                    archive["found"],
                    archive["boxes"],
                    archive["scores"],
                    archive["landmarks"],
                    strict=True,
                ):
                    known[file] = Detection(box, float(score), marks) if found else None
        keys = {path: image_key(self.root, name, path) for path in paths}
        missing = [path for path in paths if keys[path] not in known]
        for start in range(0, len(missing), 32):
            chunk = missing[start : start + 32]
            images: list[np.ndarray] = []
            for path in chunk:
                try:
                    images.append(padded(load_rgb(path), self.pad))
                except (OSError, UnidentifiedImageError, ValueError) as error:
                    log.warning("cannot read %s: %s", path, error)
                    known[keys[path]] = None
            readable = [path for path in chunk if keys[path] not in known]
            if self._detector is None:
                self._detector = FaceDetector(min_face_size=40)
            for path, image, found in zip(
                readable, images, self._detector.detect(images), strict=True
            ):
                known[keys[path]] = central_face(found, image.shape)
        if missing:
            files = sorted(known)
            faces = [known[f] for f in files]
            _save_npz(
                cached,
                files=np.array(files, dtype=str),
                found=np.array([f is not None for f in faces], dtype=bool),
                boxes=np.array([f.box if f else np.zeros(4) for f in faces], np.float32),
                scores=np.array([f.score if f else 0.0 for f in faces], np.float32),
                landmarks=np.array(
                    [f.landmarks if f else np.zeros((5, 2)) for f in faces], np.float32
                ).reshape(-1, 5, 2),
            )
        return {keys[path]: known[keys[path]] for path in paths}

    def _identity(self, name: str, images: list[Path]) -> tuple[np.ndarray, list[str], list[str]]:
        """Aligned faces of the requested images of one identity, aligning only those the
        cache does not hold yet (a cache built for a subset is extended, never trusted blindly)."""
        known, failed = self._read_cache(name)
        keys = {path: image_key(self.root, name, path) for path in images}
        missing = [path for path in images if keys[path] not in known and keys[path] not in failed]
        if missing:
            aligned, newly_failed = self._align_files(name, missing, keys)
            known.update(aligned)
            failed.update(newly_failed)
            self._write_cache(name, known, failed)
        requested = [keys[path] for path in images]
        files = [file for file in requested if file in known]
        faces = (
            np.stack([known[file] for file in files])
            if files
            else np.zeros((0, self.size, self.size, 3), np.uint8)
        )
        return faces, files, [file for file in requested if file in failed]

    def uncached(self, identities: dict[str, list[Path]]) -> int:
        """How many of these images ``load`` would have to align (not in the cache yet)."""
        return sum(len(paths) for paths in self._unaligned(identities).values())

    def _unaligned(self, identities: dict[str, list[Path]]) -> dict[str, list[Path]]:
        """The images of each identity the aligned cache holds neither a face nor a failure of."""
        missing: dict[str, list[Path]] = {}
        for name, images in identities.items():
            done = self._cached_keys(self.cache_dir / f"{name}.npz", "files", "failed")
            left = [path for path in images if image_key(self.root, name, path) not in done]
            if left:
                missing[name] = left
        return missing

    def undetected(self, identities: dict[str, list[Path]]) -> dict[str, list[Path]]:
        """The images ``load`` would have to run MTCNN on: neither aligned at this size nor
        detected (for any size or the teacher) yet, per identity."""
        missing: dict[str, list[Path]] = {}
        for name, images in self._unaligned(identities).items():
            done = self._cached_keys(self.detections_dir / f"{name}.npz", "files")
            left = [path for path in images if image_key(self.root, name, path) not in done]
            if left:
                missing[name] = left
        return missing

    def detect_in_workers(
        self,
        identities: dict[str, list[Path]],
        workers: int = 0,
        photos_per_worker: int = DETECTIONS_PER_WORKER,
    ) -> int:
        """Fill the detection cache for the images ``undetected`` in worker processes
        (``in_worker_processes``: 0, one per available core; one per ``photos_per_worker``
        images at most), so that ``load`` only warps; returns the workers started (0: too few
        images, they are detected in this process as ``load`` aligns them). Each worker runs
        torch on one thread, and its detections are those of a one-thread process bit for bit,
        whatever the number of workers; torch on more threads rounds MTCNN's floats otherwise
        (measured on 120 LFW photos: 24 aligned faces differ, by one grey level at most)."""
        if workers < 0:
            raise ValueError(f"workers is 0 (one per core) or more, got {workers}")
        photos = sum(len(paths) for paths in identities.values())
        if self.method != "mtcnn" or workers == 1 or photos < 2 * photos_per_worker:
            return 0  # no worker could start: spare load() reading every cache's keys
        task = functools.partial(_detect_share, self.root, self.cache, self.pad, self.name)
        missing = self.undetected(identities)
        return len(in_worker_processes(task, missing, workers, photos_per_worker))

    @staticmethod
    def _cached_keys(path: Path, *fields: str) -> set[str]:
        """The image keys listed under ``fields`` of a cache file (its faces are not read)."""
        if not path.exists():
            return set()
        with np.load(path, allow_pickle=False) as archive:
            return {key for field_ in fields for key in archive[field_].tolist()}

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
        _save_npz(
            self.cache_dir / f"{name}.npz",
            faces=faces,
            files=np.array(files, dtype=str),
            failed=np.array(sorted(failed), dtype=str),
        )

    def _align_files(
        self, name: str, paths: list[Path], keys: dict[Path, str]
    ) -> tuple[dict[str, np.ndarray], set[str]]:
        aligned: dict[str, np.ndarray] = {}
        failed: set[str] = set()
        faces = self.central_faces(name, paths) if self.method == "mtcnn" else {}
        for path in paths:
            key = keys[path]
            if self.method == "mtcnn" and faces[key] is None:
                failed.add(key)
                continue
            try:
                image = load_rgb(path)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                log.warning("cannot read %s: %s", path, error)
                failed.add(key)
                continue
            if self.method == "resize":
                size = (self.size, self.size)
                resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
                aligned[key] = np.asarray(resized)
                continue
            face = faces[key]
            assert face is not None
            try:
                aligned[key] = align(padded(image, self.pad), face.landmarks, self.size)
            except AlignmentError:
                failed.add(key)
        return aligned, failed

    def load(
        self, identities: dict[str, list[Path]], progress: bool = True, workers: int = 0
    ) -> AlignedFaces:
        """The aligned faces of ``identities`` (identity -> images), from the cache where it
        has them; on a first run, MTCNN runs in ``workers`` processes (``detect_in_workers``;
        0: one per available core) when there are enough images to detect, then this process
        aligns them and fills the cache."""
        self.detect_in_workers(identities, workers)
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


def _detect_share(
    root: Path, cache: Path, pad: float, name: str, share: dict[str, list[Path]]
) -> int:
    """One worker's part of ``Aligner.detect_in_workers``: MTCNN's central face of its
    identities' images, into the detection cache (one torch thread, so that the workers do not
    oversubscribe the cores); the images detected."""
    import torch

    torch.set_num_threads(1)
    detector = Aligner(root, cache, 112, "mtcnn", pad, name)
    return sum(len(detector.central_faces(group, paths)) for group, paths in share.items())


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically (a unique temporary file, then a rename): caches are shared by
    concurrent processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, allow_pickle=False, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    files = {
        f"{name}/{image_key(root, name, p)}": p
        for name, paths in list_identities(root).items()
        for p in paths
    }
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
