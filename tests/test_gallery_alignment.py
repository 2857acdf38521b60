"""The gallery-alignment attack on cases whose answer is known: a rotated copy of a gallery
(in another order, with noise, in another dimension) is paired ~100 %; unrelated galleries at
chance; and a pairing's rotation carries templates of people outside the galleries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from trainer.alignment import (
    Frame,
    align_galleries,
    correspondence_accuracy,
    signatures,
    structure_agreement,
)
from trainer.studies.privacy.gallery_alignment import (
    Victims,
    attack_sizes,
    rank1,
    summarize,
    templates,
    trial,
)


def _rotated_copy(
    gallery: np.ndarray, noise: float, rng: np.random.Generator, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(second, truth, rotation): second[truth[i]] = gallery[i] @ rotation + noise."""
    n, d = gallery.shape
    rotation = ortho_group.rvs(width or d, random_state=int(rng.integers(2**31)))[:d]
    truth = rng.permutation(n)
    second = np.empty((n, rotation.shape[1]))
    second[truth] = gallery @ rotation + noise * rng.normal(size=(n, rotation.shape[1]))
    return second, truth, rotation


@pytest.mark.parametrize(("n", "noise"), [(10, 0.0), (60, 0.0), (60, 0.3)])
def test_a_rotated_copy_in_another_order_is_matched(n: int, noise: float) -> None:
    rng = np.random.default_rng(n)
    first = rng.normal(size=(n, 32)) + 0.5  # a shared component, as face descriptors have
    second, truth, _ = _rotated_copy(first, noise, rng)
    attack = align_galleries(first, second, restarts=1)
    assert correspondence_accuracy(attack.matching, truth) >= 0.98
    assert attack.agreement > 0.9
    rotated = attack.carry(first)
    assert np.mean(np.sum(rotated * attack.second.apply(second)[truth], axis=1)) > 0.9


def test_galleries_of_different_widths_are_matched() -> None:
    rng = np.random.default_rng(1)
    first = rng.normal(size=(40, 16))
    second, truth, _ = _rotated_copy(first, 0.05, rng, width=24)  # 16-d cloud in a 24-d space
    attack = align_galleries(first, second, restarts=1)
    assert correspondence_accuracy(attack.matching, truth) == 1.0
    assert attack.rotation.shape == (24, 24)


def test_unrelated_galleries_are_matched_at_chance() -> None:
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(100, 32)), rng.normal(size=(100, 32))
    truth = rng.permutation(100)
    attack = align_galleries(first, second, restarts=1)
    # the attack's pairing is independent of the true one: about 1 in 100 right by chance
    assert correspondence_accuracy(attack.matching, truth) <= 0.05
    assert structure_agreement(
        attack.first.apply(first), attack.second.apply(second), truth
    ) == pytest.approx(0.0, abs=0.05)


def test_signatures_ignore_rotation_and_order() -> None:
    rng = np.random.default_rng(3)
    first = Frame.of(rng.normal(size=(20, 8))).apply(rng.normal(size=(20, 8)))
    rotation = ortho_group.rvs(8, random_state=0)
    order = rng.permutation(20)
    assert np.allclose(signatures(first)[order], signatures(first[order] @ rotation))


def test_bad_galleries_are_refused() -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="as many templates"):
        align_galleries(rng.normal(size=(5, 4)), rng.normal(size=(6, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        align_galleries(np.full((5, 4), np.nan), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="n >= 2"):
        Frame.of(np.ones(4))
    with pytest.raises(ValueError, match="width 4"):
        Frame.of(rng.normal(size=(5, 4))).apply(rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="shape"):
        correspondence_accuracy(np.arange(3), np.arange(4))


def test_a_study_trial_links_erased_people_only_when_epochs_share_structure() -> None:
    rng = np.random.default_rng(5)
    people, width = 70, 24
    faces = rng.normal(size=(people, width))
    rotation = ortho_group.rvs(width, random_state=1)
    photo = 0.1 * rng.normal(size=(people, width))  # the probe photo differs from the gallery
    linked = Victims(
        [f"p{i}" for i in range(people)], faces, faces @ rotation, (faces + photo) @ rotation
    )
    result = trial(linked.cases()["epochs"], n=40, erased=30, rng=np.random.default_rng(0))
    assert result["correspondence_accuracy"] == 1.0
    assert result["erased_linked_after_attack"] >= 0.9
    assert result["erased_linked_known_pairing"] >= 0.9
    assert result["erased_linked_known_pairing_linear"] >= 0.9
    assert result["erased_linked_as_is"] <= 0.2  # the rotation hides them from a plain lookup
    other = rng.normal(size=(people, width))
    unlinked = Victims(linked.names, faces, other, other + photo)
    result = trial(unlinked.cases()["epochs"], n=40, erased=30, rng=np.random.default_rng(0))
    assert result["correspondence_accuracy"] <= 0.1
    assert result["erased_linked_after_attack"] <= 0.2
    assert summarize([result, result])["correspondence_accuracy"]["mean"] == pytest.approx(
        result["correspondence_accuracy"]
    )


def test_templates_and_rank1() -> None:
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    means = templates(embeddings, np.array([0, 0, 1]))
    assert np.allclose(np.linalg.norm(means, axis=1), 1.0)
    assert rank1(means, means) == 1.0
    assert rank1(means, means[::-1]) == 0.0


def test_the_study_attacks_each_case_at_each_size() -> None:
    rng = np.random.default_rng(6)
    people, width = 30, 8
    faces = rng.normal(size=(people, width))
    q = ortho_group.rvs(width, random_state=2)
    plain = faces @ ortho_group.rvs(width, random_state=3)  # a public model's view of them
    victims = Victims([f"p{i}" for i in range(people)], faces, faces @ q, faces @ q, plain)
    assert list(victims.cases()) == ["epochs", "plain_photos"]
    assert list(Victims(victims.names, faces, faces, faces).cases()) == ["epochs"]
    result = attack_sizes(victims, [10, 20], trials=2, erased=10, seed=0)
    assert list(result) == ["epochs", "plain_photos"]
    for rows in result.values():
        assert list(rows) == ["10", "20"]
        assert rows["20"]["chance"] == pytest.approx(0.05)
        assert rows["20"]["trials"] == len(rows["20"]["runs"]) == 2
        assert rows["20"]["correspondence_accuracy"]["mean"] == 1.0
    with pytest.raises(ValueError, match="people asked"):
        attack_sizes(victims, [25], trials=1, erased=10, seed=0)
