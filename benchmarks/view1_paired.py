"""Two trained View 1 students compared pair by pair on the same 1,000 test pairs of LFW View 1
(pairsDevTest, people never seen in training): each one's 10-fold accuracy, ROC AUC and
true-accept rate at 1 % false accepts, the differences (first minus second) with paired
bootstrap 95 % intervals, and McNemar's exact test on the pairs only one of them judges right
(``trainer.evaluate.paired_comparison``). Two students' separate Wilson intervals overlap long
before a difference on the same pairs is within noise; this says which.

    python benchmarks/view1_paired.py FIRST.yaml SECOND.yaml [--view scrambled] [--tracks] \
        [--output docs/results/teacher/view1-paired.json]

Each student is read from ``runs/<experiment name>/<original | scrambled-key-a>/checkpoint.pt``
(as ``benchmarks/teacher_view1_probe.py`` or ``rllfpr train`` leave it;
``trainer.train.finished_student``); a run that has not finished, or that belongs to another
experiment (the trainer's own resume check), is refused.
The scrambled students see their own experiment's key A (its SN seed, BN statistics
self-learned on its own training faces).
``--tracks`` embeds each pair face as the normalized mean over the experiment's test-time
copies (``tta``), as the probe's tracks do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from trainer.evaluate import paired_comparison
from trainer.experiment import view1_student
from trainer.train import View, embed
from trainer.verification import pair_scores


def view1_test_scores(
    path: Path, view: View, tracks: bool, runs: Path
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    config, view1, recognizer, face_view = view1_student(path, view, runs)
    faces = view1.pair_faces.faces
    embeddings = embed(recognizer, face_view, faces, tta=config.tta if tracks else None)
    scores, same = pair_scores(embeddings, view1.pair_faces.sources, view1.test_pairs)
    return scores, same, [(pair.first, pair.second) for pair in view1.test_pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--view", choices=["original", "scrambled"], default="scrambled")
    parser.add_argument("--tracks", action="store_true", help="Score tracks (the tta copies).")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("docs/results/view1-paired.json"))
    args = parser.parse_args()
    started = time.time()
    first, same, pairs = view1_test_scores(args.first, args.view, args.tracks, args.runs)
    second, same_second, pairs_second = view1_test_scores(
        args.second, args.view, args.tracks, args.runs
    )
    if pairs != pairs_second or not np.array_equal(same, same_second):
        raise SystemExit("the two experiments' View 1 test pairs differ: not comparable")
    result = {
        "protocol": __doc__,
        "command": f"python benchmarks/view1_paired.py {args.first} {args.second} "
        f"--view {args.view}{' --tracks' if args.tracks else ''} --output {args.output}",
        "first": str(args.first),
        "second": str(args.second),
        "view": args.view,
        "tracks": args.tracks,
        "comparison": paired_comparison(first, second, same, args.resamples),
        "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["comparison"], indent=2))


if __name__ == "__main__":
    main()
