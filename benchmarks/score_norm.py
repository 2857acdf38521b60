"""Cohort score normalization for trained View 1 students: each student's raw cosine scores
against S-norm and adaptive S-norm (AS-norm: a face's ``top_k`` highest cohort scores only) on
the same searches (``rllfpr.scorenorm``). The cohort is 3,000 of the student's own training
faces (seed 0; LFW DevTrain people, never tested), embedded through the student's own view:
what an epoch's trainer holds and ships with its model (``trainer.rotation``).

- LFW View 1 (pairsDevTest, people never seen in training): 10-fold accuracy, ROC AUC and TAR at
  FAR 1 % of each normalization, compared with the raw scores pair by pair
  (``trainer.evaluate.paired_comparison``: paired bootstrap intervals, McNemar's exact test).
- Open set (the calibrate study's split, seed 0, people never seen in training):
  FNIR at FPIR on the test half (a DET summary), and at the operating point calibrated on the
  other half (no runner-up margin), each from raw and from normalized subject scores (a subject's
  best template); for single faces and for tracks of 3 photos (a track's subject scores are the
  mean of its faces', as the service decides). Scored by ``rllfpr.openset`` with the cohort, as
  the rotation calibrates an epoch with ``score_norm`` and the service decides.
- ``--sides``: the open set again with one face's z-score only, the probe's (Z-norm: a
  threshold that adapts to each probe, no template statistics needed) or the template's
  (T-norm), to see which side of S-norm carries its gain.
- ``--tracks``: View 1 again with each pair face embedded as the normalized mean of the config's
  test-time copies (``tta``: moved and mirrored, each scrambled on its own), normalized against
  the same single-face cohort.

    python benchmarks/score_norm.py CONFIG.yaml:VIEW [CONFIG.yaml:VIEW ...] [--top-k 50 200] \\
        [--sides] [--tracks] [--output docs/results/teacher/score-norm.json]

VIEW is ``original`` or ``scrambled``; each student is read from its finished run under
``runs/`` (``trainer.train.finished_student``), a scrambled one seeing its
experiment's key A.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rllfpr.config import load_settings
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork
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
from trainer.config import ExperimentConfig
from trainer.evaluate import paired_comparison, verification
from trainer.experiment import view1_student
from trainer.studies.openset import FPIR_POINTS, evaluation_faces
from trainer.train import FaceView, embed
from trainer.verification import View1Data, pair_rows, row_scores

COHORT = 3000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _open_set(
    embeddings: np.ndarray, halves: dict[str, Half], norm: CohortNorm | None
) -> dict[str, Any]:
    """The open-set rows, scored as the rotation calibrates and the service decides: raw
    cosines, or S-norm scores with ``norm`` (``rllfpr.openset`` with the epoch's cohort)."""
    kind: ScoreKind = "cosine" if norm is None else "s_norm"
    test, test_tracks = (
        searches_of(embeddings, halves["test"], norm),
        track_searches(embeddings, halves["test"], norm),
    )
    calibration = searches_of(embeddings, halves["calibration"], norm)
    calibration_tracks = track_searches(embeddings, halves["calibration"], norm)
    result: dict[str, Any] = dict(fnir_at_fpir(test, FPIR_POINTS, scores=kind))
    tracks: dict[str, Any] = dict(fnir_at_fpir(test_tracks, FPIR_POINTS, scores=kind))
    for target in (0.01, 0.1):
        point = calibrate(calibration, target, margins=(0.0,), scores=kind)
        result[f"calibrated_for_fpir_{target:g}"] = rates(test, point.threshold, 0.0)
        point = calibrate(calibration_tracks, target, margins=(0.0,), scores=kind)
        tracks[f"calibrated_for_fpir_{target:g}"] = rates(test_tracks, point.threshold, 0.0)
    return result | {"tracks_of_3_photos": tracks}


@dataclass(frozen=True)
class OneSide(CohortNorm):
    """One face's z-score instead of S-norm's mean of two: the probe's or the template's."""

    side: Literal["probe", "template"] = "probe"

    def matrix(self, probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
        similarity = np.asarray(probes, np.float64) @ np.asarray(templates, np.float64).T
        if self.side == "probe":
            mean, std = self.statistics(probes)
            return (similarity - mean[:, None]) / std[:, None]
        mean, std = self.statistics(templates)
        return (similarity - mean[None, :]) / std[None, :]


def _student(
    spec: str, runs: Path, keys: dict[str, ScramblerNetwork]
) -> tuple[ExperimentConfig, View1Data, Recognizer, FaceView]:
    """The finished student ``CONFIG.yaml:VIEW`` names, its View 1 data and its view."""
    path, _, name = spec.rpartition(":")
    if name not in ("original", "scrambled"):
        raise SystemExit(f"{spec}: name the view, CONFIG.yaml:original or CONFIG.yaml:scrambled")
    return view1_student(Path(path), "original" if name == "original" else "scrambled", runs, keys)


def _view1(
    embeddings: np.ndarray, view1: View1Data, cohort: np.ndarray, top_k: int | None, resamples: int
) -> dict[str, Any]:
    """View 1 from raw cosines and from their normalization (``top_k`` None: S-norm over the
    whole cohort), the latter compared with the former pair by pair."""
    train_rows = pair_rows(view1.pair_faces.sources, view1.train_pairs)
    test_rows = pair_rows(view1.pair_faces.sources, view1.test_pairs)
    stats = cohort_statistics(embeddings, cohort, top_k)
    raw = row_scores(embeddings, test_rows, None)
    normalized = row_scores(embeddings, test_rows, stats)
    train_normalized = row_scores(embeddings, train_rows, stats)
    same, train_same = test_rows[2], train_rows[2]
    return {
        "raw": verification(raw, same, row_scores(embeddings, train_rows, None), train_same),
        "normalized": verification(normalized, same, train_normalized, train_same),
        "normalized_against_raw": paired_comparison(normalized, raw, same, resamples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("students", nargs="+", help="CONFIG.yaml:VIEW, each a finished run")
    parser.add_argument("--top-k", type=int, nargs="*", default=[50, 200])
    parser.add_argument(
        "--tracks", action="store_true", help="Also View 1 as tracks (the config's tta copies)."
    )
    parser.add_argument(
        "--sides", action="store_true", help="Also the open set with one side's z-score only."
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("docs/results/teacher/score-norm.json"))
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    settings = load_settings(None)
    keys: dict[str, ScramblerNetwork] = {}
    result: dict[str, Any] = {
        "protocol": __doc__,
        "command": "python benchmarks/score_norm.py "
        + " ".join(args.students)
        + f" --top-k {' '.join(map(str, args.top_k))}"
        + (" --sides" if args.sides else "")
        + (" --tracks" if args.tracks else "")
        + f" --output {args.output}",
        "cohort_faces": COHORT,
        "students": {},
    }
    for spec in args.students:
        config, view1, recognizer, face_view = _student(spec, args.runs, keys)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(view1.train), min(COHORT, len(view1.train)), replace=False))
        cohort = _unit(embed(recognizer, face_view, view1.train.faces[sample]))
        pairs = _unit(embed(recognizer, face_view, view1.pair_faces.faces))
        tracks = None
        if args.tracks:  # the mean of each face's copies, normalized
            tracks = _unit(embed(recognizer, face_view, view1.pair_faces.faces, tta=config.tta))
        faces = evaluation_faces(config, settings)
        probes = _unit(embed(recognizer, face_view, faces.faces))
        halves = split_people(faces.labels, 0)
        row: dict[str, Any] = {"raw": {"open_set": _open_set(probes, halves, None)}}
        for top_k in [None, *args.top_k]:
            name = "s_norm" if top_k is None else f"as_norm_top{top_k}"
            row[name] = {
                "view1": _view1(pairs, view1, cohort, top_k, args.resamples),
                "open_set": _open_set(probes, halves, CohortNorm(cohort, top_k)),
            }
            if tracks is not None:
                row[name]["view1_tracks"] = _view1(tracks, view1, cohort, top_k, args.resamples)
                row[name]["view1_tracks"]["copies"] = config.tta.views
            if args.sides:
                for side in ("probe", "template"):
                    norm = OneSide(cohort, top_k, side=side)
                    row[name][f"open_set_{side}_side_only"] = _open_set(probes, halves, norm)
        result["students"][spec] = row
        summary = {
            name: (
                part["view1"]["raw"]["accuracy_10fold"],
                part["view1"]["normalized"]["accuracy_10fold"],
            )
            for name, part in row.items()
            if "view1" in part
        }
        print(spec, json.dumps(summary), flush=True)
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_1_5_15"] = {"start": load_before, "end": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
