"""Template linkage across a rotation, fresh versus fine-tuned (issue 4, eighth round).

Builds two key epochs twice with the trainer's own rotation code (``EpochBuilder``) on the
demo's corpus and recipe: once with each epoch trained from its own fresh seed (the default,
``fine_tune_epochs: 0``) and once with epoch 2 fine-tuned from epoch 1, as rotation did before.
For each, epoch 2's gate report gives the template linkage: epoch 1's gallery probed with
epoch 2's embeddings of epoch-2 scrambles of held-out corpus faces.

    python -m trainer.studies.rotation_linkage docs/results/rotation-linkage.json \
        [--fine-tune-epochs 6]

The gates are measured, not enforced here (``cross_key_margin`` 1.0), so that a linked
fine-tuned epoch is reported instead of refused.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rllfpr.config import load_settings
from rllfpr.faces.pixels import pick_device
from rllfpr.keys import material
from rllfpr.models.store import ModelStore
from trainer import hardware
from trainer.experiment import load_dataset
from trainer.rotation import EpochBuilder, RotationConfig, open_own_bundle, teacher_descriptors

# The demo's recipe (demo/run.py reads the same file).
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "rotation-demo.yaml"


def two_epochs(builder: EpochBuilder, scope: str) -> dict[str, Any]:
    """Builds epochs 1 and 2 of ``scope``; returns epoch 2's gate report."""
    first = builder.build(scope, 1, previous_key=None)
    key = open_own_bundle(first.bundle, builder.signing_key.public_key(), builder.fleet_key)
    second = builder.build(scope, 2, previous_key=key)
    document = second.report.document()
    return {"fine_tuned": document["fine_tuned"], "gates": document["gates"]}


def measure(recipe: dict[str, Any], fine_tune_epochs: int, work: Path) -> dict[str, Any]:
    settings = load_settings(None)
    base = RotationConfig.model_validate(recipe | {"cross_key_margin": 1.0})
    corpus = load_dataset(base.experiment, settings.data, settings.cache)
    descriptors = teacher_descriptors(base.experiment, corpus, settings.data, settings.cache)
    store = ModelStore(work / "models")
    signing, fleet = Ed25519PrivateKey.generate(), material.FleetKey.generate()
    results = {}
    for name, epochs in (("fresh", 0), ("fine_tuned", fine_tune_epochs)):
        config = base.model_copy(update={"fine_tune_epochs": epochs})
        builder = EpochBuilder(config, corpus, store, signing, fleet, work / "trainer", descriptors)
        started = time.monotonic()
        results[name] = two_epochs(builder, name) | {"seconds": round(time.monotonic() - started)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="JSON to write")
    parser.add_argument("--fine-tune-epochs", type=int, default=6, help="the demo's former value")
    arguments = parser.parse_args()
    recipe = yaml.safe_load(RECIPE.read_text())
    with tempfile.TemporaryDirectory() as work:
        results = measure(recipe, arguments.fine_tune_epochs, Path(work))
    document = {
        "command": f"python -m trainer.studies.rotation_linkage {arguments.output} "
        f"--fine-tune-epochs {arguments.fine_tune_epochs}",
        "hardware": hardware.describe(pick_device("cpu")),
        "recipe": recipe,
        "results": results,
    }
    arguments.output.write_text(json.dumps(document, indent=2) + "\n")
    for name, result in results.items():
        gates = result["gates"]
        print(
            f"{name}: epoch 2 held-out accuracy {gates['closed_set_accuracy']:.1%}, "
            f"epoch 1's templates matched {gates['template_linkage_accuracy']:.1%} "
            f"(majority class {gates['majority_class_rate']:.1%})"
        )


if __name__ == "__main__":
    main()
