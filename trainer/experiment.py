"""``rllfpr eval accuracy``: original and scrambled faces trained identically, side by side,
plus revocability across keys and the cost of the uint8 pixel conversion."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllfpr.faces.pixels import faces_to_sn_input, pick_device, scramble, sn_input, to_unit
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork
from trainer import hardware
from trainer.benchmarks import benchmarks
from trainer.config import ExperimentConfig, TTAConfig
from trainer.corpus import training_corpus
from trainer.data import (
    AlignedFaces,
    Aligner,
    dataset_root,
    list_identities,
    load_other_people,
    save_split,
    split_per_identity,
)
from trainer.evaluate import ClosedSetReport, VerificationReport, closed_set, verification
from trainer.metrics import adjacent_correlation, nearest_neighbour_accuracy
from trainer.train import (
    FaceView,
    TrainResult,
    View,
    embed,
    finished_student,
    moved,
    train,
    tta_moves,
)
from trainer.verification import View1Data, load_view1, pair_scores

log = logging.getLogger(__name__)


def load_dataset(config: ExperimentConfig, data_root: Path, cache: Path) -> AlignedFaces:
    spec = config.data
    root = dataset_root(spec.dataset, data_root)
    identities = list_identities(root, spec.min_images, spec.max_images, spec.max_identities)
    return Aligner(root, cache, spec.size, spec.alignment).load(identities)


def load_unlabeled(
    config: ExperimentConfig, people: list[str], data_root: Path, cache: Path
) -> AlignedFaces | None:
    """``data.unlabeled_faces`` faces of the dataset's people outside ``people``, aligned and
    cached like the experiment's own (None when the config asks for none)."""
    spec = config.data
    root = dataset_root(spec.dataset, data_root)
    aligner = Aligner(root, cache, spec.size, spec.alignment)
    return load_other_people(root, aligner, set(people), spec.unlabeled_faces, spec.split_seed)


def make_key(config: ExperimentConfig, seed: int, train_faces: np.ndarray) -> ScramblerNetwork:
    """Draw an SN key and self-learn its BN statistics on the training faces only."""
    scrambler = config.sn_config
    device = pick_device(config.device)
    network = ScramblerNetwork(scrambler, seed).to(device)
    network.self_learn(
        faces_to_sn_input(train_faces[i : i + 64], scrambler.in_channels, device)
        for i in range(0, len(train_faces), 64)
    )
    return network


def output_correlation(
    key: ScramblerNetwork, faces: np.ndarray, count: int = 200
) -> dict[str, float]:
    """Adjacent-pixel correlation of the key's wire pixels on the first ``count`` aligned faces
    (N, S, S, 3 uint8): the privacy screen of a key (issue 5's goal: every |r| <= 0.1)."""
    return adjacent_correlation(scramble(key, faces[:count]))


def identity_screen(
    key: ScramblerNetwork,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    probe_labels: np.ndarray,
) -> float:
    """How much identity a key's wire pixels keep, before any training: raw-pixel cosine
    nearest-neighbour rank-1 of the scrambled probes against the scrambled gallery (aligned
    (N, S, S, 3) faces). Over twelve trained models it ranked their scrambled accuracy with
    Spearman 0.80 (docs/results/design-study.md)."""
    return nearest_neighbour_accuracy(
        scramble(key, gallery, batch=64),
        gallery_labels,
        scramble(key, probes, batch=64),
        probe_labels,
    )


def tta_mean_pixels(key: ScramblerNetwork, faces: np.ndarray, spec: TTAConfig) -> np.ndarray:
    """What several scrambles of each face would show an observer who knows how each copy was
    moved: the mean of the copies' wire pixels, each moved back (edges replicated), as
    (N, S, S) uint8 from (N, S, S, 3) aligned faces."""
    device = next(key.parameters()).device
    originals = to_unit(faces, device)
    total = torch.zeros(originals.shape[0], 1, *originals.shape[-2:])
    for mirrored, down, right in tta_moves(spec):
        copy = moved(originals.flip(-1) if mirrored else originals, down, right)
        scrambled = key.scramble(sn_input(copy, key.config.in_channels))
        back = moved(scrambled.float().cpu().unsqueeze(1), -down, -right)
        total += back.flip(-1) if mirrored else back
    return (total[:, 0] / spec.views).round().to(torch.uint8).numpy()


