"""Linear projections of a finished student's embeddings, fitted after training on labeled
faces, against its raw embeddings: can a map that the trainer could fold into each epoch's model
(whitening the variation within a person, as WCCN and LDA do for speaker and face embeddings)
undo part of what the SN costs, without training again?

Each projection is fitted on one of two sets of labeled faces, never on the tested people:
- ``training``: the student's own training faces (LFW DevTrain people, CFP's people left out;
  people with at least two faces give the within-person scatter), which it has fitted;
- ``cfp``: CFP's frontal photos of its people who are not LFW people (never seen in training,
  none in View 1), whose within-person scatter the student has not fitted.

Projections: ``center`` (subtract the fitting faces' mean), ``pca`` (whiten all variation),
``wccn`` (whiten the within-person variation), ``lda`` (then keep the 64 directions that best
separate people); covariances shrunk toward their mean variance by ``shrink``. Every projected
embedding is renormalized and scored by cosine, and also with AS-norm (``rllfpr.scorenorm``, top
50 of a cohort of 3,000 training faces projected the same way), as the service would score it.

- LFW View 1 (pairsDevTest): 10-fold accuracy, ROC AUC, TAR at FAR 1 %, each against the raw
  cosine pair by pair (``trainer.evaluate.paired_comparison``).
- Open set (the calibrate study's split, seed 0): FNIR at FPIR 0.01 and 0.1 on the test half
  (a DET summary), single faces. ``--splits N``: also N splits of the people (seeds 0..N-1),
  FNIR at FPIR 0.01 on each test half and at the threshold calibrated on its other half
  (``rllfpr.openset.calibrate``, as ``keys rotate`` calibrates), single faces and tracks of 3.

    python benchmarks/embedding_projection.py CONFIG.yaml:VIEW [CONFIG.yaml:VIEW ...] \\
        [--splits N] --output docs/results/teacher/embedding-projection.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from rllfpr.config import load_settings
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.store import ScoreKind
from rllfpr.openset import (
    Half,
    calibrate,
    fnir_at_fpir,
    rates,
    searches_of,
    split_people,
    track_searches,
)
from rllfpr.scorenorm import CohortNorm, cohort_statistics
from trainer import cfp
from trainer.evaluate import VerificationReport, paired_comparison, verification
from trainer.experiment import view1_student
from trainer.studies.openset import evaluation_faces
from trainer.train import FaceView, embed
from trainer.verification import PairRows, pair_rows, row_scores

COHORT, TOP_K, LDA_DIMENSIONS = 3000, 50, 64
PROJECTIONS = (
    ("center", "training", 0.0),
    ("pca", "training", 0.1),
    ("wccn", "training", 0.1),
    ("wccn", "training", 0.3),
    ("lda", "training", 0.1),
    ("center", "cfp", 0.0),
    ("wccn", "cfp", 0.1),
    ("wccn", "cfp", 0.3),
    ("wccn", "cfp", 0.6),
    ("lda", "cfp", 0.1),
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _inverse_sqrt(covariance: np.ndarray, shrink: float) -> np.ndarray:
    """covariance ** -1/2, shrunk toward its mean variance by ``shrink`` (0..1)."""
    dims = len(covariance)
    shrunk = (1 - shrink) * covariance + shrink * np.trace(covariance) / dims * np.eye(dims)
    values, vectors = np.linalg.eigh(shrunk)
    return vectors @ np.diag(1 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def _within(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within-person covariance over the people with at least two faces, and those faces."""
    counts = np.bincount(labels[labels >= 0])
    keep = np.isin(labels, np.flatnonzero(counts >= 2))
    x, labels = x[keep], labels[keep]
    _, column = np.unique(labels, return_inverse=True)
    means = np.zeros((column.max() + 1, x.shape[1]))
    np.add.at(means, column, x)
    means /= np.bincount(column)[:, None]
    residual = x - means[column]
    return residual.T @ residual / len(residual), means, column


