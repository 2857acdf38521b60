from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.evaluate import (
    cross_validated_accuracy,
    cross_validated_correct,
    paired_comparison,
    tar_at_far,
    verification,
    wilson_interval,
)
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


def test_cross_validated_accuracy_survives_a_threshold_that_does_not_transfer() -> None:
    # a model that fits its training people: training pairs far apart, so their best
    # threshold (0.9) rejects every same-person pair of people it never saw
    train_scores = np.array([0.95, 0.9, 0.1, 0.05])
    train_same = np.array([True, True, False, False])
    rng = np.random.default_rng(0)
    same = np.array([True] * 100 + [False] * 100)  # blocks, as in LFW's pairs files
    scores = np.where(same, 0.5, 0.2) + rng.normal(0, 0.02, 200)
    result = verification(scores, same, train_scores, train_same)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["roc_auc"] == pytest.approx(1.0)
    # every fold sees both kinds; a held-out pair below the other folds' lowest same-person
    # score can still fall under their threshold
    assert result["accuracy_10fold"] >= 0.99
    low, high = result["accuracy_10fold_ci95"]
    assert low < result["accuracy_10fold"] < high


def test_cross_validated_threshold_never_sees_its_own_fold() -> None:
    # one same-person pair per fold scores below every different-person pair: a threshold
    # chosen on the other folds can only place it by the others, so those ten pairs are lost
    same = np.array([True] * 20 + [False] * 20)
    scores = np.concatenate([np.tile([0.9, 0.0], 10), np.full(20, 0.3)])
    assert cross_validated_accuracy(scores, same) == pytest.approx(30 / 40)
    # exactly the ten low same-person pairs are the ones judged wrong
    right = cross_validated_correct(scores, same)
    assert np.flatnonzero(~right).tolist() == list(range(1, 20, 2))


def _two_models(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    same = np.array([True] * 500 + [False] * 500)
    noise = rng.normal(0, 1, (2, 1000))
    strong = np.where(same, 1.5, 0.0) + noise[0]  # separates the kinds by 1.5 sd
    weak = np.where(same, 0.3, 0.0) + noise[1]  # by 0.3 sd
    return strong, weak, same


def test_paired_comparison_finds_a_real_difference_and_its_sign() -> None:
    strong, weak, same = _two_models(np.random.default_rng(0))
    result = paired_comparison(strong, weak, same, resamples=300)
    low, high = result["accuracy_difference_ci95"]
    assert 0 < low < result["accuracy_difference"] < high
    assert result["accuracy_difference"] == pytest.approx(
        cross_validated_accuracy(strong, same) - cross_validated_accuracy(weak, same)
    )
    assert result["roc_auc_difference_ci95"][0] > 0
    assert result["tar_at_far_1e-2_difference_ci95"][0] > 0
    assert result["tar_at_far_1e-2"][0] == pytest.approx(tar_at_far(strong, same, 1e-2))
    assert result["only_first_right"] > result["only_second_right"]
    assert result["mcnemar_p"] < 1e-6
    reverse = paired_comparison(weak, strong, same, resamples=300)
    assert reverse["accuracy_difference"] == pytest.approx(-result["accuracy_difference"])
    assert reverse["mcnemar_p"] == pytest.approx(result["mcnemar_p"])


def test_paired_comparison_of_a_model_with_itself_is_exactly_nothing() -> None:
    strong, _, same = _two_models(np.random.default_rng(1))
    result = paired_comparison(strong, strong.copy(), same, resamples=100)
    assert result["accuracy_difference_ci95"] == (0.0, 0.0)
    assert result["roc_auc_difference_ci95"] == (0.0, 0.0)
    assert result["tar_at_far_1e-2_difference_ci95"] == (0.0, 0.0)
    assert (result["only_first_right"], result["only_second_right"]) == (0, 0)
    assert result["mcnemar_p"] == 1.0


def test_paired_comparison_refuses_scores_of_other_pairs() -> None:
    strong, weak, same = _two_models(np.random.default_rng(2))
    with pytest.raises(ValueError, match="differ"):
        paired_comparison(strong, weak[:-1], same)
    with pytest.raises(ValueError, match="resamples"):
        paired_comparison(strong, weak, same, resamples=0)


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
