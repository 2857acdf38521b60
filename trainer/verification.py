"""Open-set verification on LFW View 1: train on ``peopleDevTrain.txt``, pick the threshold on
``pairsDevTrain.txt``, report on ``pairsDevTest.txt`` (people never seen in training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rllfpr.scorenorm import Statistics, s_normalized_pairs
from trainer.data import AlignedFaces, Aligner, list_identities, read_people_file
from trainer.targets import TargetSpace


@dataclass(frozen=True)
class Pair:
    first: str  # "<identity>/<file>"
    second: str
    same: bool


def read_pairs(path: Path) -> list[Pair]:
    """LFW pairs file: ``name i j`` (same person) or ``name1 i name2 j`` (different)."""
    pairs = []
    for line in path.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 3:
            name, i, j = fields
            pairs.append(Pair(_source(name, i), _source(name, j), True))
        elif len(fields) == 4:
            pairs.append(Pair(_source(fields[0], fields[1]), _source(fields[2], fields[3]), False))
        elif fields:
            raise ValueError(f"{path}: malformed pair line {line!r}")
    return pairs


def _source(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


PairRows = tuple[np.ndarray, np.ndarray, np.ndarray]  # first rows, second rows, same person


@dataclass
class View1Data:
    train: AlignedFaces
    pair_faces: AlignedFaces
    train_pairs: list[Pair]
    test_pairs: list[Pair]
    missing_pairs: int  # pairs dropped because a face could not be aligned
    corpus: dict[str, int] = field(default_factory=dict)  # training corpus counts, if extended
    target_space: TargetSpace | None = None  # the teacher's, fitted on the training corpus


def load_view1(
    lfw: Path,
    aligner: Aligner,
    max_train_people: int | None = None,
    exclude: frozenset[str] = frozenset(),
) -> View1Data:
    """``exclude``: people left out of training (their names)."""
    everyone = list_identities(lfw)
    train_people = read_people_file(lfw / "peopleDevTrain.txt")[:max_train_people]
    train_people = [name for name in train_people if name not in exclude]
    train = aligner.load({name: everyone[name] for name in train_people})
    train_pairs, test_pairs = (
        read_pairs(lfw / "pairsDevTrain.txt"),
        read_pairs(lfw / "pairsDevTest.txt"),
    )
    photos = {p for pair in train_pairs + test_pairs for p in (pair.first, pair.second)}
    people = sorted({photo.split("/")[0] for photo in photos})
    pair_faces = aligner.load(  # only the photos the pairs name (embedding costs on a CPU)
        {name: [p for p in everyone[name] if f"{name}/{p.name}" in photos] for name in people}
    )
    available = set(pair_faces.sources)

    def usable(pairs: list[Pair]) -> list[Pair]:
        return [p for p in pairs if p.first in available and p.second in available]

    kept_train, kept_test = usable(train_pairs), usable(test_pairs)
    missing = len(train_pairs) + len(test_pairs) - len(kept_train) - len(kept_test)
    return View1Data(train, pair_faces, kept_train, kept_test, missing)


def pair_rows(sources: list[str], pairs: list[Pair]) -> PairRows:
    """Each pair's two rows among the embeddings of ``sources``, and whether it is a
    same-person pair."""
    index = {source: i for i, source in enumerate(sources)}
    first = np.array([index[p.first] for p in pairs], dtype=np.int64)
    second = np.array([index[p.second] for p in pairs], dtype=np.int64)
    return first, second, np.array([p.same for p in pairs], dtype=bool)


def row_scores(
    embeddings: np.ndarray, rows: PairRows, statistics: Statistics | None = None
) -> np.ndarray:
    """Cosine of each pair's unit embeddings (``pair_rows``); with every face's cohort
    ``statistics`` (``rllfpr.scorenorm.cohort_statistics``), its S-norm score instead."""
    first, second, _ = rows
    cosine = (embeddings[first] * embeddings[second]).sum(axis=1)
    if statistics is None:
        return cosine
    mean, std = statistics
    return s_normalized_pairs(cosine, (mean[first], std[first]), (mean[second], std[second]))


def pair_scores(
    embeddings: np.ndarray,
    sources: list[str],
    pairs: list[Pair],
    second_embeddings: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each pair's embeddings, and whether it is a same-person pair.
    ``second_embeddings`` (same rows as ``embeddings``) embeds each pair's second image
    differently, e.g. a plain photo against a scrambled first image."""
    first, second, same = pair_rows(sources, pairs)
    seconds = embeddings if second_embeddings is None else second_embeddings
    return (embeddings[first] * seconds[second]).sum(axis=1), same
