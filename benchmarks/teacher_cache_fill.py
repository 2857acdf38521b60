"""What a trainer's first run spends filling its caches, in one process (the baseline) and in
worker processes, each into its own empty cache, in the same run on the same photos:

- ``--stage teacher``: describing photos the teacher's cache lacks (MTCNN's central face, then
  dlib's 5-point shape and 128-d descriptor; ``trainer.corpus.fill_teacher_cache``);
- ``--stage alignment``: aligning photos (MTCNN's central face, then the 5-point warp to
  ``--size`` px; ``trainer.data.Aligner.load``, whose detection runs in workers).

    python benchmarks/teacher_cache_fill.py [--stage teacher] [--photos 600] [--workers 0] \
        [--size 64] [--output docs/results/teacher-cache-fill.json]

The photos: the first LFW people (by name) until ``--photos`` photos. The baseline is one
process with torch's default threads, as a first run was before the workers. Both runs must give
the same descriptors, or faces for the same photos aligned within one grey level (workers run
torch on one thread, which rounds MTCNN's floats otherwise; the differing faces are counted),
else the script fails. ``--workers 0``: one per available core. Reported: photos per second of
each, their ratio, the hardware and the load average before, between and after; a Markdown
table beside the JSON (default output: ``docs/results/teacher-cache-fill.json``,
``docs/results/alignment-fill.json``).
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
import torch

from rllfpr.config import load_settings
from trainer.corpus import describe_faces, fill_teacher_cache
from trainer.data import (
    DETECTIONS_PER_WORKER,
    PHOTOS_PER_WORKER,
    Aligner,
    available_cores,
    image_key,
    list_identities,
)
from trainer.hardware import cpu_name

OUTPUTS = {
    "teacher": Path("docs/results/teacher-cache-fill.json"),
    "alignment": Path("docs/results/alignment-fill.json"),
}
TITLES = {
    "teacher": "The face teacher's first run: describing uncached photos in worker processes",
    "alignment": "A corpus' first alignment: MTCNN on uncached photos in worker processes",
}
FUNCTIONS = {"teacher": "`fill_teacher_cache`", "alignment": "`Aligner.load`"}
WORKER_START = {"teacher": "torch, MTCNN and dlib", "alignment": "torch and MTCNN"}
PER_WORKER = {"teacher": PHOTOS_PER_WORKER, "alignment": DETECTIONS_PER_WORKER}


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
) -> tuple[np.ndarray, float, int]:
    """The teacher's descriptors (NaN rows: no face), seconds, workers started."""
    sources = [f"{name}/{image_key(lfw, name, p)}" for name, ps in identities.items() for p in ps]
    started = time.perf_counter()
    filled = fill_teacher_cache(lfw, identities, cache, workers=workers)
    descriptors = describe_faces(sources, lfw, identities, cache, workers=1)
    return descriptors, time.perf_counter() - started, filled["workers"]


def _align(
    lfw: Path, identities: dict[str, list[Path]], cache: Path, workers: int, size: int
) -> tuple[np.ndarray, float, int]:
    """The aligned faces (photos without a face left out), seconds, workers started."""
    aligner = Aligner(lfw, cache, size, "mtcnn")
    started = time.perf_counter()
    processes = aligner.detect_in_workers(identities, workers)
    faces = aligner.load(identities, progress=False, workers=1)
    return faces.faces, time.perf_counter() - started, processes


def _agreement(stage: str, serial: np.ndarray, parallel: np.ndarray) -> dict[str, int]:
    """How the workers' result differs from one process' (SystemExit beyond what rounding does)."""
    if serial.shape != parallel.shape:
        raise SystemExit(
            f"the workers gave {parallel.shape[0]} results, one process {serial.shape[0]}"
        )
    if stage == "teacher":
        if not np.array_equal(serial, parallel, equal_nan=True):
            raise SystemExit("the worker processes gave other descriptors than one process")
        return {"differing": 0}
    difference = np.abs(serial.astype(np.int16) - parallel.astype(np.int16))
    largest = int(difference.max()) if difference.size else 0
    if largest > 1:
        raise SystemExit(f"aligned faces differ by {largest} grey levels between the two runs")
    differing = int(difference.reshape(len(difference), -1).max(axis=1).astype(bool).sum())
    return {"differing": differing, "largest_grey_level_difference": largest}


