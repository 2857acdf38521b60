"""The face teacher's own open-set identification on LFW (the ceiling of the students' row in
``rllfpr recognizer calibrate``), on the same split of peopleDevTest's people.

    python benchmarks/teacher_openset.py configs/teacher/view1-compact-64.yaml \
        [--output docs/results/teacher/openset-teacher.json]

Issue 22. The experiment gives the target space (centered on its training corpus, as the
students' targets are); the study's split (``split_people``, seed 0) and FNIR at FPIR on its
test half (a DET summary, threshold set on that half). Rows: the teacher's raw unit
descriptors, and its targets. A photo the teacher has no descriptor of (MTCNN found no face)
gets a random unit vector, so it counts as a miss, not as left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rllfpr.config import load_settings
from rllfpr.openset import fnir_at_fpir, searches_of, split_people
from trainer.benchmarks import teacher_embeddings
from trainer.config import ExperimentConfig
from trainer.corpus import describe_faces
from trainer.data import dataset_root, list_identities, read_people_file
from trainer.experiment import load_view1_for
from trainer.studies.openset import FPIR_POINTS, MAX_PHOTOS, evaluation_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument(
        "--output", type=Path, default=Path("docs/results/teacher/openset-teacher.json")
    )
    args = parser.parse_args()
    settings = load_settings(None)
    config = ExperimentConfig.from_yaml(args.experiment)
    space = load_view1_for(config, settings.data, settings.cache).target_space
    faces = evaluation_faces(config, settings)
    lfw = dataset_root(config.data.dataset, settings.data)
    everyone = list_identities(lfw)
    people = read_people_file(lfw / "peopleDevTest.txt")
    identities = {name: everyone[name][:MAX_PHOTOS] for name in people}
    descriptors = describe_faces(faces.sources, lfw, identities, settings.cache)
    test = split_people(faces.labels, 0)["test"]
    result: dict[str, object] = {
        "protocol": __doc__,
        "command": f"python benchmarks/teacher_openset.py {args.experiment} --output {args.output}",
        "photos": len(faces.sources),
        "without_descriptor": int(np.isnan(descriptors).any(axis=1).sum()),
    }
    rng = np.random.default_rng(0)
    for name, rows in teacher_embeddings(descriptors, space).items():
        missing = np.isnan(rows).any(axis=1)
        filler = rng.normal(size=(int(missing.sum()), rows.shape[1]))
        rows[missing] = filler / np.linalg.norm(filler, axis=1, keepdims=True)
        result[name] = fnir_at_fpir(searches_of(rows.astype(np.float32), test), FPIR_POINTS)
        print(name, result[name], flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
