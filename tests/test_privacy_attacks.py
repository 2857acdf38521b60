"""Attack measurements on cases with known answers: linkability, EER, the questionnaire,
the inversion decoder, and the goal checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.studies.privacy import questionnaire
from trainer.studies.privacy.attacks.inversion import UNet, train_decoder
from trainer.studies.privacy.attacks.revocation import equal_error_rate, match, template_scores
from trainer.studies.privacy.attacks.unlinkability import linkability
from trainer.studies.privacy.config import InversionConfig
from trainer.studies.privacy.goals import Goal


def test_identical_score_distributions_are_unlinkable() -> None:
    scores = np.random.default_rng(0).normal(0, 1, 5000)
    result = linkability(scores, scores.copy())
    assert result.d_sys == pytest.approx(0.0)
    assert np.all(result.local == 0)


def test_disjoint_score_distributions_are_fully_linkable() -> None:
    rng = np.random.default_rng(0)
    result = linkability(rng.uniform(0.6, 1.0, 500), rng.uniform(-1.0, 0.2, 500))
    assert result.d_sys == pytest.approx(1.0)
    assert result.mated_density.sum() == pytest.approx(1.0)


def test_partly_overlapping_distributions_are_in_between() -> None:
    rng = np.random.default_rng(0)
    result = linkability(rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000), bins=50)
    assert 0.2 < result.d_sys < 0.6
    with pytest.raises(ValueError, match="mated"):
        linkability(np.array([]), np.ones(3))


def test_equal_error_rate_of_known_distributions() -> None:
    rng = np.random.default_rng(0)
    same = rng.normal(0, 1, 20000)
    assert equal_error_rate(same, rng.normal(0, 1, 20000)) == pytest.approx(0.5, abs=0.02)
    assert equal_error_rate(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 0.0
    # N(1,1) vs N(0,1): the threshold 0.5 errs with probability Phi(-0.5) = 0.3085 each way
    assert equal_error_rate(rng.normal(1, 1, 20000), same) == pytest.approx(0.3085, abs=0.02)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_match_on_perfect_and_on_random_embeddings() -> None:
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(10, 32)))
    labels = np.repeat(np.arange(10), 4)
    embeddings = _unit(centres[labels] + 0.05 * rng.normal(size=(40, 32)))
    perfect = match(embeddings, labels, embeddings, labels)
    assert perfect["accuracy"] == 1.0
    assert perfect["eer"] == 0.0
    genuine, impostor = template_scores(embeddings, labels, embeddings, labels)
    assert len(genuine) == 40
    assert len(impostor) == 40 * 9
    unrelated = match(embeddings, labels, _unit(rng.normal(size=(40, 32))), labels)
    assert unrelated["accuracy"] < 0.4
    assert unrelated["eer"] > 0.25


def test_questionnaire_draws_distinct_other_people() -> None:
    labels = np.repeat(np.arange(6), 3)
    questions = questionnaire.draw_questions(labels, 4, seed=0)
    assert questions.shape == (18, 4)
    assert np.array_equal(questions[:, 0], np.arange(18))
    for row in questions:
        people = labels[row]
        assert len(set(people.tolist())) == 4
    with pytest.raises(ValueError, match="distinct people"):
        questionnaire.draw_questions(np.repeat(np.arange(3), 2), 4, seed=0)


def test_questionnaire_answers_perfectly_and_at_chance() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(50), 8)
    questions = questionnaire.draw_questions(labels, 4, seed=0)
    faces = _unit(rng.normal(size=(400, 64)))
    same = questionnaire.answer(faces, faces, questions)
    assert same["match_accuracy"] == 1.0
    assert same["dissimilarity_0_4"] == 0.0
    unrelated = questionnaire.answer(faces, _unit(rng.normal(size=(400, 64))), questions)
    assert unrelated["chance"] == 0.25
    assert 0.18 < unrelated["match_accuracy"] < 0.32
    assert unrelated["dissimilarity_0_4"] > 3.5


def test_unet_shapes_and_a_decoder_that_learns() -> None:
    network = UNet((4, 8, 16))
    with torch.no_grad():
        output = network(torch.zeros(2, 1, 16, 16))
    assert output.shape == (2, 1, 16, 16)
    assert float(output.min()) >= 0.0
    with pytest.raises(ValueError, match="multiple of 4"):
        network(torch.zeros(2, 1, 10, 10))
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (16, 8, 8)).astype(np.uint8)
    config = InversionConfig(widths=(8, 16), epochs=10, batch_size=4, lr=1e-2)
    decoder = train_decoder(grey, grey, config, torch.device("cpu"))
    assert decoder.losses[-1] < 0.5 * decoder.losses[0]  # the identity map is being learned
    assert decoder.reconstruct(grey).shape == grey.shape


def test_goal_direction_and_shortfall() -> None:
    assert Goal("low is good", 0.05, 0.1, at_most=True).met
    high = Goal("low is good", 0.25, 0.1, at_most=True)
    assert not high.met
    assert high.shortfall == pytest.approx(0.15)
    assert Goal("high is good", 0.9, 0.8, at_most=False).met
    assert Goal("high is good", 0.7, 0.8, at_most=False).shortfall == pytest.approx(0.1)