def _agreement_line(stage: str, agreement: dict[str, int], photos: int) -> str:
    if stage == "teacher":
        return "Both runs give the same descriptors"
    return (
        f"Both align the same photos; {agreement['differing']} of the faces differ, by "
        f"{agreement.get('largest_grey_level_difference', 0)} grey level at most (torch's "
        "thread count rounds MTCNN's floats)"
    )


def _without_face(stage: str, result: np.ndarray, photos: int) -> int:
    return int(np.isnan(result).any(axis=1).sum()) if stage == "teacher" else photos - len(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=sorted(OUTPUTS), default="teacher")
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--workers", type=int, default=0, help="0: one per available core.")
    parser.add_argument("--size", type=int, default=64, help="Aligned side (--stage alignment).")
    parser.add_argument("--output", type=Path, help="Default: per stage, under docs/results/.")
    args = parser.parse_args()
    output: Path = args.output or OUTPUTS[args.stage]
    lfw = load_settings(None).data / "lfw"
    identities = _photos(lfw, args.photos)
    photos = sum(len(paths) for paths in identities.values())

    def fill(cache: Path, workers: int) -> tuple[np.ndarray, float, int]:
        if args.stage == "teacher":
            return _describe(lfw, identities, cache, workers)
        return _align(lfw, identities, cache, workers, args.size)

    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as folder:
        serial, serial_s, _ = fill(Path(folder) / "one", 1)
        loads.append(os.getloadavg())
        parallel, parallel_s, processes = fill(Path(folder) / "workers", args.workers)
        loads.append(os.getloadavg())
    agreement = _agreement(args.stage, serial, parallel)
    size = f" --size {args.size}" if args.stage == "alignment" else ""
    result: dict[str, Any] = {
        "protocol": __doc__,
        "command": f"python benchmarks/teacher_cache_fill.py --stage {args.stage} "
        f"--photos {args.photos} --workers {args.workers}{size} --output {output}",
        "stage": args.stage,
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, {available_cores()} available",
        "baseline_torch_threads": torch.get_num_threads(),
        "photos": photos,
        "people": len(identities),
        "without_face": _without_face(args.stage, serial, photos),
        "one_process": {"seconds": round(serial_s, 1), "photos_per_s": round(photos / serial_s, 2)},
        "workers": {
            "processes": processes,
            "seconds": round(parallel_s, 1),
            "photos_per_s": round(photos / parallel_s, 2),
        },
        "speedup": round(serial_s / parallel_s, 2),
        "agreement": agreement,
        "load_average_1_5_15": {
            moment: [round(x, 2) for x in load]
            for moment, load in zip(("before", "between", "after"), loads, strict=True)
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    one, many = result["one_process"], result["workers"]
    before, after = (" / ".join(f"{x:.2f}" for x in load) for load in (loads[0], loads[2]))
    table = "\n".join(
        [
            f"# {TITLES[args.stage]}",
            "",
            f"`{result['command']}` on {result['hardware']}; load average (1 / 5 / 15 min)",
            f"{before} before, {after} after. {photos} LFW photos of {len(identities)} people",
            "(the first by name), each run into its own empty cache; the baseline on torch's",
            f"{result['baseline_torch_threads']} default threads, each worker on one. "
            f"{_agreement_line(args.stage, agreement, photos)}",
            f"({result['without_face']} photos without a face).",
            "",
            "| run | processes | seconds | photos / s |",
            "|---|---|---|---|",
            f"| one process (baseline) | 1 | {one['seconds']} | {one['photos_per_s']} |",
            f"| {FUNCTIONS[args.stage]} | {many['processes']} | {many['seconds']} "
            f"| {many['photos_per_s']} |",
            "",
            f"Speed-up: **{result['speedup']}x**. A worker first loads {WORKER_START[args.stage]}",
            f"(seconds), so the trainer starts one per {PER_WORKER[args.stage]} photos to process",
            "at most.",
            "",
        ]
    )
    output.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
