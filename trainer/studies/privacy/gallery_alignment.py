"""Gallery alignment across a key rotation, measured on epochs the trainer's rotation builds.

Two key epochs are built with ``trainer.rotation.EpochBuilder`` from one rotation recipe (each
from its own fresh secret seed, as ``keys rotate`` builds them; the gates measured, not
enforced). Victims are corpus-external LFW people with at least two photos: each is enrolled
under both epochs from the same photos (an enrollment station re-scrambles its vault at a
rotation), one template per person (the normalized mean of the person's gallery photos), and
keeps one more photo as new-epoch traffic.

For gallery sizes n, ``trials`` random sets of n victims: the attacker gets epoch 1's and epoch
2's templates of those people, epoch 2's shuffled, and runs
``trainer.alignment.align_galleries``. Reported per size:

- correspondence accuracy (share of people paired with their own template; chance 1/n);
- the structure agreement under the true pairing (how alike the two similarity matrices are)
  and under the attacker's (what the attacker can see of its own success);
- what the alignment buys: ``erased`` other victims, absent from both aligned galleries, have
  only an epoch-1 template (kept in a backup); their epoch-2 photos (new traffic) are
  identified among them with the epoch-1 templates as they are (the template-linkage gate's
  question), carried by the attacker's rotation, and carried by the rotation fitted on the
  true pairing (an attacker who knows the pairing, e.g. from names in both galleries), and by
  the ridge least-squares map fitted on it (where the spaces are not rotations of each other).

A second case (``plain_photos``, with the face teacher installed): the first gallery is the
public face teacher's descriptors (dlib) of the same people's plain photos, as anyone holding
photos of the enrolled people can compute; aligned with epoch 2's gallery, its rotation carries
plain photos of anyone into epoch 2's space, where the erased people's new-epoch photos are
identified against their plain photos.

    python -m trainer.studies.privacy.gallery_alignment OUTPUT.json [--rotation-config FILE]
        [--shared-targets] [--embeddings FILE.npz]

``--shared-targets`` builds the epochs without ``Q_e`` (``target_rotation: false``), the
teacher recipe's control.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rllfpr.config import load_settings
from rllfpr.faces.pixels import pick_device
from rllfpr.keys import material
from rllfpr.models.store import ModelStore
from trainer import hardware
from trainer.alignment import (
    align_galleries,
    correspondence_accuracy,
    linear_map,
    procrustes,
    structure_agreement,
)
from trainer.data import AlignedFaces, Aligner, dataset_root, list_identities
from trainer.evaluate import closed_set
from trainer.experiment import load_dataset
from trainer.rotation import EpochBuilder, RotationConfig, open_own_bundle, teacher_descriptors
from trainer.train import FaceView, embed

log = logging.getLogger(__name__)
DEMO_RECIPE = Path(__file__).resolve().parents[3] / "configs" / "rotation-demo.yaml"


@dataclass(frozen=True)
class Victims:
    """Per person: gallery templates under epochs 1 and 2, and one probe under epoch 2."""

    names: list[str]
    first: np.ndarray  # (P, d) epoch-1 templates
    second: np.ndarray  # (P, d) epoch-2 templates, same people, same photos
    probes: np.ndarray  # (P, d) epoch-2 embedding of each person's held-back photo
    plain: np.ndarray | None = None  # (P, 128) the face teacher's templates of the same photos

    def cases(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(first gallery, second gallery, second-space probes) of each attack."""
        cases = {"epochs": (self.first, self.second, self.probes)}
        if self.plain is not None:
            cases["plain_photos"] = (self.plain, self.second, self.probes)
        return cases


def victim_faces(
    config: RotationConfig,
    corpus_people: list[str],
    data: Path,
    cache: Path,
    people: int,
    seed: int,
) -> tuple[AlignedFaces, AlignedFaces]:
    """Gallery faces (up to 3 per person) and one probe face each, of ``people`` LFW people
    with at least two photos who are not in the training corpus."""
    spec = config.experiment.data
    root = dataset_root(spec.dataset, data)
    everyone = list_identities(root, min_images=2)
    outside = sorted(set(everyone) - set(corpus_people))
    rng = np.random.default_rng(seed)
    # a few more than needed: a photo without a detected face may leave someone with one face
    chosen = [outside[i] for i in rng.permutation(len(outside))[: round(people * 1.1) + 10]]
    faces = Aligner(root, cache, spec.size, spec.alignment).load(
        {name: everyone[name][:4] for name in chosen}, progress=False
    )
    gallery, probes, kept = [], [], 0
    for label in range(len(faces.names)):
        members = np.flatnonzero(faces.labels == label)
        if len(members) < 2 or kept == people:
            continue
        gallery += members[:-1].tolist()
        probes.append(int(members[-1]))
        kept += 1
    if kept < people:
        raise ValueError(f"only {kept} people outside the corpus have two aligned faces")
    return faces.subset(gallery).relabeled(), faces.subset(probes).relabeled()


