"""Recognizer speed: vector search in Redis 8, end to end through Mosquitto, embedding throughput.

1. Vector search (VSIM) on 512-d unit templates: real LFW embeddings (the original-face View 1
   recognizer on MTCNN-aligned LFW faces, when its run exists) and clustered synthetic ones
   (10 templates per identity around a random centre, each at cosine ~0.8 from it), at each
   size, Q8 and NOQUANT, several EF: p50 / p99 latency and queries/s of one client issuing
   ``VSIM ... WITHSCORES COUNT 10``, recall@1 against ``VSIM ... TRUTH`` (same top element, and
   same identity), ``MEMORY USAGE`` per template, insertion rate (pipelined ``VADD ... CAS``),
   and exact search in numpy on the same vectors as the baseline.
2. End to end on this CPU: a recognizer service process (``rllfpr recognizer run``: the
   CPU-scale compact recognizer, 64 px, 512-d, random weights - the same compute as a trained
   one) behind a real Mosquitto and Redis; faces published with QoS 1 by one client that also
   receives the events: faces/s at saturation, publish-to-event latency p50 / p99 at
   saturation and at half that rate.
   With ``--e2e-score-norm``, the same run twice, raw cosine then S-norm (the model ships a
   cohort of 3,000 embeddings, AS-norm top 50; the gallery's templates carry their cohort
   statistics), so the cost of score normalization is a ratio measured in one invocation.
3. ``--embedding-only``: embedding throughput of the service's embedding path
   (``rllfpr.faces.pixels.embed_wire``: uint8 wire pixels in, unit embeddings out; bf16
   autocast on CUDA) for ResNet-50 at 112x112, batch 512, both stems. Meant for a GPU:
   ``--device cuda``.

Usage:
    python benchmarks/bench_recognizer.py --output docs/results/bench-recognizer.json
    python benchmarks/bench_recognizer.py --embedding-only --device cuda --output gpu.json
Small settings (``--sizes 2000 --queries 50 --e2e-faces 100``) check the script quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import redis
import torch
import yaml

from recognizer_service.gallery import Gallery, Template
from rllfpr import local_services, mqtt
from rllfpr.config import (
    MqttSettings,
    RecognizerSettings,
    RedisSettings,
    Settings,
    load_settings,
)
from rllfpr.faces.pixels import embed_wire, pick_device
from rllfpr.local_services import Endpoint, free_port
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.store import ModelStore, OpenSetCalibration, load_checkpoint_recognizer
from rllfpr.scorenorm import CohortNorm
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import CropBox, FaceHeader, PixelFormat, RecognitionEvent, utc_now
from trainer import hardware

REPO = Path(__file__).resolve().parents[1]
DIM = 512
PER_IDENTITY = 10
CLUSTER_NOISE = 0.033  # per-coordinate noise: cosine ~0.8 between a template and its centre
EFS: tuple[int | None, ...] = (None, 200, 500)  # None: the server's default
E2E_SIDE = 64
COHORT = 3000  # the rotation's default cohort_faces


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
    }


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


# 1. Vector search ----------------------------------------------------------------------------


def synthetic(size: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered templates with identity labels, and probes (new samples of known people)."""
    rng = np.random.default_rng(seed)
    identities = max(1, size // PER_IDENTITY)
    centres = unit(rng.standard_normal((identities, DIM)))
    labels = np.repeat(np.arange(identities), PER_IDENTITY)[:size]
    templates = unit(centres[labels] + CLUSTER_NOISE * rng.standard_normal((size, DIM)))
    probe_labels = rng.integers(0, identities, queries)
    probes = unit(centres[probe_labels] + CLUSTER_NOISE * rng.standard_normal((queries, DIM)))
    return templates, labels, probes


def lfw_embeddings(
    data: Path, cache: Path, runs: Path, size: int, queries: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """Real embeddings: LFW faces through the View 1 original-face recognizer. One photo of
    each person with several is held out as a probe. Returns a reason when unavailable."""
    checkpoint = runs / "lfw-view1-compact-64" / "original" / "checkpoint.pt"
    if not checkpoint.exists():
        return f"no trained recognizer at {checkpoint} (rllfpr eval accuracy configs/...)"
    from trainer.data import Aligner, list_identities
    from trainer.train import FaceView, embed

    recognizer, _ = load_checkpoint_recognizer(checkpoint)
    faces = Aligner(data / "lfw", cache, 64, "mtcnn").load(list_identities(data / "lfw"))
    embeddings = embed(recognizer, FaceView("original", None, torch.device("cpu")), faces.faces)
    first_of = {label: index for index, label in reversed(list(enumerate(faces.labels)))}
    counts = np.bincount(faces.labels)
    probe_index = np.array([first_of[label] for label in first_of if counts[label] > 1])
    probe_index = probe_index[:queries]
    gallery_index = np.setdiff1d(np.arange(len(faces.labels)), probe_index)[:size]
    return (
        embeddings[gallery_index],
        faces.labels[gallery_index],
        embeddings[probe_index],
    )


def load(
    client: redis.Redis, key: str, templates: np.ndarray, quantization: str, chunk: int = 500
) -> float:
    """Insert templates (element "{index}") with pipelined VADD ... CAS; returns inserts/s."""
    started = time.perf_counter()
    for start in range(0, len(templates), chunk):
        with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + chunk, len(templates))):
                blob = templates[index].tobytes()
                pipe.execute_command("VADD", key, "FP32", blob, str(index), "CAS", quantization)
            pipe.execute()
    return len(templates) / (time.perf_counter() - started)


