"""``rllfpr eval privacy``: every measurement of the report, from one ``PrivacyConfig``.

Victims: the experiment's closed-set people and split (train images build galleries and fit
the methods; every image measurement uses the held-out test images). Attackers: other people
(``inversion.attacker_people_file``), never victims.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllfpr.faces.pixels import embed_wire, pick_device, scramble
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork
from trainer import hardware
from trainer.data import (
    AlignedFaces,
    Aligner,
    dataset_root,
    list_identities,
    read_people_file,
    split_per_identity,
)
from trainer.evaluate import ClosedSetReport, closed_set
from trainer.experiment import load_dataset, make_key
from trainer.metrics import adjacent_correlation
from trainer.studies.privacy import metrics, questionnaire
from trainer.studies.privacy.attacks.inversion import Decoder, train_decoder
from trainer.studies.privacy.attacks.revocation import match
from trainer.studies.privacy.attacks.unlinkability import Linkability, linkability
from trainer.studies.privacy.baselines import Protection, build
from trainer.studies.privacy.baselines.arnold import period, recover_iterations
from trainer.studies.privacy.baselines.base import grey_pixels
from trainer.studies.privacy.baselines.eigenfaces import Eigenfaces
from trainer.studies.privacy.config import ALL_METHODS, Method, PrivacyConfig
from trainer.studies.privacy.recognition import (
    Split,
    dp_sweep,
    image_method_accuracy,
    projection_accuracy,
    run_name,
    train_recognizer,
)

log = logging.getLogger(__name__)


@dataclass
class Figures:
    """Arrays the figures are drawn from (kept out of the JSON)."""

    originals: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N, S, S) grey test
    protected: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, S, S)
    inversion: dict[str, np.ndarray] = field(default_factory=dict)  # row name -> (k, S, S)
    linkage: dict[str, Linkability] = field(default_factory=dict)
    revocation: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class Context:
    config: PrivacyConfig
    split: Split
    key_a: ScramblerNetwork
    key_b: ScramblerNetwork
    device: torch.device
    runs: Path
    recognizers: dict[str, Recognizer] = field(default_factory=dict)


def victims(config: PrivacyConfig, data_root: Path, cache: Path) -> Split:
    experiment = config.experiment
    data = load_dataset(experiment, data_root, cache)
    train_index, test_index = split_per_identity(
        data.labels, experiment.data.test_fraction, experiment.data.split_seed
    )
    return Split(data.subset(train_index), data.subset(test_index))


def attacker_faces(
    config: PrivacyConfig, data_root: Path, cache: Path, victims: list[str]
) -> AlignedFaces:
    """``attacker_images`` aligned faces of people who are not victims."""
    spec = config.experiment.data
    root = dataset_root(spec.dataset, data_root)
    everyone = list_identities(root)
    people_file = config.inversion.attacker_people_file
    if people_file and (root / people_file).is_file():
        names = read_people_file(root / people_file)
    else:
        names = sorted(everyone)
    wanted, chosen, count = config.inversion.attacker_images, {}, 0
    for name in names:
        if count >= wanted:
            break
        if name in everyone and name not in set(victims):
            chosen[name] = everyone[name]
            count += len(everyone[name])
    if not chosen:
        raise ValueError(f"no attacker identities left in {root} after excluding the victims")
    faces = Aligner(root, cache, spec.size, spec.alignment).load(chosen, progress=False)
    return faces.subset(np.arange(min(wanted, len(faces))))


def _rng(config: PrivacyConfig, *salt: str) -> np.random.Generator:
    return np.random.default_rng([config.seed, *(sum(map(ord, s)) for s in salt)])


def image_metrics(
    config: PrivacyConfig, originals: np.ndarray, protected: np.ndarray
) -> dict[str, Any]:
    spec = config.metrics
    result: dict[str, Any] = {
        "adjacent_correlation": adjacent_correlation(
            protected, spec.correlation_pairs, config.seed
        ),
        "psnr_db": _finite(metrics.psnr(originals, protected)),
        "uaci_percent": metrics.uaci(originals, protected),
        "histogram_entropy_bits": metrics.histogram_entropy(protected),
        "fuzziness3": metrics.fuzziness3(originals, protected),
        "fuzziness3_data_range_2040": metrics.fuzziness3(originals, protected, 2040.0),
        "ssim": metrics.mean_ssim(originals, protected),
    }
    for block in spec.fuzziness_blocks:
        result[f"fuzziness2_s{block}"] = metrics.fuzziness2(originals, protected, block)
    return result


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical images (PSNR +inf) are recorded as null."""
    return value if np.isfinite(value) else None


