"""Benchmarks added to the LFW View 1 protocol, on the same models: the face teacher's own
scores (the ceiling), CFP-FF / CFP-FP 10-fold, and closed-set identification among
peopleDevTest's people (never seen in training). Each row: original faces, scrambled faces
(key A), and with ``tta`` the mean embedding of several scrambles of shifted and mirrored copies
(what a video track of one person gives)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from trainer import cfp
from trainer.config import ExperimentConfig
from trainer.corpus import describe_faces
from trainer.data import (
    AlignedFaces,
    Aligner,
    dataset_root,
    list_identities,
    read_people_file,
    split_per_identity,
)
from trainer.evaluate import best_threshold, closed_set, verification
from trainer.targets import TargetSpace
from trainer.train import FaceView, TrainResult, embed
from trainer.verification import View1Data, pair_scores

log = logging.getLogger(__name__)
IDENTIFICATION_MIN_PHOTOS = 4
IDENTIFICATION_MAX_PHOTOS = 10


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def teacher_embeddings(descriptors: np.ndarray, space: TargetSpace | None) -> dict[str, Any]:
    """The teacher's raw unit descriptors and, with a target space, its targets; rows without a
    descriptor are NaN."""
    has = ~np.isnan(descriptors).any(axis=1)
    result = {"teacher_raw": np.full_like(descriptors, np.nan)}
    result["teacher_raw"][has] = _unit(descriptors[has])
    if space is not None:
        result["teacher_targets"] = np.full_like(descriptors, np.nan)
        result["teacher_targets"][has] = space(descriptors[has])
    return result


def lfw_identities(
    config: ExperimentConfig, data_root: Path, faces: AlignedFaces
) -> tuple[Path, dict[str, list[Path]]]:
    """The dataset's folder and the photo files of every person among ``faces`` (what the
    teacher's cache is keyed by)."""
    lfw = dataset_root(config.data.dataset, data_root)
    everyone = list_identities(lfw)
    return lfw, {name: everyone[name] for name in faces.names}


def benchmarks(
    config: ExperimentConfig,
    view1: View1Data,
    models: dict[str, TrainResult],
    views: dict[str, FaceView],
    data_root: Path,
    cache: Path,
) -> dict[str, Any]:
    tta = config.tta if config.tta.views > 1 else None
    use_teacher = bool(config.teacher.weight)

    def students(faces: np.ndarray) -> dict[str, np.ndarray]:
        rows = {
            "original": embed(models["original"].recognizer, views["original"], faces),
            "scrambled": embed(models["scrambled"].recognizer, views["a"], faces),
        }
        if tta is not None:
            rows["scrambled_tta"] = embed(
                models["scrambled"].recognizer, views["a"], faces, tta=tta
            )
        return rows

    result: dict[str, Any] = {}
    if tta is not None:
        result["tta_copies"] = tta.model_dump() | {"views": tta.views}
    if use_teacher:  # the ceiling on View 1's pairs
        lfw, identities = lfw_identities(config, data_root, view1.pair_faces)
        descriptors = describe_faces(view1.pair_faces.sources, lfw, identities, cache)
        scores: dict[str, Any] = {}
        for name, rows in teacher_embeddings(descriptors, view1.target_space).items():
            scores[name] = _view1_pairs(rows, view1)
        result["teacher_view1"] = scores
    if config.evaluate.cfp:
        result["cfp"] = _cfp(config, students, data_root, cache, use_teacher, view1.target_space)
    if config.evaluate.identification:
        result["identification"] = identification(
            config, students, data_root, cache, use_teacher, view1.target_space
        )
    return result


def _view1_pairs(embeddings: np.ndarray, view1: View1Data) -> dict[str, Any]:
    """View 1's pairsDevTest as ``verification`` scores them, pairs whose faces have a row."""
    sources = view1.pair_faces.sources
    has = set(np.array(sources)[~np.isnan(embeddings).any(axis=1)].tolist())

    def kept(pairs: list[Any]) -> list[Any]:
        return [p for p in pairs if p.first in has and p.second in has]

    train_scores, train_same = pair_scores(embeddings, sources, kept(view1.train_pairs))
    test_scores, test_same = pair_scores(embeddings, sources, kept(view1.test_pairs))
    return verification(test_scores, test_same, train_scores, train_same) | {
        "pairs_without_descriptor": len(view1.test_pairs) - len(kept(view1.test_pairs))
    }


def _cfp(
    config: ExperimentConfig,
    students: Any,
    data_root: Path,
    cache: Path,
    use_teacher: bool,
    space: TargetSpace | None,
) -> dict[str, Any]:
    root = data_root / "cfp"
    faces, identities = cfp.load_faces(root, cache, config.data.size)
    rows = students(faces.faces)
    if use_teacher:
        descriptors = describe_faces(
            faces.sources, cfp.images_root(root), identities, cache, name="cfp"
        )
        rows |= teacher_embeddings(descriptors, space)
    result: dict[str, Any] = {"protocol": cfp.__doc__, "without_face": len(faces.failures)}
    for kind in cfp.KINDS:
        pairs = cfp.read_pairs(root, kind)
        result[kind] = {
            name: cfp.evaluate(embeddings, _with_rows(faces.sources, embeddings), pairs)
            for name, embeddings in rows.items()
        }
    return result


