"""Who plays which part in the demo: the trainer's corpus, enrolled people, strangers.

All from LFW, deterministic, and disjoint: the recognizer is trained on the corpus people only
(a trainer never sees enrolled faces), enrolled people are enrolled from some photos and walk
past the camera in others, strangers are never enrolled and should come out as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.data import list_identities


@dataclass(frozen=True)
class Visit:
    person: str
    photos: tuple[Path, ...]  # consecutive frames of one pass in front of the camera
    enrolled: bool


@dataclass(frozen=True)
class Cast:
    corpus: list[str]  # people the trainer's recognizer learns from
    enrollment: dict[str, list[Path]]  # enrolled person -> enrollment photos
    rounds: tuple[list[Visit], list[Visit]]  # camera passes before and after the key rotation


def cast(
    lfw: Path,
    corpus_people: int,
    enrolled_people: int,
    strangers: int,
    enrollment_photos: int = 4,
    photos_per_visit: int = 3,
) -> Cast:
    """Corpus = the first people (by name) with >= 10 photos; the demo's people come after."""
    candidates = list_identities(lfw, min_images=10)
    names = sorted(candidates)
    if len(names) < corpus_people + enrolled_people + strangers:
        raise ValueError(f"{lfw} has only {len(names)} people with 10 or more photos")
    corpus = names[:corpus_people]
    rest = names[corpus_people:]
    step = max(1, len(rest) // (enrolled_people + strangers))
    chosen = rest[::step][: enrolled_people + strangers]
    members, outsiders = chosen[:enrolled_people], chosen[enrolled_people:]
    enrollment = {name: sorted(candidates[name])[:enrollment_photos] for name in members}
    rounds: tuple[list[Visit], list[Visit]] = ([], [])
    for round_, visits in enumerate(rounds):  # one pass each before the key rotation, one after
        start = enrollment_photos + round_ * photos_per_visit
        for name in members:
            photos = sorted(candidates[name])[start : start + photos_per_visit]
            visits.append(Visit(name, tuple(photos), True))
        for name in outsiders:
            photos = sorted(candidates[name])[round_ * photos_per_visit :][:photos_per_visit]
            visits.append(Visit(name, tuple(photos), False))
    return Cast(corpus, enrollment, rounds)