def vsim(
    client: redis.Redis, key: str, probe: np.ndarray, ef: int | None, truth: bool = False
) -> list[int]:
    arguments: list[Any] = ["VSIM", key, "FP32", probe.tobytes(), "COUNT", 10]
    if ef is not None:
        arguments += ["EF", ef]
    if truth:
        arguments.append("TRUTH")
    return [int(element) for element in client.execute_command(*arguments)]


def search_runs(
    client: redis.Redis, key: str, probes: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    truth, truth_seconds = [], []
    for probe in probes:
        started = time.perf_counter()
        truth.append(vsim(client, key, probe, None, truth=True)[0])
        truth_seconds.append(time.perf_counter() - started)
    runs: dict[str, Any] = {"truth_scan": percentiles(truth_seconds)}
    for ef in EFS:
        seconds, top = [], []
        for probe in probes:
            started = time.perf_counter()
            top.append(vsim(client, key, probe, ef)[0])
            seconds.append(time.perf_counter() - started)
        same = np.array(top) == np.array(truth)
        same_identity = labels[np.array(top)] == labels[np.array(truth)]
        runs[f"ef_{ef or 'default'}"] = {
            **percentiles(seconds),
            "queries_per_s": round(len(probes) / sum(seconds), 1),
            "recall_at_1": round(float(same.mean()), 4),
            "identity_recall_at_1": round(float(same_identity.mean()), 4),
        }
    return runs


def numpy_exact(templates: np.ndarray, probes: np.ndarray) -> dict[str, Any]:
    seconds = []
    for probe in probes:
        started = time.perf_counter()
        scores = templates @ probe
        np.argpartition(-scores, 10)[:10]
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    (probes @ templates.T).argmax(axis=1)
    batched = time.perf_counter() - started
    return {
        **percentiles(seconds),
        "queries_per_s": round(len(probes) / sum(seconds), 1),
        "batched_queries_per_s": round(len(probes) / batched, 1),
        "bytes_per_template": DIM * 4,
    }


def vector_search(
    sizes: list[int], quantizations: list[str], queries: int, data: Path, cache: Path, runs: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    datasets: dict[str, Any] = {
        f"synthetic-{size}": synthetic(size, queries, size) for size in sizes
    }
    real = lfw_embeddings(data, cache, runs, min(sizes), queries)
    if isinstance(real, str):
        results["lfw-real"] = {"skipped": real}
    else:
        datasets[f"lfw-real-{len(real[0])}"] = real
    with local_services.redis_server() as endpoint:
        client = redis.Redis(host=endpoint.host, port=endpoint.port)
        for name, (templates, labels, probes) in datasets.items():
            entry: dict[str, Any] = {
                "templates": len(templates),
                "identities": len(np.unique(labels)),
                "queries": len(probes),
                "numpy_exact": numpy_exact(templates, probes),
            }
            for quantization in quantizations:
                key = f"bench:{name}:{quantization}"
                print(f"{name} {quantization}: loading {len(templates)} templates", flush=True)
                rate = load(client, key, templates, quantization)
                memory = int(client.memory_usage(key, samples=0) or 0)
                entry[quantization] = {
                    "inserts_per_s": round(rate, 1),
                    "memory_bytes_per_template": round(memory / len(templates), 1),
                    **search_runs(client, key, probes, labels),
                }
                client.unlink(key)
            results[name] = entry
            print(json.dumps({name: entry}, indent=1), flush=True)
    return results


# 2. End to end --------------------------------------------------------------------------------


def _face_message(pixels: np.ndarray, index: int) -> tuple[str, bytes, str]:
    header = FaceHeader(
        agent="bench-agent",
        site="bench",
        camera=f"cam-{index % 4}",
        captured_at=utc_now(),
        key_epoch=1,
        track_id=index,
        detection_score=0.99,
        quality=1.0,
        crop=CropBox(x=0, y=0, width=64, height=64, frame_width=640, frame_height=480),
        height=E2E_SIDE,
        width=E2E_SIDE,
        pixel_format=PixelFormat.UINT8,
    )
    return (
        topics.faces("bench", header.camera),
        codec.encode(header, pixels),
        str(header.message_id),
    )


class LoadClient:
    """Publishes faces and receives their events; times both on one clock."""

    def __init__(self, broker: Endpoint) -> None:
        settings = MqttSettings(host=broker.host, port=broker.port)
        self.client = mqtt.make_client(settings, "bench", client_id=f"bench-{uuid.uuid4().hex[:6]}")
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.published: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self.score_kinds: set[str] = set()
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        mqtt.connect(self.client, settings, clean_start=True)
        mqtt.subscribe(self.client, topics.ALL_EVENTS)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        event = RecognitionEvent.model_validate_json(message.payload)
        with self._lock:
            self.score_kinds.add(event.score_kind)
            for message_id in event.message_ids:
                self.received.setdefault(str(message_id), now)

    def run(self, count: int, rate: float | None, seed: int) -> dict[str, Any]:
        """Publish ``count`` faces (at ``rate``/s, or as fast as possible); wait for events."""
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (16, E2E_SIDE, E2E_SIDE), dtype=np.uint8)
        ids = []
        started = time.perf_counter()
        for index in range(count):
            if rate:
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            topic, payload, message_id = _face_message(pixels[index % 16], index)
            with self._lock:
                self.published[message_id] = time.perf_counter()
            self.client.publish(topic, payload, qos=1)
            ids.append(message_id)
        deadline = time.monotonic() + 120 + count / 10
        while time.monotonic() < deadline:
            with self._lock:
                if all(i in self.received for i in ids):
                    break
            time.sleep(0.05)
        with self._lock:
            latencies = [self.received[i] - self.published[i] for i in ids if i in self.received]
            last = max(self.received.get(i, 0.0) for i in ids)
        return {
            "faces": count,
            "events_received": len(latencies),
            "offered_rate_per_s": rate,
            "faces_per_s": round(len(latencies) / (last - started), 1),
            **percentiles(latencies),
        }

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def recognizer_process(
    broker: Endpoint,
    redis_endpoint: Endpoint,
    workdir: Path,
    gallery_size: int,
    score_norm: bool = False,
) -> Iterator[str]:
    """``rllfpr recognizer run`` with a random compact 64 px recognizer and a filled gallery
    (with ``score_norm``: a cohort of ``COHORT`` random embeddings, AS-norm top 50); yields its
    metrics URL."""
    torch.manual_seed(0)
    config = RecognizerConfig(backbone="compact", input_size=E2E_SIDE, embedding_dim=DIM)
    norm = None
    calibration = OpenSetCalibration(threshold=0.5)
    if score_norm:
        norm = CohortNorm(unit(np.random.default_rng(3).standard_normal((COHORT, DIM))), 50)
        calibration = OpenSetCalibration(scores="s_norm", threshold=5.0)
    ModelStore(workdir / "models").publish("fleet", 1, Recognizer(config), calibration, norm=norm)
    port = free_port()
    settings = Settings(
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        redis=RedisSettings(url=f"redis://{redis_endpoint.host}:{redis_endpoint.port}/0"),
        recognizer=RecognizerSettings(
            model_store=workdir / "models", device="cpu", consensus_faces=1, http_port=port
        ),
    )
    client = redis.Redis(host=redis_endpoint.host, port=redis_endpoint.port)
    gallery = Gallery(client)
    templates, labels, _ = synthetic(gallery_size, 1, seed=7)
    rows = None if norm is None else np.stack(norm.statistics(templates), axis=1)
    batch = []
    for index, (vector, label) in enumerate(zip(templates, labels, strict=True)):
        statistics = None if rows is None else (float(rows[index, 0]), float(rows[index, 1]))
        batch.append(
            Template(f"person-{label}", f"t{index}", vector, "bench", utc_now(), statistics)
        )
        if len(batch) == 500 or index == len(templates) - 1:
            gallery.enroll_many("fleet", 1, batch)
            batch = []
    document = settings.model_dump(mode="json")
    (workdir / "recognizer.yaml").write_text(yaml.safe_dump(document))
    command = [sys.executable, "-m", "rllfpr.cli", "recognizer", "run"]
    command += ["--config", str(workdir / "recognizer.yaml"), "--client-id", "bench-recognizer"]
    log = (workdir / "recognizer.log").open("ab")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/readyz") as r:
                if r.status == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"recognizer exited: see {workdir / 'recognizer.log'}")
            time.sleep(0.2)
        yield f"{base}/metrics"
    finally:
        process.terminate()
        process.wait(30)


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url) as response:
        text = response.read().decode()
    wanted = (
        "rllfpr_embed_seconds_sum",
        "rllfpr_search_seconds_sum",
        "rllfpr_batch_size_sum",
        "rllfpr_batch_size_count",
    )
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


