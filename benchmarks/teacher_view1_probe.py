"""The trained View 1 students of an experiment, scored without test-time copies: LFW View 1
(10-fold on pairsDevTest, threshold transferred from pairsDevTrain) and open-set FNIR at FPIR
(the calibrate study's split, seed 0), each as trained and with the student's embeddings
centered on its own mean over 3,000 training faces (all of them where there are fewer; a fixed
vector, as the teacher's targets are centered), plus the mean cosine of 400 random unseen faces;
and how well the student fits its targets (``Q_e``-turned teacher descriptors, mean ``1 - cos``)
on those training faces and on the faces of the test pairs (people never seen in training): the
gap between the two is what training does not generalize.

    python benchmarks/teacher_view1_probe.py configs/teacher/view1-compact-64.yaml \
        [--views original scrambled] [--tracks] [--output docs/results/teacher/view1-probe.json]

``--tracks`` also scores View 1 with each pair face embedded as the normalized mean over the
config's test-time copies (``tta``: moved and mirrored, each scrambled on its own), what a
video track of one person gives.

Issue 22: a few minutes where ``rllfpr eval accuracy`` (CFP and 18 test-time copies of every
face) takes most of an hour on two busy cores; the models must be trained already
(``rllfpr train``), else they are trained here (with ``loss.distill_weight``, the original-face
student first: the scrambled one is distilled from it). ``--distill-from`` names another
experiment whose (trained) original-face student the scrambled one is distilled from instead:
a run that resumes another's checkpoints with a longer schedule keeps the teacher its first
epochs had. The output also records each model's training seconds and the load average before
and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllfpr.config import load_settings
from rllfpr.openset import fnir_at_fpir, searches_of, split_people
from trainer.benchmarks import lfw_identities
from trainer.config import ExperimentConfig
from trainer.corpus import describe_faces
from trainer.evaluate import verification
from trainer.experiment import load_view1_for, make_key
from trainer.studies.openset import FPIR_POINTS, evaluation_faces
from trainer.targets import rotated
from trainer.train import FaceView, TrainResult, embed, train
from trainer.verification import View1Data, pair_scores

SAMPLE = 3000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _misfit(embeddings: np.ndarray, targets: np.ndarray) -> float:
    return float(1 - (_unit(embeddings) * _unit(targets)).sum(1).mean())


def _fit_sets(
    config: ExperimentConfig, view1: View1Data, sample: np.ndarray, data_root: Path, cache: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(rows of the test pairs' faces that have a teacher descriptor, their targets, the
    training sample's targets), turned by key A's ``Q_e`` as the students were trained;
    None without a teacher."""
    if view1.target_space is None or view1.train.targets is None:
        return None
    seeds = config.teacher.rotation_seeds
    seed = seeds[0] if seeds is not None else None
    sources = view1.pair_faces.sources
    wanted = {pair.first for pair in view1.test_pairs} | {p.second for p in view1.test_pairs}
    rows = np.array([i for i, source in enumerate(sources) if source in wanted])
    lfw, identities = lfw_identities(config, data_root, view1.pair_faces)
    descriptors = describe_faces([sources[i] for i in rows], lfw, identities, cache)
    has = ~np.isnan(descriptors).any(axis=1)
    targets = rotated(view1.target_space(descriptors[has]), seed)
    return rows[has], targets, rotated(view1.train.targets[sample], seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument(
        "--views", nargs="+", choices=["original", "scrambled"], default=["original", "scrambled"]
    )
    parser.add_argument("--tracks", action="store_true", help="Also View 1 as tracks (tta).")
    parser.add_argument(
        "--distill-from",
        type=Path,
        help="Distil the scrambled student from this experiment's original-face student.",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("docs/results/teacher/view1-probe.json")
    )
    args = parser.parse_args()
    started = time.time()
    settings = load_settings(None)
    config = ExperimentConfig.from_yaml(args.experiment)
    view1 = load_view1_for(config, settings.data, settings.cache)
    key = make_key(config, config.key_seeds[0], view1.train.faces)
    run_dir, cpu = args.runs / config.name, torch.device("cpu")
    load_before = os.getloadavg()
    models: dict[str, tuple[TrainResult, FaceView]] = {}
    distill = bool(config.loss.distill_weight) and "scrambled" in args.views
    source = ExperimentConfig.from_yaml(args.distill_from) if args.distill_from else config
    if source.data != config.data:
        raise SystemExit(f"{args.distill_from} trains on other faces than {args.experiment}")
    original: TrainResult | None = None
    if "original" in args.views or (distill and source is config):
        original = train(config, view1.train, "original", None, run_dir / "original")
        if "original" in args.views:
            models["original"] = (original, FaceView("original", None, cpu))
    teacher = original
    if distill and source is not config:
        teacher = train(source, view1.train, "original", None, args.runs / source.name / "original")
    if "scrambled" in args.views:
        models["scrambled"] = (
            train(
                config,
                view1.train,
                "scrambled",
                key,
                run_dir / "scrambled-key-a",
                teacher=teacher.recognizer if teacher is not None and distill else None,
            ),
            FaceView("scrambled", key, cpu),
        )
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(view1.train), min(SAMPLE, len(view1.train)), replace=False))
    faces = evaluation_faces(config, settings)
    test = split_people(faces.labels, 0)["test"]
    result: dict[str, Any] = {
        "protocol": __doc__,
        "command": f"python benchmarks/teacher_view1_probe.py {args.experiment} "
        f"--views {' '.join(args.views)}{' --tracks' if args.tracks else ''} "
        + (f"--distill-from {args.distill_from} " if args.distill_from else "")
        + f"--output {args.output}",
        "scrambled_distilled_from": source.name if distill else None,
    }
    fit = _fit_sets(config, view1, sample, settings.data, settings.cache)
    for name, (model, view) in models.items():
        training = embed(model.recognizer, view, view1.train.faces[sample])
        mean = training.mean(0)
        probes = embed(model.recognizer, view, faces.faces)
        pairs = embed(model.recognizer, view, view1.pair_faces.faces)
        row: dict[str, Any] = {
            "training_seconds": round(model.seconds, 1),
            "mean_embedding_norm": float(np.linalg.norm(mean)),
        }
        if fit is not None:
            unseen, targets_unseen, targets_training = fit
            row["target_fit_1_minus_cos"] = {
                "training_faces": _misfit(training, targets_training),
                "unseen_test_pair_faces": _misfit(pairs[unseen], targets_unseen),
            }
        for label, center in (("as_trained", np.zeros_like(mean)), ("centered", mean)):
            p, q = _unit(probes - center), _unit(pairs - center)
            sources = view1.pair_faces.sources
            train_scores, train_same = pair_scores(q, sources, view1.train_pairs)
            test_scores, test_same = pair_scores(q, sources, view1.test_pairs)
            some = p[rng.choice(len(p), 400, replace=False)]
            cosines = some @ some.T
            row[label] = {
                "view1": verification(test_scores, test_same, train_scores, train_same),
                "openset_test_fnir_at_fpir": fnir_at_fpir(searches_of(p, test), FPIR_POINTS),
                "mean_cosine_random_faces": float(cosines[~np.eye(400, dtype=bool)].mean()),
            }
        if args.tracks:
            tracks = embed(model.recognizer, view, view1.pair_faces.faces, tta=config.tta)
            sources = view1.pair_faces.sources
            train_scores, train_same = pair_scores(tracks, sources, view1.train_pairs)
            test_scores, test_same = pair_scores(tracks, sources, view1.test_pairs)
            row["tracks"] = {
                "copies": config.tta.views,
                "view1": verification(test_scores, test_same, train_scores, train_same),
            }
        result[name] = row
        print(name, json.dumps(row), flush=True)
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_1_5_15"] = {"start": load_before, "end": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