def tta_mean_correlation(
    key: ScramblerNetwork, faces: np.ndarray, spec: TTAConfig, count: int = 200
) -> dict[str, float]:
    """Adjacent-pixel correlation of ``tta_mean_pixels`` on the first ``count`` faces, the
    ``spec.shift`` border (replicated edges) left out."""
    mean = tta_mean_pixels(key, faces[:count], spec)
    inner = slice(spec.shift, mean.shape[-1] - spec.shift)
    return adjacent_correlation(mean[:, inner, inner])


class _FloatView(FaceView):
    """The scrambled view without the uint8 quantization (float32 standardized output)."""

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        assert self.scrambler is not None
        with torch.no_grad():
            output = self.scrambler(faces)
            return (output - self.scrambler.output_mean) / self.scrambler.output_std


def run_accuracy(
    config: ExperimentConfig, data_root: Path, cache: Path, runs: Path, command: str = ""
) -> dict[str, Any]:
    """Run the experiment's protocol; writes and returns ``accuracy.json``."""
    run_dir = runs / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    if config.protocol == "verification_view1":
        view1 = load_view1_for(config, data_root, cache)
        result = verification_protocol(config, view1, run_dir, data_root=data_root, cache=cache)
    else:
        data = load_dataset(config, data_root, cache)
        unlabeled = load_unlabeled(config, data.names, data_root, cache)
        result = closed_set_protocol(config, data, run_dir, unlabeled=unlabeled)
    result |= {
        "hardware": hardware.describe(pick_device(config.device)),
        "command": command,
        "config": config.model_dump(mode="json"),
    }
    (run_dir / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _train_all(
    config: ExperimentConfig,
    train_data: AlignedFaces,
    run_dir: Path,
    with_key_b: bool,
    original_dir: Path | None,
    unlabeled: AlignedFaces | None = None,
) -> tuple[dict[str, TrainResult], dict[str, FaceView]]:
    device = pick_device(config.device)
    key_a, key_b = (make_key(config, seed, train_data.faces) for seed in config.key_seeds)
    original = train(config, train_data, "original", None, original_dir or run_dir / "original")
    distill = bool(config.loss.distill_weight)

    rotations = config.teacher.rotation_seeds or (None, None)

    def scrambled(
        recipe: ExperimentConfig,
        key: ScramblerNetwork,
        name: str,
        teacher: TrainResult,
        rotation: int | None = rotations[0],
    ) -> TrainResult:
        return train(
            recipe,
            train_data,
            "scrambled",
            key,
            run_dir / name,
            teacher=teacher.recognizer if distill else None,
            unlabeled=unlabeled,
            rotation_seed=rotation,
        )

    models = {
        "original": original,
        "scrambled": scrambled(config, key_a, "scrambled-key-a", original),
    }
    if with_key_b and config.key_b_init == "own":
        recipe_b = config.model_copy(update={"seed": config.seed + 1})
        teacher_b = original
        if distill:
            teacher_b = train(recipe_b, train_data, "original", None, run_dir / "original-key-b")
            models["original_key_b"] = teacher_b
        models["scrambled_key_b"] = scrambled(
            recipe_b, key_b, "scrambled-key-b-own", teacher_b, rotations[1]
        )
    elif with_key_b:
        models["scrambled_key_b"] = scrambled(
            config, key_b, "scrambled-key-b", original, rotations[1]
        )
    views = {
        "original": FaceView("original", None, device),
        "a": FaceView("scrambled", key_a, device),
        "b": FaceView("scrambled", key_b, device),
        "a_float32": _FloatView("scrambled", key_a, device),
    }
    return models, views


def _copies(spec: TTAConfig) -> dict[str, Any]:
    return spec.model_dump() | {"views": spec.views}


def _training_summary(models: dict[str, TrainResult]) -> dict[str, Any]:
    return {
        name: {"seconds": round(m.seconds, 1), "final": m.history[-1]} for name, m in models.items()
    }


def closed_set_protocol(
    config: ExperimentConfig,
    data: AlignedFaces,
    run_dir: Path,
    with_key_b: bool = True,
    original_dir: Path | None = None,
    unlabeled: AlignedFaces | None = None,
) -> dict[str, Any]:
    """Original and scrambled recognizers trained identically on a per-person split of
    ``data``; ``original_dir`` lets experiments that differ only in the SN share one
    original-face model. ``unlabeled``: other people's faces (``data.unlabeled_faces``)."""
    if unlabeled is not None and set(unlabeled.names) & set(data.names):
        raise ValueError("unlabeled faces must come from people outside the experiment")
    train_index, test_index = split_per_identity(
        data.labels, config.data.test_fraction, config.data.split_seed
    )
    save_split(run_dir / "split.json", data.sources, train_index, test_index)
    (run_dir / "images_without_face.txt").write_text("".join(f"{name}\n" for name in data.failures))
    train_data, test_data = data.subset(train_index), data.subset(test_index)
    models, views = _train_all(config, train_data, run_dir, with_key_b, original_dir, unlabeled)

    faces = {"train": train_data.faces, "test": test_data.faces}

    @functools.cache  # several rows share a gallery or a probe set
    def embedded(model: str, view: str, split: str, tta: TTAConfig | None) -> np.ndarray:
        return embed(models[model].recognizer, views[view], faces[split], tta=tta)

    def evaluate(
        model: str,
        gallery_view: str,
        probe_view: str,
        tta: TTAConfig | None = None,
        gallery_model: str | None = None,
    ) -> ClosedSetReport:
        """Rank-1 of ``model``'s probes against ``gallery_model``'s gallery (default: the same
        model)."""
        gallery = embedded(gallery_model or model, gallery_view, "train", tta)
        probes = embedded(model, probe_view, "test", tta)
        return closed_set(gallery, train_data.labels, probes, test_data.labels)

    def with_tta() -> dict[str, Any]:
        spec = config.tta
        return {
            "copies": _copies(spec),
            "original": evaluate("original", "original", "original", spec),
            "scrambled": evaluate("scrambled", "a", "a", spec),
            "cross_key": {
                "key_a_recognizer_and_gallery_key_b_probes": evaluate("scrambled", "a", "b", spec)
            },
        }

    spec = config.data
    return {
        "protocol": (
            f"closed-set identification, {spec.dataset}: {len(data.names)} people with >= "
            f"{spec.min_images} images"
            + (f" (at most {spec.max_images} each)" if spec.max_images else "")
            + f", {spec.test_fraction:.0%} of each person's images held out (split seed "
            f"{spec.split_seed}); rank-1 by nearest class-mean template"
        ),
        "closed_set": {
            "original": evaluate("original", "original", "original"),
            "scrambled": evaluate("scrambled", "a", "a"),
            "scrambled_float32_input": evaluate("scrambled", "a_float32", "a_float32"),
            "cross_key": {
                "key_a_recognizer_and_gallery_key_b_probes": evaluate("scrambled", "a", "b"),
            }
            | (
                {
                    "key_b_recognizer_stolen_key_a_gallery": evaluate("scrambled_key_b", "a", "b"),
                    # Revocation of stored templates: the old epoch's gallery (key-A model,
                    # key-A scrambles) against the new epoch's embeddings of new traffic.
                    "key_a_templates_key_b_recognizer_probes": evaluate(
                        "scrambled_key_b", "a", "b", gallery_model="scrambled"
                    ),
                }
                if with_key_b
                else {}
            ),
            # Distillation puts a scrambled face where the original-face recognizer puts the
            # original, so a stolen scrambled-face recognizer plus that teacher may match
            # scrambled traffic against ordinary photos, no enrolled scrambled gallery needed.
            "plain_photo_gallery": {
                "key_a_recognizer_probes_original_recognizer_gallery": evaluate(
                    "scrambled", "original", "a", gallery_model="original"
                ),
            }
            | (
                {  # key A's teacher stands for a teacher rebuilt from a public seed and recipe
                    "key_b_recognizer_probes_original_recognizer_gallery": evaluate(
                        "scrambled_key_b", "original", "b", gallery_model="original"
                    )
                }
                if with_key_b
                else {}
            ),
        }
        | ({"tta": with_tta()} if config.tta.views > 1 else {}),
        "training": _training_summary(models),
        "images": {
            "train": len(train_data),
            "test": len(test_data),
            "without_face": len(data.failures),
            "unlabeled_other_people": len(unlabeled) if unlabeled is not None else 0,
        },
    }


def excluded_names(config: ExperimentConfig, data_root: Path) -> frozenset[str]:
    """The people ``data.exclude_names_from`` lists, LFW-style (spaces as underscores)."""
    name = config.data.exclude_names_from
    if name is None:
        return frozenset()
    path = Path(name) if Path(name).is_file() else data_root / name
    lines = path.read_text().splitlines()
    return frozenset(line.strip().replace(" ", "_") for line in lines if line.strip())


def load_view1_for(config: ExperimentConfig, data_root: Path, cache: Path) -> View1Data:
    """View 1's faces; the training faces extended to the experiment's whole corpus (extra
    folders, teacher targets) when it asks for one."""
    lfw = dataset_root(config.data.dataset, data_root)
    aligner = Aligner(lfw, cache, config.data.size, config.data.alignment)
    exclude = excluded_names(config, data_root)
    view1 = load_view1(lfw, aligner, config.data.max_train_people, exclude)
    if not (config.data.extra_folders or config.teacher.weight):
        return view1
    everyone = list_identities(lfw)
    identities = {name: everyone[name] for name in view1.train.names}
    corpus = training_corpus(config, view1.train, lfw, identities, data_root, cache)
    counts = corpus.counts | {"people_excluded": len(exclude & set(everyone))}
    return replace(view1, train=corpus.faces, corpus=counts, target_space=corpus.space)


def view1_student(
    path: Path,
    view: View,
    runs: Path,
    keys: dict[str, ScramblerNetwork] | None = None,
) -> tuple[ExperimentConfig, View1Data, Recognizer, FaceView]:
    """The finished View 1 student of the experiment at ``path`` (``finished_student``), its
    View 1 data and the view it sees: for a scrambled student its experiment's key A, fitted on
    the training faces. ``keys`` caches keys across experiments that share key A (the same SN,
    key seed and training faces)."""
    from rllfpr.config import load_settings

    settings = load_settings(None)
    config = ExperimentConfig.from_yaml(path)
    view1 = load_view1_for(config, settings.data, settings.cache)
    recognizer = finished_student(config, view, runs)
    key = None
    if view == "scrambled":
        same_key = [config.sn_config.model_dump(), config.key_seeds[0], config.data.model_dump()]
        kind = json.dumps(same_key, sort_keys=True, default=str)
        cache = {} if keys is None else keys
        if kind not in cache:
            cache[kind] = make_key(config, config.key_seeds[0], view1.train.faces)
        key = cache[kind]
    return config, view1, recognizer, FaceView(view, key, torch.device("cpu"))


def verification_protocol(
    config: ExperimentConfig,
    view1: View1Data,
    run_dir: Path,
    original_dir: Path | None = None,
    data_root: Path | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """LFW View 1: trained on peopleDevTrain, threshold on pairsDevTrain, pairsDevTest; with
    ``data_root`` and ``cache``, also the teacher's ceiling and ``config.evaluate``'s
    benchmarks (trainer.benchmarks)."""
    models, views = _train_all(config, view1.train, run_dir, False, original_dir)

    @functools.cache  # the plain-photo rows reuse the original model's embeddings
    def embed_pairs(model: str, view: str, tta: TTAConfig | None = None) -> np.ndarray:
        return embed(models[model].recognizer, views[view], view1.pair_faces.faces, tta=tta)

    def evaluate(
        model: str, view: str, tta: TTAConfig | None = None, second: np.ndarray | None = None
    ) -> VerificationReport:
        """Threshold from pairsDevTrain, scores on pairsDevTest; ``second``: other embeddings
        of each pair's second image."""
        embeddings, sources = embed_pairs(model, view, tta), view1.pair_faces.sources
        train_scores, train_same = pair_scores(embeddings, sources, view1.train_pairs, second)
        test_scores, test_same = pair_scores(embeddings, sources, view1.test_pairs, second)
        return verification(test_scores, test_same, train_scores, train_same)

    extra = (
        benchmarks(config, view1, models, views, data_root, cache)
        if data_root is not None and cache is not None
        else {}
    )
    return {
        "protocol": (
            f"open-set verification, LFW View 1: trained on {len(view1.train.names)} people of "
            "peopleDevTrain.txt, threshold from pairsDevTrain.txt, reported on pairsDevTest.txt "
            "(people never seen in training)"
        ),
        "verification_view1": {
            "original": evaluate("original", "original"),
            "scrambled": evaluate("scrambled", "a"),
            # See closed_set_protocol: a stolen distilled recognizer and its teacher, matching
            # a scrambled face against a plain photo of someone never enrolled.
            "plain_photo_pairs": {
                "key_a_recognizer_scrambled_first_original_recognizer_plain_second": evaluate(
                    "scrambled", "a", second=embed_pairs("original", "original")
                ),
            },
        }
        | (
            {
                "tta": {
                    "copies": _copies(config.tta),
                    "original": evaluate("original", "original", config.tta),
                    "scrambled": evaluate("scrambled", "a", config.tta),
                }
            }
            if config.tta.views > 1
            else {}
        ),
        "training": _training_summary(models),
        "images": {
            "train": len(view1.train),
            "pairs_dropped_without_face": view1.missing_pairs,
            "without_face": len(view1.train.failures) + len(view1.pair_faces.failures),
        }
        | ({"corpus": view1.corpus} if view1.corpus else {}),
    } | extra
