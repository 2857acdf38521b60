"""Merge per-experiment ``accuracy.json`` files into ``docs/results/accuracy.json``.

    python -m trainer.report CLOSED.json VIEW1.json [MORE.json ...] > docs/results/accuracy.json

The first closed-set and the first View 1 file give the headline fields; every file is kept
under ``runs`` by experiment name.
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
        runs[run["config"]["name"]] = run
    closed = next((r for r in runs.values() if "closed_set" in r), None)
    view1 = next((r for r in runs.values() if "verification_view1" in r), None)
    summary: dict[str, Any] = {}
    if closed:
        summary["closed_set"] = closed["closed_set"]
    if view1:
        summary["verification_view1"] = {  # nested blocks (tta, plain photos) stay in runs
            view: metrics["accuracy"]
            for view, metrics in view1["verification_view1"].items()
            if "accuracy" in metrics
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
