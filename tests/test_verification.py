from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.evaluate import verification, wilson_interval
from trainer.verification import Pair, pair_scores, read_pairs


def test_lfw_pair_files_parse(data_root: Path) -> None:
    pairs = read_pairs(data_root / "lfw" / "pairsDevTest.txt")
    assert len(pairs) == 1000
    assert sum(p.same for p in pairs) == 500
    assert pairs[0] == Pair(
        "Abdullah_Gul/Abdullah_Gul_0013.jpg", "Abdullah_Gul/Abdullah_Gul_0014.jpg", True
    )
    assert all((data_root / "lfw" / p.first).is_file() for p in pairs[:20])


def test_malformed_pair_line_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("1\nonly_a_name\n")
    with pytest.raises(ValueError, match="malformed"):
        read_pairs(path)


def test_verification_threshold_comes_from_the_other_pairs() -> None:
    train_scores = np.array([0.9, 0.8, 0.2, 0.1])
    train_same = np.array([True, True, False, False])
    test_scores = np.array([0.85, 0.5, 0.15, 0.3])
    test_same = np.array([True, True, False, False])
    result = verification(test_scores, test_same, train_scores, train_same)
    assert result["threshold"] == pytest.approx(0.8)  # the best on training pairs
    assert result["accuracy"] == pytest.approx(0.75)  # 0.5 falls below it
    assert result["roc_auc"] == pytest.approx(1.0)


def test_pair_scores_are_cosines_of_the_pair() -> None:
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    scores, same = pair_scores(
        embeddings, ["a/1", "b/1", "a/2"], [Pair("a/1", "a/2", True), Pair("a/1", "b/1", False)]
    )
    assert scores.tolist() == [1.0, 0.0]
    assert same.tolist() == [True, False]
    # the second image of each pair embedded by another model (a plain photo)
    others = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    crossed, _ = pair_scores(
        embeddings,
        ["a/1", "b/1", "a/2"],
        [Pair("a/1", "a/2", True), Pair("a/1", "b/1", False)],
        second_embeddings=others,
    )
    assert crossed.tolist() == [0.0, 1.0]


def test_wilson_interval_brackets_the_rate() -> None:
    low, high = wilson_interval(93, 120)
    assert low < 93 / 120 < high
    assert wilson_interval(0, 0) == (0.0, 1.0)
