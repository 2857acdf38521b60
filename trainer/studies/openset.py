"""Open-set identification on LFW with an honest split of people (``rllfpr recognizer calibrate``).

Recognizers: the experiment's original-face and scrambled-face (key A) models, trained on the
people of peopleDevTrain.txt (trained here if the run does not exist yet). Evaluation people:
the 1,711 of peopleDevTest.txt (at most 10 photos each), none of whom the recognizers saw.
They are shuffled and split into two disjoint halves, calibration and test. In each half, half
of the people with at least two photos are known: their first photos (two when they have three
or more, else one) are enrolled, the rest (at most 8) are mated searches. Everyone else in the
half, every single-photo person included, is unknown, never enrolled: their photos (at most 3)
are non-mated searches. Threshold and margin are chosen on the calibration half
(``openset.calibrate``: lowest FNIR at FPIR <= the target); FNIR and FPIR are reported on the
test half. Tracks: the same operating point applied to the consensus of 3 photos of one person
(mean subject scores, as the service decides a track), for people with enough photos.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rllfpr.config import Settings
from rllfpr.faces.pixels import pick_device
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.openset import (
    Half,
    calibrate,
    fnir_at_fpir,
    rates,
    searches_of,
    split_people,
    track_searches,
)
from trainer import hardware
from trainer.config import ExperimentConfig
from trainer.data import AlignedFaces, Aligner, list_identities, read_people_file
from trainer.experiment import load_view1_for, make_key
from trainer.train import FaceView, embed, train

log = logging.getLogger(__name__)
MAX_PHOTOS = 10
FPIR_POINTS = (0.01, 0.05, 0.1, 0.2)


def _evaluate(embeddings: np.ndarray, halves: dict[str, Half], target_fpir: float) -> Any:
    calibration = calibrate(
        searches_of(embeddings, halves["calibration"]),
        target_fpir,
        protocol=f"LFW peopleDevTest, calibration half; target FPIR {target_fpir}",
    )
    test = searches_of(embeddings, halves["test"])
    tracks = track_searches(embeddings, halves["test"])
    point = (calibration.threshold, calibration.min_margin)
    return calibration, {
        "calibration": calibration.model_dump(mode="json"),
        "test_faces": rates(test, *point),
        "test_tracks_of_3": rates(tracks, *point),
        "test_faces_fnir_at_fpir_on_test": fnir_at_fpir(test, FPIR_POINTS),
    }


def evaluation_faces(config: ExperimentConfig, settings: Settings) -> AlignedFaces:
    """The open-set study's faces: the photos (at most ``MAX_PHOTOS`` each) of
    ``peopleDevTest.txt``'s people, never seen in training, aligned as the experiment's."""
    spec = config.data
    lfw = Path(spec.dataset) if Path(spec.dataset).is_dir() else settings.data / spec.dataset
    everyone = list_identities(lfw)
    unseen = read_people_file(lfw / "peopleDevTest.txt")
    aligner = Aligner(lfw, settings.cache, spec.size, spec.alignment)
    return aligner.load({name: everyone[name][:MAX_PHOTOS] for name in unseen})


def run_study(
    experiment: Path,
    settings: Settings,
    runs: Path,
    target_fpir: float,
    seed: int,
    command: str,
    publish_epoch: int | None = None,
    scope: str = "fleet",
) -> dict[str, Any]:
    """Train or load both recognizers, calibrate and evaluate; optionally publish."""
    config = ExperimentConfig.from_yaml(experiment)
    if config.protocol != "verification_view1":
        raise ValueError("the study needs an LFW View 1 experiment (trained on peopleDevTrain)")
    view1 = load_view1_for(config, settings.data, settings.cache)
    device = pick_device(config.device)
    key = make_key(config, config.key_seeds[0], view1.train.faces)
    run_dir = runs / config.name
    original = train(config, view1.train, "original", None, run_dir / "original")
    teacher = original.recognizer if config.loss.distill_weight else None
    scrambled = train(
        config, view1.train, "scrambled", key, run_dir / "scrambled-key-a", teacher=teacher
    )
    faces = evaluation_faces(config, settings)
    halves = split_people(faces.labels, seed)
    results: dict[str, Any] = {}
    calibrations: dict[str, OpenSetCalibration] = {}
    for name, model, view in (
        ("original", original, FaceView("original", None, device)),
        ("scrambled", scrambled, FaceView("scrambled", key, device)),
    ):
        calibrations[name], results[name] = _evaluate(
            embed(model.recognizer, view, faces.faces), halves, target_fpir
        )
    if publish_epoch is not None:
        info = ModelStore(settings.recognizer.model_store).publish(
            scope,
            publish_epoch,
            scrambled.recognizer.cpu(),
            calibrations["scrambled"],
            source=f"{config.name}/scrambled-key-a",
        )
        results["published"] = {"scope": scope, "epoch": publish_epoch, "id": info.recognizer_id}
    return {
        "protocol": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "people": {
            half: {
                "known": split.subjects,
                "templates": len(split.gallery),
                "mated_searches": len(split.mated),
                "non_mated_searches": len(split.non_mated),
                "mated_tracks": len(split.mated_tracks),
                "non_mated_tracks": len(split.non_mated_tracks),
            }
            for half, split in halves.items()
        },
        "images_without_face": len(faces.failures),
        "target_fpir": target_fpir,
        "results": results,
        "test": {name: results[name]["test_faces"] for name in calibrations},
        "experiment": config.model_dump(mode="json"),
        "hardware": hardware.describe(device),
        "command": command,
    }


def markdown(result: dict[str, Any]) -> str:
    """A short human-readable report of ``run_study``'s result."""
    lines = [
        "# Open-set identification on LFW (recognizer calibration)",
        "",
        f"Command: `{result['command']}`  ",
        f"Hardware: {result['hardware']}",
        "",
        result["protocol"],
        "",
        "| half | known people | templates | mated searches | non-mated searches |"
        " mated tracks | non-mated tracks |",
        "|---|---|---|---|---|---|---|",
    ]
    for half, people in result["people"].items():
        lines.append(
            f"| {half} | {people['known']} | {people['templates']} | {people['mated_searches']} "
            f"| {people['non_mated_searches']} | {people['mated_tracks']} "
            f"| {people['non_mated_tracks']} |"
        )
    lines += [
        "",
        f"Operating point chosen on the calibration half for FPIR <= {result['target_fpir']}; "
        "rates measured on the test half (other people):",
        "",
        "| faces | threshold | margin | FNIR | FPIR | misidentified | FNIR, tracks of 3 |"
        " FPIR, tracks of 3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in result["test"]:
        data = result["results"][name]
        point, faces, tracks = data["calibration"], data["test_faces"], data["test_tracks_of_3"]
        lines.append(
            f"| {name} | {point['threshold']:.4f} | {point['min_margin']:.3f} "
            f"| {faces['fnir']:.3f} | {faces['fpir']:.3f} | {faces['misidentification']:.3f} "
            f"| {tracks['fnir']:.3f} | {tracks['fpir']:.3f} |"
        )
    lines += [
        "",
        "FNIR at a given FPIR, threshold set on the test half itself (a DET summary):",
        "",
    ]
    header = list(next(iter(result["results"].values()))["test_faces_fnir_at_fpir_on_test"])
    lines.append(
        "| faces | " + " | ".join(h.replace("fnir_at_fpir_", "FPIR ") for h in header) + " |"
    )
    lines.append("|---|" + "---|" * len(header))
    for name in result["test"]:
        curve = result["results"][name]["test_faces_fnir_at_fpir_on_test"]
        lines.append(f"| {name} | " + " | ".join(f"{curve[h]:.3f}" for h in header) + " |")
    return "\n".join(lines) + "\n"