def end_to_end(faces: int, gallery_size: int, score_norm: bool = False) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as directory,
        local_services.mosquitto() as broker,
        local_services.redis_server() as redis_endpoint,
        recognizer_process(
            broker, redis_endpoint, Path(directory), gallery_size, score_norm
        ) as metrics,
    ):
        client = LoadClient(broker)
        try:
            client.run(50, None, seed=0)  # warm-up
            before = _scrape(metrics)
            saturated = client.run(faces, None, seed=1)
            after = _scrape(metrics)
            paced = client.run(max(50, faces // 2), saturated["faces_per_s"] / 2, seed=2)
            score_kinds = sorted(client.score_kinds)
        finally:
            client.close()
    batches = after["rllfpr_batch_size_count"] - before["rllfpr_batch_size_count"]
    return {
        "model": f"compact, {E2E_SIDE} px, {DIM}-d (random weights)",
        "gallery_templates": gallery_size,
        "scores": f"S-norm, cohort {COHORT}, top 50" if score_norm else "raw cosine",
        "events_score_kind": score_kinds,
        "settings": "max_batch 32, max_wait_ms 20, consensus_faces 1, Q8, EF 200",
        "saturated": saturated,
        "half_rate": paced,
        "saturated_breakdown": {
            "mean_batch": round(
                (after["rllfpr_batch_size_sum"] - before["rllfpr_batch_size_sum"]) / batches, 1
            ),
            "embed_ms_per_face": round(
                1000
                * (after["rllfpr_embed_seconds_sum"] - before["rllfpr_embed_seconds_sum"])
                / faces,
                3,
            ),
            "search_ms_per_face": round(
                1000
                * (after["rllfpr_search_seconds_sum"] - before["rllfpr_search_seconds_sum"])
                / faces,
                3,
            ),
        },
    }


# 3. Embedding throughput ----------------------------------------------------------------------


def embedding_throughput(
    device: torch.device, backbone: str, size: int, batch: int, seconds: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for stem in ("imagenet", "full_resolution"):
        config = RecognizerConfig(backbone=backbone, input_size=size, stem=stem)
        recognizer = Recognizer(config).to(device).eval()
        pixels = list(np.random.default_rng(0).integers(0, 256, (batch, size, size), np.uint8))
        for _ in range(3):
            embed_wire(recognizer, pixels, device, bf16_on_gpu=True)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            embed_wire(recognizer, pixels, device, bf16_on_gpu=True)  # returns on the host
            done += batch
        results[stem] = {"faces_per_s": round(done / (time.perf_counter() - started), 1)}
    return {
        "backbone": backbone,
        "input": f"{size}x{size}, one channel, uint8 wire pixels",
        "batch": batch,
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "path": "embed_wire: numpy uint8 -> device -> recognizer -> numpy float32",
        "results": results,
    }


# Main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quantizations", nargs="+", default=["Q8", "NOQUANT"])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--e2e-faces", type=int, default=1000)
    parser.add_argument("--e2e-gallery", type=int, default=10_000)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--e2e-score-norm", action="store_true")
    parser.add_argument("--embedding-only", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    arguments = parser.parse_args()
    settings = load_settings()  # data and cache folders (RLLFPR_DATA, RLLFPR_CACHE)
    device = pick_device(arguments.device)
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_recognizer.py " + " ".join(sys.argv[1:]),
        "hardware": hardware.describe(device),
        # other work on the same cores skews CPU timings: say how busy the machine was
        "load_average_1_5_15_min_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    if arguments.embedding_only:
        result["embedding"] = embedding_throughput(
            device, arguments.backbone, arguments.size, arguments.batch, arguments.seconds
        )
    else:
        result["hardware"] = hardware.describe(None)
        if not arguments.skip_search:
            result["vector_search"] = vector_search(
                arguments.sizes,
                arguments.quantizations,
                arguments.queries,
                settings.data,
                settings.cache,
                arguments.runs,
            )
            result["vector_search_1m"] = (
                "not run: at the measured insertion rates a 1M-template gallery takes the better "
                "part of an hour to build per quantization on these 2 shared cores; memory "
                "extrapolates linearly from memory_bytes_per_template"
            )
        if not arguments.skip_e2e:
            result["end_to_end"] = end_to_end(arguments.e2e_faces, arguments.e2e_gallery)
        if arguments.e2e_score_norm:  # the baseline is the run just above, same invocation
            if arguments.skip_e2e:
                raise SystemExit("--e2e-score-norm compares with the raw run: drop --skip-e2e")
            normalized = end_to_end(arguments.e2e_faces, arguments.e2e_gallery, True)
            raw = result["end_to_end"]["saturated"]["faces_per_s"]
            normalized["faces_per_s_ratio_to_raw"] = round(
                normalized["saturated"]["faces_per_s"] / raw, 3
            )
            result["end_to_end_score_norm"] = normalized
    result["load_average_1_5_15_min_at_end"] = [round(v, 2) for v in os.getloadavg()]
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
