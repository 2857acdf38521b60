"""Merge per-experiment ``accuracy.json`` files into ``docs/results/accuracy.json``.

    python -m trainer.report CLOSED.json VIEW1.json [MORE.json ...] > docs/results/accuracy.json

The first closed-set and the first View 1 file give the headline fields (View 1: accuracy at
the training pairs' threshold, and where the run has them, the 10-fold cross-validated accuracy
and ROC AUC, which do not depend on that threshold); every file is kept under ``runs`` by its
file name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def merge(paths: list[Path]) -> dict[str, Any]:
    runs = {}
    for path in paths:
        run = json.loads(path.read_text())
        runs[path.stem] = run  # a file name: two runs of one experiment config can sit side by side
    closed = next((r for r in runs.values() if "closed_set" in r), None)
    view1 = next((r for r in runs.values() if "verification_view1" in r), None)
    summary: dict[str, Any] = {}
    if closed:
        summary["closed_set"] = closed["closed_set"]
    if view1:
        views = {  # nested blocks (tta, plain photos) stay in runs
            view: metrics
            for view, metrics in view1["verification_view1"].items()
            if "accuracy" in metrics
        }
        summary["verification_view1"] = {view: m["accuracy"] for view, m in views.items()}
        if all("accuracy_10fold" in m for m in views.values()):  # runs since issue 4's GPU round 2
            summary["verification_view1_threshold_free"] = {
                view: {"accuracy_10fold": m["accuracy_10fold"], "roc_auc": m["roc_auc"]}
                for view, m in views.items()
            }
    headline = [r for r in (closed, view1) if r]
    summary["hardware"] = sorted({r["hardware"] for r in headline})
    summary["command"] = [r["command"] for r in headline]
    summary["config"] = [r["config"] for r in headline]
    summary["runs"] = runs
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="accuracy.json of each experiment")
    print(json.dumps(merge(parser.parse_args().runs), indent=2))
