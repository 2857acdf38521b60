"""Preparing a training corpus once: MTCNN's central face of every photo (cached), the aligned
faces at each size the trainer uses, and the teacher's descriptor of each photo — one detection
shared by all of them, so the teacher describes exactly the face the student sees."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ExperimentConfig
from trainer.data import (
    AlignedFaces,
    Aligner,
    dataset_root,
    image_key,
    list_identities,
    list_unlabeled,
)
from trainer.progress import progress as progress_of
from trainer.targets import TargetSpace
from trainer.teacher import DIM, FaceTeacher, TeacherError

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


def describe_faces(
    sources: list[str],
    root: Path,
    identities: dict[str, list[Path]],
    cache: Path,
    pad: float = 0.0,
    name: str | None = None,
) -> np.ndarray:
    """(N, 128) teacher descriptors of the photos ``sources`` (``<identity>/<key>`` of
    ``identities`` of ``root``, as ``AlignedFaces.sources``), from the cache where ``prepare``
    filled it; NaN rows where the teacher has none."""
    teacher = FaceTeacher(cache, pad)
    detector = Aligner(root, cache, 112, "mtcnn", pad, name)  # only its cached detections
    wanted = set(sources)
    found: dict[str, np.ndarray | None] = {}
    for group, paths in identities.items():
        keys = {path: image_key(root, group, path) for path in paths}
        paths = [path for path in paths if f"{group}/{keys[path]}" in wanted]
        if not paths:
            continue
        detections = detector.central_faces(group, paths)
        for path in paths:
            source = f"{group}/{keys[path]}"
            try:
                found[source] = teacher.describe(path, detections[keys[path]])
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
    use_teacher = bool(config.teacher.weight)
    main_descriptors = (
        describe_faces(main.sources, main_root, main_identities, cache) if use_teacher else None
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
            describe_faces(faces.sources, root, identities, cache, folder.pad, folder.cache_name)
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