def templates(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    sums = np.zeros((int(labels.max()) + 1, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True)


def rank1(gallery: np.ndarray, probes: np.ndarray) -> float:
    """Probe i's own template is gallery row i."""
    labels = np.arange(len(gallery))
    return float(closed_set(gallery, labels, probes, labels)["accuracy"])


def trial(
    case: tuple[np.ndarray, np.ndarray, np.ndarray], n: int, erased: int, rng: np.random.Generator
) -> dict[str, Any]:
    """One attack on ``n`` random people of ``case`` (first gallery, second gallery, second
    probes); ``erased`` others are linked with what it found."""
    first_all, second_all, probes_all = case
    order = rng.permutation(len(first_all))
    aligned, gone = order[:n], order[n : n + erased]
    shuffle = rng.permutation(n)  # the attacker's epoch-2 gallery order
    first, second = first_all[aligned], second_all[aligned][shuffle]
    truth = np.argsort(shuffle)  # first's template i is second's template truth[i]
    started = time.perf_counter()
    attack = align_galleries(first, second, seed=int(rng.integers(2**31)))
    seconds = time.perf_counter() - started
    normalized_first = attack.first.apply(first)
    normalized_second = attack.second.apply(second)
    known = procrustes(normalized_first, normalized_second, truth)
    linear = linear_map(normalized_first, normalized_second, truth)
    old, new = first_all[gone], probes_all[gone]
    probes = attack.second.apply(new)
    stages = {
        name: correspondence_accuracy(matching, truth)
        for name, matching in attack.candidates.items()
    }
    return {
        "correspondence_accuracy": correspondence_accuracy(attack.matching, truth),
        "attacker_agreement": attack.agreement,
        "true_agreement": structure_agreement(normalized_first, normalized_second, truth),
        "seconds": round(seconds, 2),
        "erased_people": len(gone),
        "erased_linked_as_is": rank1(old, new),
        "erased_linked_after_attack": rank1(attack.carry(old), probes),
        "erased_linked_known_pairing": rank1(attack.first.apply(old) @ known, probes),
        "erased_linked_known_pairing_linear": rank1(attack.first.apply(old) @ linear, probes),
        "best_candidate": max(stages, key=lambda k: stages[k]),
        "candidates": stages,
    }


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in trials[0].items() if isinstance(v, float)]
    summary: dict[str, Any] = {"trials": len(trials)}
    for key in keys:
        values = np.array([t[key] for t in trials])
        summary[key] = {"mean": float(values.mean()), "min": float(values.min()),
                        "max": float(values.max())}  # fmt: skip
    return summary


def build_two_epochs(
    config: RotationConfig, work: Path
) -> tuple[list[tuple[Any, Any]], dict[str, Any], AlignedFaces]:
    """Epochs 1 and 2 of one scope: (recognizer, key) each, epoch 2's gate report, corpus."""
    settings = load_settings(None)
    corpus = load_dataset(config.experiment, settings.data, settings.cache)
    descriptors = teacher_descriptors(config.experiment, corpus, settings.data, settings.cache)
    store = ModelStore(work / "models")
    signing, fleet = Ed25519PrivateKey.generate(), material.FleetKey.generate()
    builder = EpochBuilder(config, corpus, store, signing, fleet, work / "trainer", descriptors)
    epochs, previous, report = [], None, {}
    for number in (1, 2):
        built = builder.build("study", number, previous_key=previous)
        previous = open_own_bundle(built.bundle, signing.public_key(), fleet)
        epochs.append((store.load("study", number).recognizer, previous))
        report[f"epoch_{number}"] = built.report.document()["gates"]
    return epochs, report, corpus


def embed_victims(
    epochs: list[tuple[Any, Any]], gallery: AlignedFaces, probes: AlignedFaces, device: str
) -> Victims:
    views = [FaceView("scrambled", key, pick_device(device)) for _, key in epochs]
    (first, _), (second, _) = epochs
    return Victims(
        gallery.names,
        templates(embed(first, views[0], gallery.faces), gallery.labels),
        templates(embed(second, views[1], gallery.faces), gallery.labels),
        embed(second, views[1], probes.faces)[np.argsort(probes.labels)],
    )


def embed_study(
    config: RotationConfig, people: int, seed: int, work: Path
) -> tuple[Victims, dict[str, Any]]:
    """Builds the two epochs and embeds ``people`` victims; returns them and the build's facts."""
    started, load = time.monotonic(), os.getloadavg()
    # measure, never refuse
    measured = config.model_copy(update={"cross_key_margin": 1.0, "accuracy_floor": 0.0})
    epochs, gates, corpus = build_two_epochs(measured, work)
    build_seconds = time.monotonic() - started
    settings = load_settings(None)
    gallery, probes = victim_faces(
        config, corpus.names, settings.data, settings.cache, people, seed
    )
    if gallery.names != probes.names:
        raise AssertionError("gallery and probe people differ")
    victims = embed_victims(epochs, gallery, probes, config.experiment.device)
    victims = replace(
        victims, plain=plain_templates(config, gallery, settings.data, settings.cache)
    )
    facts = {
        "gates": gates,
        "victims": {
            "people": len(victims.names),
            "gallery_faces": len(gallery),
            "probe_faces": len(probes),
        },
        "build_seconds": round(build_seconds),
        "build_hardware": hardware.describe(pick_device(config.experiment.device)),
        "build_load_average": {
            "start": [round(x, 2) for x in load],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    return victims, facts


def plain_templates(
    config: RotationConfig, gallery: AlignedFaces, data: Path, cache: Path
) -> np.ndarray | None:
    """The face teacher's per-person templates of the victims' gallery photos (None without
    the teacher extra): what anyone holding those plain photos computes with the public model."""
    from trainer.corpus import describe_faces
    from trainer.teacher import TeacherError

    root = dataset_root(config.experiment.data.dataset, data)
    everyone = list_identities(root, min_images=2)
    identities = {name: everyone[name] for name in gallery.names}
    try:
        descriptors = describe_faces(gallery.sources, root, identities, cache)
    except TeacherError as error:
        log.warning("no plain-photo case: %s", error)
        return None
    if np.isnan(descriptors).any(axis=1).all():
        return None
    return templates(descriptors, gallery.labels)


def save_victims(path: Path, victims: Victims, facts: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp.npz")
    np.savez(
        temporary,
        names=np.array(victims.names, dtype=str),
        first=victims.first,
        second=victims.second,
        probes=victims.probes,
        plain=victims.plain if victims.plain is not None else np.zeros((0, 0)),
        facts=np.array(json.dumps(facts)),
    )
    temporary.replace(path)


def load_victims(path: Path) -> tuple[Victims, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as saved:
        plain = saved["plain"] if "plain" in saved and saved["plain"].size else None
        victims = Victims(
            saved["names"].tolist(), saved["first"], saved["second"], saved["probes"], plain
        )
        return victims, json.loads(str(saved["facts"]))


def attack_sizes(
    victims: Victims, sizes: list[int], trials: int, erased: int, seed: int
) -> dict[str, Any]:
    """Per case and gallery size: ``trials`` attacks (seeded) and their summary."""
    if max(sizes) + erased > len(victims.names):
        raise ValueError(f"{max(sizes)} + {erased} people asked, {len(victims.names)} embedded")
    results: dict[str, Any] = {}
    for name, case in victims.cases().items():
        rng = np.random.default_rng(seed)
        results[name] = {}
        for n in sizes:
            runs = [trial(case, n, erased, rng) for _ in range(trials)]
            row = {"chance": 1 / n, "erased_chance": 1 / erased} | summarize(runs)
            results[name][str(n)] = row | {"runs": runs}
            log.info("%s, n=%d: pairing %.3f", name, n, row["correspondence_accuracy"]["mean"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="JSON to write")
    parser.add_argument(
        "--rotation-config", type=Path, default=DEMO_RECIPE, help="default: the demo's recipe"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--erased", type=int, default=100, help="people absent from both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--shared-targets",
        action="store_true",
        help="the teacher recipe without Q_e (every epoch regresses one target space)",
    )
    parser.add_argument(
        "--embeddings",
        type=Path,
        help="NPZ of the victims' embeddings: read if it exists (no training), else written",
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(arguments.threads)
    config = RotationConfig.from_yaml(arguments.rotation_config)
    if arguments.shared_targets:
        config = config.model_copy(update={"target_rotation": False})
    people = max(arguments.sizes) + arguments.erased
    if arguments.embeddings and arguments.embeddings.exists():
        victims, facts = load_victims(arguments.embeddings)
    else:
        with tempfile.TemporaryDirectory() as work:
            victims, facts = embed_study(config, people, arguments.seed, Path(work))
        if arguments.embeddings:
            save_victims(arguments.embeddings, victims, facts)
    load = os.getloadavg()
    cases = attack_sizes(
        victims, arguments.sizes, arguments.trials, arguments.erased, arguments.seed
    )
    result = facts | {"cases": cases}
    command = "python -m trainer.studies.privacy.gallery_alignment " + " ".join(sys.argv[1:])
    document = {
        "command": command,
        "hardware": hardware.describe(pick_device(config.experiment.device)),
        "attack_load_average": {
            "start": [round(x, 2) for x in load],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "recipe": config.model_dump(mode="json"),
    } | result
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(document, indent=2) + "\n")
    for name, n, row in ((c, n, r) for c, rows in cases.items() for n, r in rows.items()):
        print(
            f"{name}, n={n}: correspondence {row['correspondence_accuracy']['mean']:.1%} "
            f"(chance {row['chance']:.1%}); erased people linked as is "
            f"{row['erased_linked_as_is']['mean']:.1%}, after the attack "
            f"{row['erased_linked_after_attack']['mean']:.1%}, with the true pairing "
            f"{row['erased_linked_known_pairing']['mean']:.1%} (chance {row['erased_chance']:.1%})"
        )


if __name__ == "__main__":
    main()