def fit(
    kind: str, x: np.ndarray, labels: np.ndarray, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """The projection ``(x - mean) @ matrix`` of ``kind``, fitted on faces ``x`` (float64)."""
    mean = x.mean(axis=0)
    if kind == "center":
        return mean, np.eye(x.shape[1])
    if kind == "pca":
        return mean, _inverse_sqrt(np.cov((x - mean).T), shrink)
    within, means, _ = _within(x, labels)
    whiten = _inverse_sqrt(within, shrink)
    if kind == "wccn":
        return mean, whiten
    if kind == "lda":  # the whitened people's means: their main directions
        _, vectors = np.linalg.eigh(np.cov(((means - mean) @ whiten).T))
        return mean, whiten @ vectors[:, ::-1][:, :LDA_DIMENSIONS]
    raise ValueError(f"unknown projection {kind!r}")


def _view1(
    embeddings: np.ndarray, test: PairRows, train: PairRows, cohort: np.ndarray
) -> dict[str, tuple[VerificationReport, np.ndarray]]:
    """Each score kind's View 1 report and its test pairs' scores."""
    stats = cohort_statistics(embeddings, cohort, TOP_K)
    result = {}
    for name, statistics in (("cosine", None), ("as_norm", stats)):
        scores = row_scores(embeddings, test, statistics)
        report = verification(scores, test[2], row_scores(embeddings, train, statistics), train[2])
        result[name] = (report, scores)
    return result


def _open_set(
    probes: np.ndarray, labels: np.ndarray, cohort: np.ndarray, splits: int
) -> dict[str, Any]:
    """FNIR at FPIR 0.01 and 0.1 on split 0's test half (a DET summary); with ``splits`` > 1,
    also for each split (seeds 0..splits-1) at FPIR 0.01: on the test half's own searches and
    at the threshold calibrated on the other half, for single faces and tracks of 3 photos."""
    norm = CohortNorm(cohort.astype(np.float32), TOP_K)
    rows = probes.astype(np.float32)
    kinds: tuple[tuple[str, CohortNorm | None, ScoreKind], ...] = (
        ("cosine", None, "cosine"),
        ("as_norm", norm, "s_norm"),
    )
    test = split_people(labels, 0)["test"]
    result: dict[str, Any] = {
        name: fnir_at_fpir(searches_of(rows, test, kind_norm), (0.01, 0.1), scores=kind)
        for name, kind_norm, kind in kinds
    }
    if splits > 1:
        result["splits"] = [
            {
                name: _split_rates(rows, split_people(labels, seed), kind_norm, kind)
                for name, kind_norm, kind in kinds
            }
            for seed in range(splits)
        ]
    return result


def _split_rates(
    rows: np.ndarray, halves: dict[str, Half], norm: CohortNorm | None, kind: ScoreKind
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for faces, searches in (("single_faces", searches_of), ("tracks_of_3", track_searches)):
        test = searches(rows, halves["test"], norm)
        point = calibrate(searches(rows, halves["calibration"], norm), 0.01, (0.0,), scores=kind)
        result[faces] = fnir_at_fpir(test, (0.01,), scores=kind) | {
            "calibrated_for_fpir_0.01": rates(test, point.threshold, 0.0)
        }
    return result


def _cfp_unseen(data: Path, cache: Path, size: int) -> tuple[Any, np.ndarray]:
    """CFP's frontal photos of people who are not LFW people, and their labels."""
    root = data / "cfp"
    faces, _ = cfp.load_faces(root, cache, size)
    names = (root / "Data" / "list_name.txt").read_text().splitlines()
    lfw = {path.name for path in (data / "lfw").iterdir()}
    unseen = {
        label
        for label, folder in enumerate(faces.names)
        if names[int(folder) - 1].strip().replace(" ", "_") not in lfw
    }
    keep = np.array(
        [
            label in unseen and "/frontal/" in source
            for label, source in zip(faces.labels, faces.sources, strict=True)
        ]
    )
    return faces.faces[keep], faces.labels[keep]


def _embedded(recognizer: Recognizer, view: FaceView, faces: np.ndarray) -> np.ndarray:
    return embed(recognizer, view, faces).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("students", nargs="+", help="CONFIG.yaml:VIEW, each a finished run")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument(
        "--splits", type=int, default=1, help="Also the open set on this many people splits."
    )
    parser.add_argument(
        "--output", type=Path, default=Path("docs/results/teacher/embedding-projection.json")
    )
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    settings = load_settings(None)
    result: dict[str, Any] = {
        "protocol": __doc__,
        "command": "python benchmarks/embedding_projection.py "
        + " ".join(args.students)
        + (f" --splits {args.splits}" if args.splits > 1 else "")
        + f" --output {args.output}",
        "students": {},
    }
    for spec in args.students:
        path, _, view = spec.rpartition(":")
        if view not in ("original", "scrambled"):
            raise SystemExit(f"{spec}: name the view, CONFIG.yaml:original or :scrambled")
        config, view1, recognizer, face_view = view1_student(
            Path(path), "original" if view == "original" else "scrambled", args.runs
        )

        open_set_faces = evaluation_faces(config, settings)
        cfp_faces, cfp_labels = _cfp_unseen(settings.data, settings.cache, config.data.size)
        train = _embedded(recognizer, face_view, view1.train.faces)
        fitting = {
            "training": (train, view1.train.labels),
            "cfp": (_embedded(recognizer, face_view, cfp_faces), cfp_labels),
        }
        pairs, probes = (
            _embedded(recognizer, face_view, view1.pair_faces.faces),
            _embedded(recognizer, face_view, open_set_faces.faces),
        )
        sample = np.sort(np.random.default_rng(0).choice(len(train), COHORT, replace=False))
        row: dict[str, Any] = {
            "fitting_faces": {
                name: {"faces": len(x), "people": len(np.unique(y))}
                for name, (x, y) in fitting.items()
            }
        }
        test_rows = pair_rows(view1.pair_faces.sources, view1.test_pairs)
        train_rows = pair_rows(view1.pair_faces.sources, view1.train_pairs)
        raw = None
        for kind, source, shrink in (("none", "", 0.0), *PROJECTIONS):
            if kind == "none":
                mean, matrix = np.zeros(train.shape[1]), np.eye(train.shape[1])
            else:
                mean, matrix = fit(kind, *fitting[source], shrink)

            def project(
                x: np.ndarray, mean: np.ndarray = mean, matrix: np.ndarray = matrix
            ) -> np.ndarray:
                return _unit((x - mean) @ matrix)

            cohort = project(train[sample])
            scored = _view1(project(pairs), test_rows, train_rows, cohort)
            if raw is None:  # the unprojected cosines, which every row is compared with
                raw = scored["cosine"][1]
            name = "none" if kind == "none" else f"{kind}_{source}_shrink{shrink:g}"
            row[name] = {
                "view1": {
                    score: report
                    | {
                        "against_raw_cosine": paired_comparison(
                            scores, raw, test_rows[2], args.resamples
                        )
                    }
                    for score, (report, scores) in scored.items()
                },
                "open_set": _open_set(project(probes), open_set_faces.labels, cohort, args.splits),
            }
            print(
                spec,
                name,
                {s: round(row[name]["view1"][s]["accuracy_10fold"], 3) for s in row[name]["view1"]},
                row[name]["open_set"],
                flush=True,
            )
        result["students"][spec] = row
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_1_5_15"] = {"start": load_before, "end": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
