"""Preparing a training corpus once: MTCNN's central face of every photo (cached), the aligned
faces at each size the trainer uses, and the teacher's descriptor of each photo — one detection
shared by all of them, so the teacher describes exactly the face the student sees."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ExperimentConfig
from trainer.data import (
    PHOTOS_PER_WORKER,
    AlignedFaces,
    Aligner,
    dataset_root,
    image_key,
    in_worker_processes,
    list_identities,
    list_unlabeled,
)
from trainer.progress import progress as progress_of
from trainer.targets import TargetSpace
from trainer.teacher import DIM, FaceTeacher, TeacherError, is_cached

log = logging.getLogger(__name__)


def prepare(
    root: Path,
    identities: dict[str, list[Path]],
    cache: Path,
    sizes: tuple[int, ...],
    teacher: FaceTeacher | None,
    pad: float = 0.0,
    name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fill the detection, aligned-face and teacher caches for ``identities`` (identity or
    group -> photos) of the folder ``root``; returns counts. Safe to interrupt and rerun."""
    if teacher is not None and teacher.pad != pad:
        raise ValueError(f"the teacher pads by {teacher.pad}, the corpus by {pad}")
    aligners = [Aligner(root, cache, size, "mtcnn", pad, name) for size in sizes]
    detector = aligners[0] if aligners else Aligner(root, cache, 112, "mtcnn", pad, name)
    counts: dict[str, Any] = {"photos": 0, "faces": 0, "described": 0, "failures": []}
    bar = progress_of(identities.items(), desc=f"prepare {name or root.name}", disable=not progress)
    for group, paths in bar:
        faces = detector.central_faces(group, paths)
        if any(face is not None for face in faces.values()):
            for aligner in aligners:
                aligner.load({group: paths}, progress=False)
        counts["photos"] += len(paths)
        counts["faces"] += sum(face is not None for face in faces.values())
        if teacher is None:
            continue
        for path in paths:
            try:
                found = teacher.describe(path, faces[image_key(root, group, path)])
            except TeacherError as error:
                counts["failures"].append(str(error))
                continue
            counts["described"] += found is not None
    return counts


def _prepare_share(
    root: Path, cache: Path, pad: float, name: str | None, share: dict[str, list[Path]]
) -> list[str]:
    """One worker's part of ``fill_teacher_cache``: its identities' detections and descriptors
    (one torch thread, so the workers do not oversubscribe the cores); the failures."""
    import torch

    torch.set_num_threads(1)
    counts = prepare(root, share, cache, (), FaceTeacher(cache, pad), pad, name, progress=False)
    return list(counts["failures"])


def fill_teacher_cache(
    root: Path,
    identities: dict[str, list[Path]],
    cache: Path,
    pad: float = 0.0,
    name: str | None = None,
    workers: int = 0,
    photos_per_worker: int = PHOTOS_PER_WORKER,
) -> dict[str, int]:
    """Describe the photos of ``identities`` the teacher's cache lacks in parallel: up to
    ``workers`` processes (``trainer.data.in_worker_processes``; 0: one per available core),
    each running ``prepare`` (MTCNN's detection and dlib's descriptor, both cached) on its
    share of the identities; at most one worker per ``photos_per_worker`` photos. With one
    worker or none, nothing runs here: ``describe_faces`` describes them in this process.
    The descriptors do not depend on the number of workers. Returns the photos that were not
    cached and the workers started; a photo the teacher cannot read is logged and left for
    ``describe_faces`` to report."""
    missing = {
        group: paths
        for group, paths in identities.items()
        if any(not is_cached(cache, pad, path) for path in paths)
    }
    task = functools.partial(_prepare_share, root, cache, pad, name)
    failures = in_worker_processes(task, missing, workers, photos_per_worker)
    for failure in (line for share in failures for line in share):
        log.warning("%s", failure)
    photos = sum(len(paths) for paths in missing.values())
    return {"photos_not_cached": photos, "workers": len(failures)}


