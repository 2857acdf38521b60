"""Merging per-run accuracy.json files into the headline docs/results/accuracy.json."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.report import merge


def _run(path: Path, document: dict[str, object]) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_merge_takes_headlines_and_skips_nested_view1_blocks(tmp_path: Path) -> None:
    pairs = {"accuracy": 0.75, "roc_auc": 0.8}
    view1 = _run(
        tmp_path / "view1.json",
        {
            "config": {"name": "view1"},
            "hardware": "cpu",
            "command": "rllfpr eval accuracy view1.yaml",
            "verification_view1": {
                "original": pairs | {"accuracy": 0.88},
                "scrambled": pairs,
                "plain_photo_pairs": {"key_a_recognizer_scrambled_first": pairs},
                "tta": {"copies": {"views": 18}, "scrambled": pairs},
            },
        },
    )
    closed = _run(
        tmp_path / "closed.json",
        {
            "config": {"name": "closed"},
            "hardware": "cpu",
            "command": "rllfpr eval accuracy closed.yaml",
            "closed_set": {"scrambled": {"accuracy": 0.48}},
        },
    )
    summary = merge([closed, view1])
    assert summary["verification_view1"] == {"original": 0.88, "scrambled": 0.75}
    assert "verification_view1_threshold_free" not in summary  # a run from before the metric
    assert summary["closed_set"] == {"scrambled": {"accuracy": 0.48}}
    assert set(summary["runs"]) == {"closed", "view1"}
    assert summary["command"] == [
        "rllfpr eval accuracy closed.yaml",
        "rllfpr eval accuracy view1.yaml",
    ]


def test_merge_adds_threshold_free_view1_metrics_where_the_run_has_them(tmp_path: Path) -> None:
    pairs = {"accuracy": 0.75, "accuracy_10fold": 0.8, "roc_auc": 0.9}
    view1 = _run(
        tmp_path / "view1.json",
        {
            "config": {"name": "view1"},
            "hardware": "cpu",
            "command": "rllfpr eval accuracy view1.yaml",
            "verification_view1": {"original": pairs, "scrambled": pairs | {"roc_auc": 0.85}},
        },
    )
    summary = merge([view1])
    assert summary["verification_view1_threshold_free"] == {
        "original": {"accuracy_10fold": 0.8, "roc_auc": 0.9},
        "scrambled": {"accuracy_10fold": 0.8, "roc_auc": 0.85},
    }