def _with_rows(sources: list[str], embeddings: np.ndarray) -> list[str]:
    """Sources, with those of NaN rows (no teacher descriptor) renamed so no pair finds them."""
    missing = np.isnan(embeddings).any(axis=1)
    return [f"\0{s}" if gone else s for s, gone in zip(sources, missing, strict=True)]


def identification(
    config: ExperimentConfig,
    students: Any,
    data_root: Path,
    cache: Path,
    use_teacher: bool,
    space: TargetSpace | None,
) -> dict[str, Any]:
    """Closed set among peopleDevTest's people with >= 4 photos (their first 10): half of each
    person's photos enrolled (template: their mean), the rest probes."""
    spec = config.data
    lfw = dataset_root(spec.dataset, data_root)
    everyone = list_identities(lfw)
    people = [
        name
        for name in read_people_file(lfw / "peopleDevTest.txt")
        if len(everyone[name]) >= IDENTIFICATION_MIN_PHOTOS
    ]
    identities = {name: everyone[name][:IDENTIFICATION_MAX_PHOTOS] for name in people}
    faces = Aligner(lfw, cache, spec.size, spec.alignment).load(identities, progress=False)
    gallery, probes = split_per_identity(faces.labels, 0.5, spec.split_seed)
    rows = students(faces.faces)
    if use_teacher:
        rows |= teacher_embeddings(describe_faces(faces.sources, lfw, identities, cache), space)
    result: dict[str, Any] = {
        "protocol": (
            f"closed-set rank-1 among the {len(faces.names)} people of peopleDevTest.txt with "
            f">= {IDENTIFICATION_MIN_PHOTOS} photos (first {IDENTIFICATION_MAX_PHOTOS}), half of "
            "each person's photos enrolled, never seen in training"
        )
    }
    for name, embeddings in rows.items():
        usable = ~np.isnan(embeddings).any(axis=1)
        g, p = gallery[usable[gallery]], probes[usable[probes]]
        result[name] = closed_set(embeddings[g], faces.labels[g], embeddings[p], faces.labels[p])
    return result


def teacher_lfw_pairs(lfw: Path, cache: Path, whiten: float = 0.0) -> dict[str, Any]:
    """The teacher's own score on LFW's View 2 (``pairs.txt``, 6,000 pairs in 10 folds; people
    the teacher may have seen), with the trainer's pipeline (MTCNN's central face, dlib's
    5-point chip): cosine of unit descriptors, and of targets centered (and whitened) on the
    pair photos themselves. Pairs with a photo MTCNN finds no face in are scored as
    non-matches in ``all_pairs`` and left out of ``pairs_with_faces``."""
    from trainer.verification import read_pairs

    pairs = read_pairs(lfw / "pairs.txt")
    everyone = list_identities(lfw)
    people = sorted({s.split("/")[0] for p in pairs for s in (p.first, p.second)})
    wanted = {s for p in pairs for s in (p.first, p.second)}
    identities = {
        name: [path for path in everyone[name] if f"{name}/{path.name}" in wanted]
        for name in people
    }
    sources = sorted(wanted)
    descriptors = describe_faces(sources, lfw, identities, cache)
    has = ~np.isnan(descriptors).any(axis=1)
    rows = {"raw": np.full_like(descriptors, np.nan)}
    rows["raw"][has] = _unit(descriptors[has])
    rows["centered"] = np.full_like(descriptors, np.nan)
    rows["centered"][has] = TargetSpace.fit(descriptors[has], whiten)(descriptors[has])
    index = {source: i for i, source in enumerate(sources)}
    first = np.array([index[p.first] for p in pairs])
    second = np.array([index[p.second] for p in pairs])
    same = np.array([p.same for p in pairs])
    both = has[first] & has[second]
    # pairs.txt lists its 10 folds in order: 300 same then 300 different pairs each
    fold = np.repeat(np.arange(10), 600)
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "pairs_without_face": int((~both).sum()),
        "photos_without_face": int((~has).sum()),
    }
    for name, embeddings in rows.items():
        scores = np.where(
            both, (np.nan_to_num(embeddings[first] * embeddings[second])).sum(1), -1.0
        )
        result[name] = {
            "all_pairs_10fold": _folded(scores, same, fold),
            "pairs_with_faces_10fold": _folded(scores[both], same[both], fold[both]),
            "roc_auc_pairs_with_faces": float(roc_auc_score(same[both], scores[both])),
        }
    return result


def _folded(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> float:
    """LFW's 10-fold accuracy: each fold judged at the threshold best on the other nine."""
    correct = 0
    for held_out in range(10):
        test = fold == held_out
        threshold = best_threshold(scores[~test], same[~test])
        correct += int(((scores[test] >= threshold) == same[test]).sum())
    return correct / len(same)