def describe_faces(
    sources: list[str],
    root: Path,
    identities: dict[str, list[Path]],
    cache: Path,
    pad: float = 0.0,
    name: str | None = None,
    workers: int = 0,
) -> np.ndarray:
    """(N, 128) teacher descriptors of the photos ``sources`` (``<identity>/<key>`` of
    ``identities`` of ``root``, as ``AlignedFaces.sources``), from the cache, which
    ``fill_teacher_cache`` first fills in ``workers`` processes (0: one per available core)
    where many photos are missing; NaN rows where the teacher has none."""
    wanted = set(sources)
    chosen: dict[str, dict[Path, str]] = {}
    for group, paths in identities.items():
        keys = {path: image_key(root, group, path) for path in paths}
        keys = {path: key for path, key in keys.items() if f"{group}/{key}" in wanted}
        if keys:
            chosen[group] = keys
    selected = {group: list(keys) for group, keys in chosen.items()}
    fill_teacher_cache(root, selected, cache, pad, name, workers)
    teacher = FaceTeacher(cache, pad)
    detector = Aligner(root, cache, 112, "mtcnn", pad, name)  # only its cached detections
    found: dict[str, np.ndarray | None] = {}
    for group, keys in chosen.items():
        detections = detector.central_faces(group, list(keys))
        for path, key in keys.items():
            source = f"{group}/{key}"
            try:
                found[source] = teacher.describe(path, detections[key])
            except TeacherError as error:
                log.warning("%s", error)
                found[source] = None
    missing = np.full(DIM, np.nan, np.float32)
    rows = [found.get(source) for source in sources]
    return np.stack([missing if row is None else row for row in rows])


def folder_identities(root: Path, labeled: bool) -> dict[str, list[Path]]:
    """Identity folders, or groups of a flat folder of unlabeled faces."""
    if labeled or any(path.is_dir() for path in root.iterdir()):
        return list_identities(root)
    return list_unlabeled(root)


def with_targets(
    faces: AlignedFaces, descriptors: np.ndarray, space: TargetSpace
) -> tuple[AlignedFaces, int]:
    """The faces that have a descriptor, with their targets; and how many had none."""
    has = ~np.isnan(descriptors).any(axis=1)
    kept = faces.subset(np.flatnonzero(has))
    kept.failures = faces.failures
    kept.targets = space(descriptors[has])
    return kept, int((~has).sum())


@dataclass
class Corpus:
    """A training corpus: its faces (with targets when the teacher is on), the target space
    fitted on it, and what was left out."""

    faces: AlignedFaces
    space: TargetSpace | None
    counts: dict[str, int]


def _drawn(
    identities: dict[str, list[Path]], count: int | None, seed: int
) -> dict[str, list[Path]]:
    """At most ``count`` of the photos, drawn at random (seeded), grouped as before."""
    photos = [(name, path) for name, paths in identities.items() for path in paths]
    if count is None or count >= len(photos):
        return identities
    chosen = sorted(np.random.default_rng(seed).permutation(len(photos))[:count])
    drawn: dict[str, list[Path]] = {}
    for index in chosen:
        name, path = photos[index]
        drawn.setdefault(name, []).append(path)
    return drawn


def training_corpus(
    config: ExperimentConfig,
    main: AlignedFaces,
    main_root: Path,
    main_identities: dict[str, list[Path]],
    data_root: Path,
    cache: Path,
) -> Corpus:
    """``main`` (the protocol's labeled training faces) plus ``data.extra_folders``, with the
    teacher's targets when ``teacher.weight`` > 0 (faces the teacher has no descriptor of are
    left out and counted); the target space is fitted on the whole corpus."""
    spec = config.data
    parts: list[tuple[AlignedFaces, bool, np.ndarray | None]] = []
    use_teacher, workers = bool(config.teacher.weight), config.teacher.workers
    main_descriptors = (
        describe_faces(main.sources, main_root, main_identities, cache, workers=workers)
        if use_teacher
        else None
    )
    parts.append((main, True, main_descriptors))
    for folder in spec.extra_folders:
        root = dataset_root(folder.dataset, data_root)
        identities = _drawn(
            folder_identities(root, folder.labeled), folder.max_faces, spec.split_seed
        )
        aligner = Aligner(root, cache, spec.size, spec.alignment, folder.pad, folder.cache_name)
        faces = aligner.load(identities)
        descriptors = (
            describe_faces(
                faces.sources, root, identities, cache, folder.pad, folder.cache_name, workers
            )
            if use_teacher
            else None
        )
        parts.append((faces, folder.labeled, descriptors))
    counts = {"faces_without_teacher_descriptor": 0}
    space = None
    if use_teacher:
        every = np.concatenate([d for _, _, d in parts if d is not None])
        space = TargetSpace.fit(every[~np.isnan(every).any(axis=1)], config.teacher.whiten)
        kept: list[tuple[AlignedFaces, bool, np.ndarray | None]] = []
        for faces, labeled, descriptors in parts:
            assert descriptors is not None
            faces, missing = with_targets(faces, descriptors, space)
            counts["faces_without_teacher_descriptor"] += missing
            kept.append((faces, labeled, None))
        parts = kept
    corpus = parts[0][0]
    for faces, labeled, _ in parts[1:]:
        corpus = corpus.joined(faces, labeled)
    counts |= {"faces": len(corpus), "labeled_faces": int((corpus.labels >= 0).sum())}
    return Corpus(corpus, space, counts)