def _protect_test_images(
    context: Context, protections: dict[Method, Protection]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    faces = context.split.test.faces
    originals = grey_pixels(faces)
    protected: dict[str, np.ndarray] = {
        method: protection.protect(faces, _rng(context.config, "test", method))
        for method, protection in protections.items()
    }
    return originals, protected


def _recognition(
    context: Context, protections: dict[Method, Protection]
) -> dict[str, dict[str, Any]]:
    config, split = context.config, context.split
    results: dict[str, dict[str, Any]] = {}
    for method in config.recognition:
        run_dir = context.runs / run_name(method, config.experiment, config.baselines)
        trained = train_recognizer(
            method,
            protections[method],
            context.key_a,
            config.experiment,
            split.train,
            run_dir,
            context.device,
        )
        context.recognizers[method] = trained.recognizer
        results[method] = image_method_accuracy(
            trained.recognizer, protections[method], split, context.device, config.seed
        ) | {"training_seconds": round(trained.seconds, 1)}
        log.info("%s: accuracy %.3f", method, results[method]["accuracy"])
    for method in ("eigenfaces", "dp_eigenfaces"):
        protection = protections[method]
        assert isinstance(protection, Eigenfaces)
        results[method] = dict(projection_accuracy(protection, split, config.seed))
    results["dp_eigenfaces"]["epsilon"] = config.baselines.dp_epsilon
    results["dp_eigenfaces_sweep"] = dp_sweep(config.baselines, split, config.seed)
    return results


def _questionnaire(
    context: Context, originals: np.ndarray, protected: dict[str, np.ndarray]
) -> dict[str, Any]:
    plain = context.recognizers["original"]
    labels = context.split.test.labels
    questions = questionnaire.draw_questions(
        labels, context.config.metrics.questionnaire_choices, context.config.seed
    )
    reference = embed_wire(plain, originals, context.device, batch=256)
    return {
        method: questionnaire.answer(
            reference, embed_wire(plain, images, context.device, batch=256), questions
        )
        for method, images in protected.items()
    }


def _identity_leakage(context: Context, reconstructions: np.ndarray) -> ClosedSetReport:
    """Rank-1 of the plain-face recognizer: original-face gallery, reconstructed probes."""
    plain, split = context.recognizers["original"], context.split
    gallery = embed_wire(plain, grey_pixels(split.train.faces), context.device, batch=256)
    probes = embed_wire(plain, reconstructions, context.device, batch=256)
    return closed_set(gallery, split.train.labels, probes, split.test.labels)


def _reconstruction_scores(
    context: Context, originals: np.ndarray, reconstructions: np.ndarray
) -> dict[str, Any]:
    return {
        "psnr_db": _finite(metrics.psnr(originals, reconstructions)),
        "ssim": metrics.mean_ssim(originals, reconstructions),
        "identity_leakage": _identity_leakage(context, reconstructions),
    }


def _inversion(
    context: Context, attackers: AlignedFaces, originals: np.ndarray, figures: Figures
) -> dict[str, Any]:
    config = context.config
    key_c = make_key(config.experiment, config.inversion.attacker_key_seed, attackers.faces)
    attacker_grey = grey_pixels(attackers.faces)
    victims_a = scramble(context.key_a, context.split.test.faces, batch=256)
    decoders: dict[str, Decoder] = {}
    for case, key in (("victim_key", context.key_a), ("own_key", key_c)):
        pairs = scramble(key, attackers.faces, batch=256)
        decoders[case] = train_decoder(
            pairs, attacker_grey, config.inversion, context.device, config.seed, progress=True
        )
    mean_face = np.broadcast_to(
        np.rint(attacker_grey.mean(axis=0)).astype(np.uint8), originals.shape
    )
    rows = {
        "a_victim_key": decoders["victim_key"].reconstruct(victims_a),
        "b_own_key": decoders["own_key"].reconstruct(victims_a),
        "b_own_key_on_own_key_scrambles": decoders["own_key"].reconstruct(
            scramble(key_c, context.split.test.faces, batch=256)
        ),
        "mean_attacker_face": np.ascontiguousarray(mean_face),
    }
    figures.inversion = {"original": originals[:6], "scrambled": victims_a[:6]} | {
        name: images[:6] for name, images in rows.items()
    }
    result: dict[str, Any] = {
        name: _reconstruction_scores(context, originals, images) for name, images in rows.items()
    }
    result["decoders"] = {
        name: {"seconds": round(d.seconds, 1), "l1_per_epoch": d.losses}
        for name, d in decoders.items()
    }
    result["attacker_images"] = len(attackers)
    result["attacker_people"] = len(attackers.names)
    result["victim_images"] = len(originals)
    result["plain_recognizer_on_originals"] = _identity_leakage(context, originals)
    return result


def _pairs(labels: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mated pairs (i, j), i != j, same person; up to ``limit`` random non-mated pairs."""
    same = labels[:, None] == labels[None, :]
    mated = np.argwhere(same & ~np.eye(len(labels), dtype=bool))
    non_mated = np.argwhere(~same)
    rng = np.random.default_rng(seed)
    if len(non_mated) > limit:
        non_mated = non_mated[rng.choice(len(non_mated), limit, replace=False)]
    return mated, non_mated


def _linkage_floor(cross_key: Linkability, config: PrivacyConfig) -> float:
    """D<->sys between two samples of one distribution (the cross-key non-mated scores,
    resampled to the mated count): what finite-sample histogram noise alone reads as
    linkability. A measured D<->sys near this floor is indistinguishable from 0."""
    rng = np.random.default_rng(config.seed)
    centres = (cross_key.edges[:-1] + cross_key.edges[1:]) / 2
    draws = rng.choice(centres, 2 * cross_key.mated_count, p=cross_key.non_mated_density)
    half = cross_key.mated_count
    return linkability(draws[:half], draws[half:], config.linkage.bins).d_sys


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """Raw pixels as unit vectors after removing each image's mean: what a passive observer
    of the wire can compare without any model."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def _linkage(
    config: PrivacyConfig,
    labels: np.ndarray,
    comparators: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    figures: Figures,
) -> dict[str, Any]:
    """D<->sys for each comparator: (key-A vectors, key-B vectors, second key-A vectors)."""
    mated, non_mated = _pairs(labels, config.linkage.max_non_mated, config.seed)
    linkage: dict[str, Any] = {"mated_pairs": len(mated), "non_mated_pairs": len(non_mated)}
    for comparator, (first, cross, same) in comparators.items():
        for case, second in (("keys_a_b", cross), ("same_key_a_a", same)):
            scores = first @ second.T
            result = linkability(
                scores[mated[:, 0], mated[:, 1]],
                scores[non_mated[:, 0], non_mated[:, 1]],
                config.linkage.bins,
            )
            name = case if comparator == "recognizer" else f"{comparator}_{case}"
            figures.linkage[name] = result
            linkage[name] = {"d_sys": result.d_sys}
    floor = _linkage_floor(figures.linkage["keys_a_b"], config)
    linkage["estimator_floor"] = {"d_sys": floor}
    return linkage


def _linkage_and_revocation(
    context: Context, protected_a: np.ndarray, figures: Figures
) -> tuple[dict[str, Any], dict[str, Any]]:
    split, device = context.split, context.device
    recognizer = context.recognizers["rllfpr"]
    test_b = scramble(context.key_b, split.test.faces, batch=256)
    embeddings_a = embed_wire(recognizer, protected_a, device, batch=256)
    embeddings_b = embed_wire(recognizer, test_b, device, batch=256)
    pixels_a = pixel_vectors(protected_a)
    comparators = {
        "recognizer": (embeddings_a, embeddings_b, embeddings_a),
        "raw_pixels": (pixels_a, pixel_vectors(test_b), pixels_a),
    }
    linkage = _linkage(context.config, split.test.labels, comparators, figures)
    gallery_a = embed_wire(
        recognizer, scramble(context.key_a, split.train.faces, batch=256), device, batch=256
    )
    revocation = {
        "old_key_gallery_new_key_probes": match(
            gallery_a, split.train.labels, embeddings_b, split.test.labels
        ),
        "same_key_reference": match(gallery_a, split.train.labels, embeddings_a, split.test.labels),
    }
    return linkage, revocation


def _arnold_key_search(arnold_images: np.ndarray, iterations: int) -> dict[str, Any]:
    """Share of Arnold images whose iteration count (the key) a brute-force search finds."""
    sample = arnold_images[:50]
    size = sample.shape[-1]
    found = [recover_iterations(image) == iterations % period(size) for image in sample]
    return {"period": period(size), "images": len(sample), "key_recovered": float(np.mean(found))}


def _image_measurements(
    context: Context, protections: dict[Method, Protection], figures: Figures
) -> dict[str, Any]:
    config = context.config
    originals, protected = _protect_test_images(context, protections)
    figures.originals, figures.protected = originals, protected
    limit = config.metrics.max_images or len(originals)
    references = originals[:limit]
    return {
        "image_metrics": {"original": image_metrics(config, references, references)}
        | {m: image_metrics(config, references, p[:limit]) for m, p in protected.items()},
        "arnold_key_search": _arnold_key_search(
            protected["arnold"], config.baselines.arnold_iterations
        ),
    }


def run_privacy(
    config: PrivacyConfig, data_root: Path, cache: Path, runs: Path, command: str = ""
) -> tuple[dict[str, Any], Figures]:
    """Every measurement of the report; returns the JSON document and the figures' arrays."""
    started = time.perf_counter()
    device = pick_device(config.experiment.device)
    split = victims(config, data_root, cache)
    key_a, key_b = (
        make_key(config.experiment, seed, split.train.faces) for seed in config.experiment.key_seeds
    )
    context = Context(config, split, key_a, key_b, device, runs / config.name)
    protections = build(ALL_METHODS, config.baselines, key_a, split.train.faces)
    figures = Figures()
    result: dict[str, Any] = {
        "images": {
            "train": len(split.train),
            "test": len(split.test),
            "people": len(split.train.names),
        }
    }
    result |= _image_measurements(context, protections, figures)
    result["recognition"] = _recognition(context, protections)
    result["questionnaire"] = _questionnaire(context, figures.originals, figures.protected)
    attackers = attacker_faces(config, data_root, cache, split.train.names)
    result["inversion"] = _inversion(context, attackers, figures.originals, figures)
    result["unlinkability"], result["revocation"] = _linkage_and_revocation(
        context, figures.protected["rllfpr"], figures
    )
    result["properties"] = {m: vars(p.properties) for m, p in protections.items()}
    result |= {
        "seconds": round(time.perf_counter() - started, 1),
        "hardware": hardware.describe(device),
        "command": command,
        "config": config.model_dump(mode="json"),
    }
    return result, figures
