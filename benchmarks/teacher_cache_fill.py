"""What a trainer's first run spends on the face teacher: describing photos the teacher's cache
lacks (MTCNN's central face, then dlib's 5-point shape and 128-d descriptor), in one process
(the baseline) and in worker processes (``trainer.corpus.fill_teacher_cache``), each into its
own empty cache, in the same run on the same photos.

    python benchmarks/teacher_cache_fill.py [--photos 600] [--workers 0] \
        [--output docs/results/teacher-cache-fill.json]

The photos: the first LFW people (by name) until ``--photos`` photos. Both runs must give the
same descriptors (checked, else the script fails). ``--workers 0``: one per available core.
Reported: photos per second of each, their ratio, the hardware and the load average before,
between and after; a Markdown table beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rllfpr.config import load_settings
from trainer.corpus import (
    PHOTOS_PER_WORKER,
    available_cores,
    describe_faces,
    fill_teacher_cache,
)
from trainer.data import image_key, list_identities
from trainer.hardware import cpu_name


def _photos(lfw: Path, count: int) -> dict[str, list[Path]]:
    chosen: dict[str, list[Path]] = {}
    total = 0
    for name, paths in list_identities(lfw).items():
        if total >= count:
            break
        chosen[name] = paths[: count - total]
        total += len(chosen[name])
    return chosen


def _describe(
    lfw: Path, identities: dict[str, list[Path]], cache: Path, workers: int
) -> tuple[np.ndarray, float, dict[str, int]]:
    sources = [f"{name}/{image_key(lfw, name, p)}" for name, ps in identities.items() for p in ps]
    started = time.perf_counter()
    filled = fill_teacher_cache(lfw, identities, cache, workers=workers)
    descriptors = describe_faces(sources, lfw, identities, cache, workers=1)
    return descriptors, time.perf_counter() - started, filled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--workers", type=int, default=0, help="0: one per available core.")
    parser.add_argument("--output", type=Path, default=Path("docs/results/teacher-cache-fill.json"))
    args = parser.parse_args()
    lfw = load_settings(None).data / "lfw"
    identities = _photos(lfw, args.photos)
    photos = sum(len(paths) for paths in identities.values())
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as folder:
        serial, serial_s, _ = _describe(lfw, identities, Path(folder) / "one", 1)
        loads.append(os.getloadavg())
        parallel, parallel_s, filled = _describe(
            lfw, identities, Path(folder) / "workers", args.workers
        )
        loads.append(os.getloadavg())
    if not np.array_equal(serial, parallel, equal_nan=True):
        raise SystemExit("the worker processes gave other descriptors than one process")
    result: dict[str, Any] = {
        "protocol": __doc__,
        "command": "python benchmarks/teacher_cache_fill.py "
        f"--photos {args.photos} --workers {args.workers} --output {args.output}",
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, {available_cores()} available",
        "photos": photos,
        "people": len(identities),
        "without_face": int(np.isnan(serial).any(axis=1).sum()),
        "one_process": {"seconds": round(serial_s, 1), "photos_per_s": round(photos / serial_s, 2)},
        "workers": {
            "processes": filled["workers"],
            "seconds": round(parallel_s, 1),
            "photos_per_s": round(photos / parallel_s, 2),
        },
        "speedup": round(serial_s / parallel_s, 2),
        "same_descriptors": True,
        "load_average_1_5_15": {
            moment: [round(x, 2) for x in load]
            for moment, load in zip(("before", "between", "after"), loads, strict=True)
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    one, many = result["one_process"], result["workers"]
    before, after = (" / ".join(f"{x:.2f}" for x in load) for load in (loads[0], loads[2]))
    table = "\n".join(
        [
            "# The face teacher's first run: describing uncached photos in worker processes",
            "",
            f"`{result['command']}` on {result['hardware']}; load average (1 / 5 / 15 min)",
            f"{before} before, {after} after. {photos} LFW photos of {len(identities)} people",
            "(the first by name), each run into its own empty cache; both runs give the same",
            f"descriptors ({result['without_face']} photos without a face).",
            "",
            "| run | processes | seconds | photos / s |",
            "|---|---|---|---|",
            f"| one process (baseline) | 1 | {one['seconds']} | {one['photos_per_s']} |",
            f"| `fill_teacher_cache` | {many['processes']} | {many['seconds']} "
            f"| {many['photos_per_s']} |",
            "",
            f"Speed-up: **{result['speedup']}x**. A worker first loads torch, MTCNN and dlib",
            f"(seconds), so `trainer.corpus` starts one per {PHOTOS_PER_WORKER} photos to",
            "describe at most.",
            "",
        ]
    )
    args.output.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
