"""Closed-set identification of finished View 1 students among people never seen in training:
``trainer.benchmarks.identification`` (peopleDevTest's people with at least 4 photos, their
first 10; half of each person's photos enrolled, the template their mean; the rest probes),
the same protocol as ``rllfpr eval accuracy``'s closed set, for one student at a time without
re-running the rest of that evaluation. With ``--tracks``, also each probe and template photo as
the mean embedding of the config's test-time copies (moved and mirrored, each scrambled on its
own: what a track of video frames gives).

    python benchmarks/closed_set.py CONFIG.yaml:VIEW [--tracks] \\
        --output docs/results/teacher/closed-set.json
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
from trainer.benchmarks import identification
from trainer.experiment import view1_student
from trainer.train import View, embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", help="CONFIG.yaml:VIEW, a finished View 1 run")
    parser.add_argument("--tracks", action="store_true", help="Also the config's tta copies.")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    path, _, name = args.student.rpartition(":")
    if name not in ("original", "scrambled"):
        raise SystemExit(f"{args.student}: name the view, CONFIG.yaml:original or :scrambled")
    view: View = "original" if name == "original" else "scrambled"
    config, _, recognizer, face_view = view1_student(Path(path), view, args.runs)

    def students(faces: np.ndarray) -> dict[str, np.ndarray]:
        rows: dict[str, np.ndarray] = {view: embed(recognizer, face_view, faces)}
        if args.tracks:
            rows[f"{view}_tracks"] = embed(recognizer, face_view, faces, tta=config.tta)
        return rows

    settings = load_settings(None)
    result: dict[str, Any] = {
        "command": f"python benchmarks/closed_set.py {args.student}"
        + (" --tracks" if args.tracks else "")
        + f" --output {args.output}",
        "tta_copies": config.tta.views if args.tracks else None,
    }
    result |= identification(config, students, settings.data, settings.cache, False, None)
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_1_5_15"] = {"start": load_before, "end": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "protocol"}, indent=2))


if __name__ == "__main__":
    main()
