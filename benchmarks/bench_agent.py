"""Edge-agent speed: each pipeline stage and the whole agent, on 640x480 frames with 1-3 faces.

Frames are composed from LFW photos (one to three photos of 110-170 pixels, the face about
half of that, drifting a pixel a frame over a textured background, a new scene every 40
frames) and written as an MJPG video, which the agent reads like a camera file. Every
ONNX Runtime figure comes with the torch figure measured in the same run. Measured:

- per stage: video decoding; MTCNN in eager torch (facenet-pytorch, the reference) and in
  ONNX Runtime, full 640x480 and downscaled to 320 wide, single frames and batches of 8, one
  and two threads; ONNX Runtime's idle threads spinning or sleeping next to a thread that
  decodes JPEG frames as the agent's reader does; alignment with the sharpness gate; the SN
  in torch and in ONNX Runtime (batches of 1, 8 and 32; the deployed SN at the deployed 64 px
  and at 112 px) and ONNX Runtime's session options and chunk sizes; face-message encoding;
  spool writes;
- end to end: the agent itself (``edge_agent.agent.Agent``) replaying the video as fast as it
  can into a local Mosquitto, with a key of the deployed SN (``DEPLOYED_SN`` at
  ``DEPLOYED_FACE_SIZE``) published like the trainer does, for several detection settings,
  with each detector backend; frames/s counts every frame read, faces/s every face detected;
- the face's side: the agent at its defaults with the deployed SN at 64 px and at 112 px (its
  low-pass scaled with the face), runs alternating, the median of each side and their ratio;
- people walking past: a live 25 frames/s camera (frames are dropped when the agent falls
  behind) in which people cross the view one at a time, each in view for 1 to 6 frames; the
  share of them of whom at least one face was sent, detecting every frame or every 3rd or
  5th, and the same unpaced (no frame dropped: the cost of ``detect_every`` alone);
- with ``--device cuda`` (a GPU machine): MTCNN in torch, ONNX Runtime CUDA and TensorRT on
  the GPU, and the SN in torch on the GPU.

Usage:
    python benchmarks/bench_agent.py --output docs/results/bench-agent.json
    python benchmarks/bench_agent.py --quick --output /tmp/bench.json   # a smoke run
Writes the JSON and a Markdown table beside it (.md). The command is recorded in both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from edge_agent.backends import (
    CPU_FACES_PER_CALL,
    OnnxRuntimeBackend,
    TorchBackend,
)
from edge_agent.sources import Backoff, CaptureSource, Frame
from edge_agent.spool import Spool
from rllfpr import local_services, mqtt
from rllfpr.config import AgentSettings, KeySettings, MqttSettings, Settings
from rllfpr.faces import mtcnn
from rllfpr.faces.align import align
from rllfpr.faces.detect import Detection, FaceDetector, crop_box
from rllfpr.faces.mtcnn_runtime import OnnxRuntimeNetworks
from rllfpr.faces.pixels import faces_to_sn_input, sharpness
from rllfpr.keys import bundle, envelope, material
from rllfpr.models.export import INPUT_NAME, export_onnx
from rllfpr.models.scrambler import (
    DEPLOYED_FACE_SIZE,
    ScramblerConfig,
    ScramblerNetwork,
    deployed_sn,
)
from rllfpr.runtimes import ort_session_options
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import FaceHeader, KeyAnnouncement, KeyState, PixelFormat, utc_now
from trainer import hardware

WIDTH, HEIGHT = 640, 480
SCENE_FRAMES = 40
DETECTORS = ("torch", "onnxruntime")


# ----- frames
def lfw_photos(data: Path, count: int) -> list[np.ndarray]:
    people = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())[:count]
    photos = []
    for person in people:
        path = sorted(person.glob("*.jpg"))[0]
        image = cv2.imread(str(path))
        if image is None:
            raise OSError(f"cannot read {path}")
        photos.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return photos


def background(rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(40, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8), (0, 0), 8)


def compose_frames(photos: list[np.ndarray], count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """640x480 RGB frames: scenes of 1-3 drifting faces on a textured background."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, SCENE_FRAMES):
        scenery = background(rng)
        people = int(rng.integers(1, 4))
        sizes = rng.integers(110, 171, people)
        lanes = np.linspace(0, WIDTH - 170 - SCENE_FRAMES, people).astype(int)
        rows = rng.integers(20, HEIGHT - 180, people)
        picks = rng.choice(len(photos), people, replace=False)
        faces = [cv2.resize(photos[i], (int(s), int(s))) for i, s in zip(picks, sizes, strict=True)]
        for step in range(min(SCENE_FRAMES, count - start)):
            frame = scenery.copy()
            for lane, row, face in zip(lanes, rows, faces, strict=True):
                x, y = int(lane) + step, int(row) + step % 5
                frame[y : y + face.shape[0], x : x + face.shape[1]] = face
            yield frame


def write_video(frames: Iterator[np.ndarray], path: Path) -> int:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25, (WIDTH, HEIGHT))
    written = 0
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        written += 1
    writer.release()
    return written


# ----- timing
def rate(step: Callable[[], Any], items: int, seconds: float, sync: bool = False) -> float:
    """Items per second of ``step`` (which handles ``items``), after one warm-up call."""
    return rates(step, items, seconds, sync)[0]


def rates(
    step: Callable[[], Any], items: int, seconds: float, sync: bool = False
) -> tuple[float, float]:
    """Items per second of wall time and per second of this process's CPU time (all its
    threads, spinning ones included) of ``step``, after one warm-up call. On a machine that
    other work keeps busy the first falls with the load; the second much less."""
    step()
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        step()
        if sync:
            torch.cuda.synchronize()
        done += items
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed, done / max(time.process_time() - cpu, 1e-9)


def compared(torch_rates: tuple[float, float], onnx_rates: tuple[float, float]) -> dict[str, Any]:
    """A torch rate and an ONNX Runtime rate of the same work, wall and CPU, with ratios."""
    return {
        "torch": round(torch_rates[0], 1),
        "onnxruntime": round(onnx_rates[0], 1),
        "onnxruntime_over_torch": round(onnx_rates[0] / torch_rates[0], 2),
        "torch_per_cpu_s": round(torch_rates[1], 1),
        "onnxruntime_per_cpu_s": round(onnx_rates[1], 1),
        "onnxruntime_over_torch_cpu": round(onnx_rates[1] / torch_rates[1], 2),
    }


# ----- stages
def bench_decode(video: Path, frames: int) -> float:
    source = CaptureSource(str(video), fps=0, backoff=Backoff(1, 1))
    started = time.perf_counter()
    read = sum(1 for _ in source.frames(threading.Event()))
    assert read == frames, (read, frames)
    return read / (time.perf_counter() - started)


def bench_detection(
    frames: list[np.ndarray],
    detector: FaceDetector,
    width: int,
    batch: int,
    seconds: float,
    threads: int | None = None,
) -> tuple[float, float]:
    """Frames per second and per CPU-second of MTCNN alone on ``frames`` (8 of them), in
    batches; ``threads`` torch threads (ONNX Runtime's are the detector's own)."""
    frames = frames[:8]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)

    def step() -> None:
        for start in range(0, len(frames), batch):
            detector.detect_downscaled(frames[start : start + batch], width, 40)

    try:
        return rates(step, len(frames), seconds)
    finally:
        torch.set_num_threads(previous)


def bench_mtcnn(frames: list[np.ndarray], seconds: float, device: str = "cpu") -> dict[str, Any]:
    """Each detector backend at each width, batch and thread count, and ONNX Runtime / torch."""
    onnx = {t: FaceDetector(40, 0.0, device, "onnxruntime", threads=t) for t in (1, 2)}
    reference = FaceDetector(40, 0.0, device, "torch")
    rows: dict[str, Any] = {}
    for width in (640, 320):
        for batch in (1, 8):
            for threads in (1, 2):
                name = f"width {width}, batch {batch}, {threads} thread{'s' * (threads > 1)}"
                rows[name] = compared(
                    bench_detection(frames, reference, width, batch, seconds, threads),
                    bench_detection(frames, onnx[threads], width, batch, seconds),
                )
                print(f"  MTCNN {name}: {rows[name]}", file=sys.stderr)
    return rows


def bench_spinning(frames: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """MTCNN on ONNX Runtime with two threads (batches of 8 frames, 320 wide) while another
    thread decodes 640x480 JPEG frames flat out, as the agent's frame reader does: both rates,
    with ONNX Runtime's idle threads spinning (its default) or sleeping (ours)."""
    small = np.stack([cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in frames[:8]])
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))[1]
    rows: dict[str, Any] = {}
    for label, spinning in (
        ("sleeping (ours)", False),
        ("spinning (ONNX Runtime's default)", True),
    ):
        networks = OnnxRuntimeNetworks(threads=2, spinning=spinning)
        stop, decoded = threading.Event(), [0]

        def decode(flag: threading.Event = stop, count: list[int] = decoded) -> None:
            while not flag.is_set():
                cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
                count[0] += 1

        mtcnn.detect(small, 20, networks)
        reader = threading.Thread(target=decode, daemon=True)
        started = time.perf_counter()
        reader.start()
        detected = 0
        while time.perf_counter() - started < seconds:
            mtcnn.detect(small, 20, networks)
            detected += len(small)
        elapsed = time.perf_counter() - started
        stop.set()
        reader.join()
        rows[label] = {
            "mtcnn_frames_per_s": round(detected / elapsed, 1),
            "decoded_frames_per_s": round(decoded[0] / elapsed, 1),
        }
    return rows


def detect_all(frames: list[np.ndarray], detector: FaceDetector) -> list[list[Detection]]:
    return [detector.detect_downscaled([frame], 320, 40)[0] for frame in frames]


def bench_align(
    frames: list[np.ndarray], detections: list[list[Detection]], seconds: float
) -> dict[str, float]:
    """Alignment at 112 pixels from the full frame plus the sharpness (blur) measure."""
    pairs = [(f, d) for f, row in zip(frames, detections, strict=True) for d in row]

    def step() -> None:
        for frame, detection in pairs:
            sharpness(align(frame, detection.landmarks, 112))

    return {"faces_per_s": round(rate(step, len(pairs), seconds), 1)}


def aligned_faces(frames: list[np.ndarray], detections: list[list[Detection]]) -> np.ndarray:
    return np.stack(
        [
            align(frame, detection.landmarks, 112)
            for frame, row in zip(frames, detections, strict=True)
            for detection in row
        ]
    )


def make_network(config: ScramblerConfig, faces: np.ndarray) -> ScramblerNetwork:
    network = ScramblerNetwork(config, seed=0)
    network.self_learn([faces_to_sn_input(faces[:32], config.in_channels)])
    return network


def bench_scrambler(
    faces: np.ndarray, network: ScramblerNetwork, seconds: float, device: str
) -> dict[str, Any]:
    backends: dict[str, Any] = {"torch": TorchBackend(network, device)}
    if device == "cpu":
        backends["onnxruntime"] = OnnxRuntimeBackend(network, providers=["CPUExecutionProvider"])
    result: dict[str, Any] = {}
    for batch in (1, 8, 32):
        chunk = np.resize(faces, (batch, *faces.shape[1:]))
        measured = {
            name: rates(partial(backend.scramble, chunk), batch, seconds, sync=device == "cuda")
            for name, backend in backends.items()
        }
        if "onnxruntime" in measured:
            result[f"batch_{batch}"] = compared(measured["torch"], measured["onnxruntime"])
        else:
            result[f"batch_{batch}"] = {"torch": round(measured["torch"][0], 1)}
    network.to("cpu")
    return result


SN_OPTIONS: dict[str, dict[str, Any]] = {
    "2 threads, sleeping, all optimizations, arena (ours)": {},
    "2 threads, spinning": {"spinning": True},
    "1 thread": {"threads": 1},
    "extended optimizations (no NCHWc layout)": {"level": "extended"},
    "basic optimizations": {"level": "basic"},
    "no memory arena": {"arena": False},
}


def bench_sn_options(faces: np.ndarray, network: ScramblerNetwork, seconds: float) -> Any:
    """The deployed SN on ONNX Runtime, 8 faces at a time: in calls of 1, 2, 4 or 8 faces
    with one and two threads, then session options with the backend's calls
    (``CPU_FACES_PER_CALL``)."""
    import onnxruntime as ort

    model = export_onnx(network)
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }
    batch = np.ascontiguousarray(
        faces_to_sn_input(np.resize(faces, (8, *faces.shape[1:])), 3).numpy()
    )

    def session(
        threads: int = 2, spinning: bool = False, level: str = "all", arena: bool = True
    ) -> Any:
        options = ort_session_options(threads, spinning)
        options.graph_optimization_level = levels[level]
        options.enable_cpu_mem_arena = arena
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def calls(s: Any, size: int) -> None:
        for start in range(0, len(batch), size):
            s.run(None, {INPUT_NAME: batch[start : start + size]})

    def measured(s: Any, size: int) -> dict[str, float]:
        wall, cpu = rates(partial(calls, s, size), 8, seconds)
        return {"per_s": round(wall, 1), "per_cpu_s": round(cpu, 1)}

    chunks = {}
    for threads in (1, 2):
        chosen = session(threads)
        for size in (1, 2, 4, 8):
            chunks[f"{threads} thread{'s' * (threads > 1)}, calls of {size}"] = measured(
                chosen, size
            )
    options = {
        label: measured(session(**variant), CPU_FACES_PER_CALL)
        for label, variant in SN_OPTIONS.items()
    }
    return {
        "faces_per_call": CPU_FACES_PER_CALL,
        "calls_faces_per_s": chunks,
        "options_faces_per_s": options,
    }


def bench_encode_and_spool(faces: np.ndarray, seconds: float, workdir: Path) -> dict[str, float]:
    pixels = faces[:, :, :, 0]
    header = FaceHeader(
        agent="bench",
        site="lab",
        camera="cam",
        captured_at=utc_now(),
        key_epoch=1,
        track_id=1,
        detection_score=0.99,
        quality=100.0,
        crop=crop_box(np.array([10, 10, 150, 150]), (HEIGHT, WIDTH, 3)),
        height=pixels.shape[1],
        width=pixels.shape[2],
        pixel_format=PixelFormat.UINT8,
    )
    encode_rate = rate(lambda: [codec.encode(header, p) for p in pixels], len(pixels), seconds)
    payload = codec.encode(header, pixels[0])
    spool = Spool(workdir / "bench.sqlite3", 1_000_000, 1 << 34)

    def put_50() -> None:
        for _ in range(50):
            spool.put("t", payload, time.time() + 60, 1)

    spool_rate = rate(put_50, 50, seconds)
    spool.close()
    return {
        "encode_per_s": round(encode_rate, 1),
        "spool_put_per_s": round(spool_rate, 1),
        "message_bytes": len(payload),
    }


# ----- end to end
def publish_key(
    endpoint: local_services.Endpoint,
    keydir: Path,
    network: ScramblerNetwork,
    scope: str = "bench",
) -> KeySettings:
    """Key material for the agent and the retained bundle + activation, as the trainer does."""
    keydir.mkdir(parents=True, exist_ok=True)
    signing_key = Ed25519PrivateKey.generate()
    fleet_key = material.FleetKey.generate()
    material.save_public_key(signing_key.public_key(), keydir / "signing.pub.pem")
    material.save_fleet_key(fleet_key, keydir / "fleet.key")
    state = network.key_state()
    sealed = bundle.seal(
        epoch=1,
        scope=scope,
        recognizer_id="bench",
        architecture=state["architecture"],
        state=state["state"],
        signing_key=signing_key,
        fleet_key=fleet_key,
    )
    announcement = KeyAnnouncement(
        scope=scope,
        epoch=1,
        state=KeyState.ACTIVE,
        bundle_id=bundle.read_header(sealed).bundle_id,
        bundle_sha256=hashlib.sha256(sealed).hexdigest(),
    )
    settings = MqttSettings(host=endpoint.host, port=endpoint.port)
    client = mqtt.make_client(settings, "bench-trainer", client_id="bench-trainer")
    mqtt.connect(client, settings, clean_start=True)
    for topic, payload in (
        (topics.key_bundle(scope, 1), sealed),
        (topics.key_announcements(scope, 1), envelope.sign(announcement, signing_key)),
    ):
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    return KeySettings(
        directory=keydir / "agent-keys",
        trusted_signers=[keydir / "signing.pub.pem"],
        fleet_key_file=keydir / "fleet.key",
        scope=scope,
    )


DEFAULT = {"detect_every": 3, "detect_width": 320}
# name: (SN backend, agent settings); each runs with both detector backends
END_TO_END: dict[str, tuple[str, dict[str, Any]]] = {
    "every frame, full 640x480": ("onnxruntime", {"detect_every": 1, "detect_width": 640}),
    "every frame, 320 wide": ("onnxruntime", {"detect_every": 1, "detect_width": 320}),
    "every frame, 320 wide, 1 thread": (
        "onnxruntime",
        {"detect_every": 1, "detect_width": 320, "threads": 1},
    ),
    "every 3rd frame, 320 wide (default)": ("onnxruntime", DEFAULT),
    "default, torch SN": ("torch", DEFAULT),
    "default, 1 thread": ("onnxruntime", {**DEFAULT, "threads": 1}),
    "every 5th frame, 320 wide": ("onnxruntime", {"detect_every": 5, "detect_width": 320}),
}


def agent_settings(
    endpoint: local_services.Endpoint,
    keys: KeySettings,
    workdir: Path,
    camera: str,
    **options: Any,
) -> Settings:
    return Settings(
        mqtt=MqttSettings(host=endpoint.host, port=endpoint.port),
        keys=keys,
        cache=workdir / "cache",
        agent=AgentSettings(
            site="bench",
            camera=camera,
            replay_fps=0,
            spool_dir=workdir / "spool",
            metrics_port=0,
            device="cpu",
            **options,
        ),
    )


def bench_end_to_end(
    video: Path, workdir: Path, network: ScramblerNetwork, names: list[str]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with local_services.mosquitto() as endpoint:
        keys = publish_key(endpoint, workdir, network)
        for index, name in enumerate(names):
            backend, options = END_TO_END[name]
            row: dict[str, Any] = {"backend": backend, **options}
            for detector in DETECTORS:
                settings = agent_settings(
                    endpoint,
                    keys,
                    workdir,
                    f"cam{index}-{detector}",
                    backend=backend,
                    detector_backend=detector,
                    **options,
                )
                threads = torch.get_num_threads()
                row[detector] = run_agent(settings, video)
                torch.set_num_threads(threads)
            fast, slow = row["onnxruntime"], row["torch"]
            row["onnxruntime_over_torch"] = round(fast["frames_per_s"] / slow["frames_per_s"], 2)
            row["onnxruntime_over_torch_cpu"] = round(
                fast["frames_per_cpu_s"] / slow["frames_per_cpu_s"], 2
            )
            results[name] = row
            print(f"  {name}: {row}", file=sys.stderr)
    return results


def run_agent(settings: Settings, source: Any) -> dict[str, Any]:
    agent = Agent(settings, source if isinstance(source, CaptureSource | Passers) else str(source))
    agent.start()
    try:
        if not agent.wait_for_key(30):
            raise RuntimeError("the benchmark agent received no key")
        started, cpu = time.perf_counter(), time.process_time()
        agent.run()
        elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        agent.drain(60)
    finally:
        agent.close()
    value = agent.metrics.value
    stage_seconds = {
        stage: agent.metrics.registry.get_sample_value(
            "rllfpr_agent_stage_seconds_sum", {"stage": stage}
        )
        for stage in ("read", "detect", "align", "scramble", "encode", "spool")
    }
    frames = value("frames")
    return {
        "frames_per_s": round(frames / elapsed, 1),
        "frames_per_cpu_s": round(frames / max(cpu_seconds, 1e-9), 1),
        "faces_detected_per_s": round(value("faces_detected") / elapsed, 1),
        "frames": int(frames),
        "frames_dropped": int(value("frames_skipped", reason="behind")),
        "faces_detected": int(value("faces_detected")),
        "faces_published": int(value("faces_published")),
        "seconds": round(elapsed, 2),
        "stage_ms_per_frame": {
            stage: round(1000 * (seconds or 0.0) / max(frames, 1), 2)
            for stage, seconds in stage_seconds.items()
        },
    }


# ----- the face's side
FACE_SIDES = (DEPLOYED_FACE_SIZE, 112)


def bench_face_side(
    video: Path, workdir: Path, faces: np.ndarray, rounds: int, seconds: float, threads: int
) -> dict[str, Any]:
    """The agent at its defaults (``threads`` aside) with the deployed SN at 64 px and at
    112 px: the runs alternate (64, 112, 64, 112, ...) so that a change of the machine's load
    meets both sides; each side's median over ``rounds`` runs, and the SN alone at both."""
    configs = {size: deployed_sn(size) for size in FACE_SIDES}
    networks = {
        size: make_network(config, faces_at(faces, size)) for size, config in configs.items()
    }
    options = {
        "backend": "onnxruntime",
        "detector_backend": "onnxruntime",
        "threads": threads,
        **DEFAULT,
    }
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in FACE_SIDES}
    with local_services.mosquitto() as endpoint:
        keys = {
            size: publish_key(endpoint, workdir / f"side-{size}", network, f"bench-{size}")
            for size, network in networks.items()
        }
        for round_ in range(rounds):
            for size in FACE_SIDES:
                camera = f"side{size}-{round_}"
                settings = agent_settings(endpoint, keys[size], workdir, camera, **options)
                seen = Collector(endpoint, topics.faces("bench", camera))
                torch_threads = torch.get_num_threads()  # the agent sets its own
                run = run_agent(settings, video)
                torch.set_num_threads(torch_threads)
                received = seen.close(run["faces_published"])
                if not received or len(received) != run["faces_published"]:
                    raise RuntimeError(
                        f"{size} px: {run['faces_published']} faces published, "
                        f"{len(received)} received"
                    )
                run["message_bytes"] = float(np.median(seen.sizes))
                runs[size].append(run)
                print(f"  {size} px, round {round_}: {runs[size][-1]}", file=sys.stderr)
    sides: dict[str, Any] = {}
    for size in FACE_SIDES:
        median = {
            key: float(np.median([run[key] for run in runs[size]]))
            for key in ("frames_per_s", "frames_per_cpu_s", "faces_detected_per_s", "message_bytes")
        }
        stages = {
            stage: float(np.median([run["stage_ms_per_frame"][stage] for run in runs[size]]))
            for stage in runs[size][0]["stage_ms_per_frame"]
        }
        sides[str(size)] = {
            "sn": configs[size].model_dump(mode="json"),
            "median": median,
            "stage_ms_per_frame": stages,
            "faces_published": [run["faces_published"] for run in runs[size]],
            "runs": runs[size],
            "sn_alone": bench_scrambler(faces_at(faces, size), networks[size], seconds, "cpu"),
        }
    small, large = (sides[str(size)] for size in FACE_SIDES)
    return {
        "settings": options,
        "rounds": rounds,
        "sides": sides,
        "large_over_small": {
            key: round(large["median"][key] / small["median"][key], 3)
            for key in ("frames_per_s", "frames_per_cpu_s")
        },
    }


# ----- people walking past
class Passers:
    """A camera in which people walk past one at a time: each face (130 px) crosses the view
    at 12 px a frame and is whole in view for ``visible`` frames, then 8-13 empty frames.
    At ``fps`` > 0 the camera is live: frames come at that rate and the agent's reader drops
    the oldest when the agent falls behind. Frame ``i`` is stamped ``EPOCH + i / 25 s``."""

    EPOCH = datetime(2026, 1, 1, tzinfo=utc_now().tzinfo)
    PERIOD = timedelta(milliseconds=40)

    def __init__(self, photos: list[np.ndarray], visible: list[int], fps: float) -> None:
        self.live = fps > 0
        self.fps = fps
        self.description = f"people walking past at {fps:g} frames/s"
        rng = np.random.default_rng(7)
        self.scenery = background(rng)
        self.passer_of_frame: list[int] = []  # -1: nobody
        self.visible = visible
        self.faces, self.rows = [], []
        for passer, frames in enumerate(visible):
            self.faces.append(cv2.resize(photos[passer % len(photos)], (130, 130)))
            self.rows.append(int(rng.integers(40, HEIGHT - 180)))
            gap = int(rng.integers(8, 14))  # the detection phase differs from passer to passer
            self.passer_of_frame += [passer] * frames + [-1] * gap

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        started = time.perf_counter()
        shown = 0
        for index, passer in enumerate(self.passer_of_frame):
            if stop.is_set():
                return
            if self.live:
                time.sleep(max(0.0, started + index / self.fps - time.perf_counter()))
            frame = self.scenery.copy()
            if passer >= 0:
                shown = shown + 1 if index and self.passer_of_frame[index - 1] == passer else 0
                x = 40 + 12 * shown + 60 * (passer % 5)
                y = self.rows[passer]
                frame[y : y + 130, x : x + 130] = self.faces[passer]
            yield Frame(frame, index, 0, self.EPOCH + index * self.PERIOD, f"frame {index}")

    def passer(self, header: FaceHeader) -> int:
        index = round((header.captured_at - self.EPOCH) / self.PERIOD)
        return self.passer_of_frame[index]


PASSER_FRAMES = (1, 2, 3, 4, 6)  # frames in view at 25 frames/s: 40 to 240 ms


def bench_passers(
    photos: list[np.ndarray], workdir: Path, network: ScramblerNetwork, per_length: int
) -> dict[str, Any]:
    """Share of passers of whom a face was sent, by how many frames they were in view."""
    visible = [frames for frames in PASSER_FRAMES for _ in range(per_length)]
    order = np.random.default_rng(3).permutation(len(visible))
    visible = [visible[i] for i in order]
    runs = {
        "live 25 frames/s, every frame": (25.0, 1, "onnxruntime"),
        "live 25 frames/s, every 3rd frame (default)": (25.0, 3, "onnxruntime"),
        "live 25 frames/s, every 5th frame": (25.0, 5, "onnxruntime"),
        "live 25 frames/s, every frame, torch detector": (25.0, 1, "torch"),
        "live 25 frames/s, every 3rd frame, torch detector": (25.0, 3, "torch"),
        "unpaced, every frame": (0.0, 1, "onnxruntime"),
        "unpaced, every 3rd frame": (0.0, 3, "onnxruntime"),
        "unpaced, every 5th frame": (0.0, 5, "onnxruntime"),
    }
    results: dict[str, Any] = {
        "passers": len(visible),
        "frames_in_view": list(PASSER_FRAMES),
        # a passer in view for n frames meets a detection with probability min(1, n / every)
        "expected_without_drops": {
            str(every): {str(n): round(min(1.0, n / every), 2) for n in PASSER_FRAMES}
            for every in (1, 3, 5)
        },
    }
    with local_services.mosquitto() as endpoint:
        keys = publish_key(endpoint, workdir, network)
        for index, (name, (fps, every, detector)) in enumerate(runs.items()):
            source = Passers(photos, visible, fps)
            settings = agent_settings(
                endpoint,
                keys,
                workdir,
                f"walk{index}",
                detect_every=every,
                detect_width=320,
                detector_backend=detector,
                frame_buffer=8,
            )
            seen = Collector(endpoint, topics.faces("bench", f"walk{index}"))
            run = run_agent(settings, source)
            caught = {source.passer(header) for header in seen.close(run["faces_published"])}
            shares = {
                str(frames): round(
                    sum(1 for p, v in enumerate(visible) if v == frames and p in caught)
                    / visible.count(frames),
                    2,
                )
                for frames in PASSER_FRAMES
            }
            results[name] = {
                "fps": fps,
                "detect_every": every,
                "detector": detector,
                "caught_by_frames_in_view": shares,
                "agent_frames_per_s": run["frames_per_s"],
                "frames_dropped": run["frames_dropped"],
            }
            print(f"  {name}: {results[name]}", file=sys.stderr)
    return results


class Collector:
    """Face messages of one topic, decoded."""

    def __init__(self, endpoint: local_services.Endpoint, topic: str) -> None:
        self.headers: list[FaceHeader] = []
        self.sizes: list[int] = []
        settings = MqttSettings(host=endpoint.host, port=endpoint.port)
        self.client = mqtt.make_client(settings, "bench-collector", client_id=f"c-{topic[-12:]}")
        self.client.on_message = lambda _c, _u, m: self.received(bytes(m.payload))
        mqtt.connect(self.client, settings, clean_start=True)
        mqtt.subscribe(self.client, topic)

    def received(self, payload: bytes) -> None:
        self.sizes.append(len(payload))
        self.headers.append(codec.decode(payload).header)

    def close(self, expected: int) -> list[FaceHeader]:
        deadline = time.monotonic() + 10
        while len(self.headers) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
        return self.headers


# ----- GPU
def bench_gpu(frames: list[np.ndarray], faces: np.ndarray, seconds: float) -> dict[str, Any]:
    detection: dict[str, Any] = {}
    for backend in ("torch", "onnxruntime", "tensorrt"):
        try:
            detector = FaceDetector(40, 0.0, "cuda", backend)
        except (RuntimeError, ImportError) as error:
            detection[backend] = f"not measured: {error}"
            continue
        detection[backend] = {
            f"width {width}, batch {batch}": round(
                bench_detection(frames, detector, width, batch, seconds)[0], 1
            )
            for width in (640, 320)
            for batch in (1, 8)
        }
    sn = {}
    for name, config in SN_CONFIGS.items():
        network = make_network(config, faces_at(faces, config.input_size))
        sn[name] = bench_scrambler(faces_at(faces, config.input_size), network, seconds, "cuda")
    return {"device": torch.cuda.get_device_name(), "mtcnn": detection, "scrambler": sn}


SN_CONFIGS = {
    f"deployed SN, {size} px (low-pass {deployed_sn(size).input_blur})": deployed_sn(size)
    for size in FACE_SIDES
}


def faces_at(faces: np.ndarray, size: int) -> np.ndarray:
    if faces.shape[1] == size:
        return faces
    return np.stack(
        [cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA) for face in faces]
    )


# ----- report
def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    photos = lfw_photos(args.data, 40)
    video = workdir / "frames.avi"
    count = write_video(compose_frames(photos, args.frames), video)
    frames = list(compose_frames(photos, args.frames))[:: max(1, args.frames // 24)][:24]
    seconds = args.seconds
    detector = FaceDetector(min_face_size=40, min_score=0.0)
    print("detecting", file=sys.stderr)
    detections = detect_all(frames, detector)
    faces = aligned_faces(frames, detections)
    document: dict[str, Any] = {
        "frames": {
            "count": count,
            "size": f"{WIDTH}x{HEIGHT}",
            "faces_per_frame": "1-3",
            "mean_faces_detected": round(len(faces) / len(frames), 2),
        },
    }
    if args.device == "cuda":
        document["gpu"] = bench_gpu(frames, faces, seconds)
        return document
    parts = set(args.parts)
    deployed = faces_at(faces, DEPLOYED_FACE_SIZE)
    network = make_network(deployed_sn(DEPLOYED_FACE_SIZE), deployed)
    document["sn"] = network.config.model_dump(mode="json")
    if "stages" in parts:
        print("stages", file=sys.stderr)
        document["stages"] = {
            "decode_frames_per_s": round(bench_decode(video, count), 1),
            "mtcnn": bench_mtcnn(frames, seconds),
            "mtcnn_idle_threads": bench_spinning(frames, seconds),
            "align_and_sharpness": bench_align(frames, detections, seconds),
            "scrambler": {
                name: bench_scrambler(
                    faces_at(faces, c.input_size),
                    make_network(c, faces_at(faces, c.input_size)),
                    seconds,
                    "cpu",
                )
                for name, c in SN_CONFIGS.items()
            },
            "scrambler_onnxruntime": bench_sn_options(deployed, network, seconds),
            "encode_and_spool": bench_encode_and_spool(faces, seconds, workdir),
        }
    if "face_side" in parts:
        print("the face's side", file=sys.stderr)
        document["face_side"] = bench_face_side(
            video, workdir, faces, 1 if args.quick else args.rounds, seconds, args.agent_threads
        )
    if "end_to_end" in parts:
        print("end to end", file=sys.stderr)
        names = list(END_TO_END) if not args.quick else [next(iter(END_TO_END))]
        document["end_to_end"] = bench_end_to_end(video, workdir, network, names)
    if "passers" in parts:
        print("people walking past", file=sys.stderr)
        document["walking_past"] = bench_passers(photos, workdir, network, args.passers)
    return document


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Edge agent benchmark",
        "",
        f"Command: `{document['command']}`  ",
        f"Hardware: {document['hardware']}  ",
        f"Measured: {document['measured_at']}; load average before / after: "
        f"{document['load_average']['before']} / {document['load_average']['after']}",
        "",
        document["note"],
        "",
    ]
    frames = document["frames"]
    lines += [
        f"Frames: {frames['count']} of {frames['size']} with {frames['faces_per_frame']} faces "
        f"({frames['mean_faces_detected']} detected per frame on average).",
        "",
    ]
    if "end_to_end" in document:
        lines += end_to_end_table(document["end_to_end"])
    if "face_side" in document:
        lines += face_side_table(document["face_side"])
    if "walking_past" in document:
        lines += walking_past_table(document["walking_past"])
    if "stages" in document:
        lines += stage_tables(document["stages"])
    if "gpu" in document:
        lines += gpu_table(document["gpu"])
    return "\n".join(lines)


def end_to_end_table(runs: dict[str, Any]) -> list[str]:
    lines = [
        "## End to end (the agent, into a local Mosquitto)",
        "",
        "Each row runs the agent twice, with each detector backend, minutes apart: frames per "
        "second of wall time, frames per second of the process's CPU time (all threads; what "
        "the machine's load does not change much), then where the ONNX Runtime agent's time "
        "went.",
        "",
        "| run | SN backend | frames/s: torch MTCNN | ONNX Runtime MTCNN | ratio | "
        "frames per CPU-second: torch | ONNX Runtime | ratio | published | "
        "ms/frame: detect | align | scramble |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        fast, slow = run["onnxruntime"], run["torch"]
        stages = fast["stage_ms_per_frame"]
        lines.append(
            f"| {name} | {run['backend']} | {slow['frames_per_s']} | {fast['frames_per_s']} | "
            f"{run['onnxruntime_over_torch']} | {slow['frames_per_cpu_s']} | "
            f"{fast['frames_per_cpu_s']} | {run['onnxruntime_over_torch_cpu']} | "
            f"{fast['faces_published']} | "
            f"{stages['detect']} | {stages['align']} | {stages['scramble']} |"
        )
    return [*lines, ""]


def face_side_table(side: dict[str, Any]) -> list[str]:
    small, large = (str(size) for size in FACE_SIDES)
    lines = [
        "## The face's side: 64 px against 112 px",
        "",
        f"The agent at its defaults ({side['settings']}), with a key of the deployed SN at "
        f"{small} px and one at {large} px (its input low-pass scaled with the face); the runs "
        f"alternate, {side['rounds']} per side; medians. Ratio {large} / {small} px: "
        f"**{side['large_over_small']['frames_per_s']}** of the frames per second, "
        f"{side['large_over_small']['frames_per_cpu_s']} of the frames per CPU-second.",
        "",
        "| face side | SN low-pass | frames/s | frames per CPU-second | faces/s | published "
        "per run | bytes per face message | ms/frame: detect | align | scramble | encode | "
        "SN alone, ONNX Runtime, faces/s: batch 1 | batch 8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in side["sides"].items():
        median, stages, alone = row["median"], row["stage_ms_per_frame"], row["sn_alone"]
        lines.append(
            f"| {size} px | {row['sn']['input_blur']} | {median['frames_per_s']} | "
            f"{median['frames_per_cpu_s']} | {median['faces_detected_per_s']} | "
            f"{', '.join(str(n) for n in row['faces_published'])} | "
            f"{median['message_bytes']:.0f} | {stages['detect']} | "
            f"{stages['align']} | {stages['scramble']} | {stages['encode']} | "
            f"{alone['batch_1']['onnxruntime']} | {alone['batch_8']['onnxruntime']} |"
        )
    return [*lines, ""]


def walking_past_table(walk: dict[str, Any]) -> list[str]:
    lengths = walk["frames_in_view"]
    lines = [
        "## People walking past",
        "",
        f"{walk['passers']} people cross the view one at a time, each whole in view for "
        f"{', '.join(map(str, lengths))} frames (40 ms a frame at 25 frames/s); the share of "
        "them of whom at least one face was sent. Live: a 25 frames/s camera whose frames are "
        "dropped when the agent falls behind. Unpaced: no frame is dropped, so only "
        "`detect_every` decides. The trade-off: detecting every n-th frame misses a person in "
        "view for k < n frames with probability 1 - k/n and costs about 1/n of the detection "
        "time of detecting every frame; detecting more often catches brief appearances only "
        "while the agent keeps up with the camera (compare the frames dropped).",
        "",
        "| run | detector | "
        + " | ".join(f"{n} frame{'s' * (n > 1)}" for n in lengths)
        + " | agent frames/s | frames dropped |",
        "|---|---|" + "---|" * len(lengths) + "---|---|",
    ]
    for every, shares in walk["expected_without_drops"].items():
        lines.append(
            f"| expected, no frame dropped, every {every} | any | "
            + " | ".join(f"{shares[str(n)]:.0%}" for n in lengths)
            + " | | |"
        )
    for name, run in walk.items():
        if not isinstance(run, dict) or "caught_by_frames_in_view" not in run:
            continue
        shares = run["caught_by_frames_in_view"]
        lines.append(
            f"| {name} | {run['detector']} | "
            + " | ".join(f"{shares[str(n)]:.0%}" for n in lengths)
            + f" | {run['agent_frames_per_s']} | {run['frames_dropped']} |"
        )
    return [*lines, ""]


def stage_tables(stages: dict[str, Any]) -> list[str]:
    lines = ["## Stages", "", "| stage | rate |", "|---|---|"]
    lines.append(f"| decode MJPG 640x480 | {stages['decode_frames_per_s']} frames/s |")
    lines.append(f"| align + sharpness | {stages['align_and_sharpness']['faces_per_s']} faces/s |")
    coded = stages["encode_and_spool"]
    lines.append(f"| encode face message | {coded['encode_per_s']} faces/s |")
    lines.append(f"| spool write (SQLite) | {coded['spool_put_per_s']} messages/s |")
    lines += [
        "",
        "### MTCNN (frames/s, then frames per CPU-second)",
        "",
        "| frames | torch (facenet-pytorch) | ONNX Runtime | ratio | torch per CPU-s | "
        "ONNX Runtime per CPU-s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [compared_row(name, row) for name, row in stages["mtcnn"].items()]
    lines += [
        "",
        "ONNX Runtime MTCNN, 2 threads, batches of 8 frames 320 wide, while another thread "
        "decodes JPEG frames flat out:",
        "",
        "| idle ONNX Runtime threads | MTCNN frames/s | decoded frames/s |",
        "|---|---|---|",
    ]
    for name, row in stages["mtcnn_idle_threads"].items():
        lines.append(f"| {name} | {row['mtcnn_frames_per_s']} | {row['decoded_frames_per_s']} |")
    lines += ["", "### Scrambler backends on the CPU (faces/s, then faces per CPU-second)", ""]
    lines += [
        "| SN, batch | torch | ONNX Runtime | ratio | torch per CPU-s | ONNX Runtime per CPU-s "
        "| ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for sn, batches in stages["scrambler"].items():
        lines += [
            compared_row(f"{sn}, {batch.split('_')[1]}", row) for batch, row in batches.items()
        ]
    options = stages["scrambler_onnxruntime"]
    lines += [
        "",
        "The deployed SN on ONNX Runtime, 8 faces at a time: split into calls of 1 to 8 faces, "
        "then session options with the backend's calls of "
        f"{options.get('faces_per_call', CPU_FACES_PER_CALL)}.",
        "",
        "| session | faces/s | faces per CPU-second |",
        "|---|---|---|",
    ]
    for table in ("calls_faces_per_s", "options_faces_per_s"):
        lines += [
            f"| {name} | {value['per_s']} | {value['per_cpu_s']} |"
            for name, value in options[table].items()
        ]
    return [*lines, ""]


def compared_row(name: str, row: dict[str, Any]) -> str:
    return (
        f"| {name} | {row['torch']} | {row['onnxruntime']} | {row['onnxruntime_over_torch']} | "
        f"{row['torch_per_cpu_s']} | {row['onnxruntime_per_cpu_s']} | "
        f"{row['onnxruntime_over_torch_cpu']} |"
    )


def gpu_table(gpu: dict[str, Any]) -> list[str]:
    lines = [f"## GPU: {gpu['device']}", "", "| what | rate |", "|---|---|"]
    for backend, rows in gpu["mtcnn"].items():
        if isinstance(rows, str):
            lines.append(f"| MTCNN {backend} | {rows} |")
            continue
        for name, value in rows.items():
            lines.append(f"| MTCNN {backend}, {name} | {value} frames/s |")
    for sn, batches in gpu["scrambler"].items():
        for batch, row in batches.items():
            lines.append(f"| SN torch, {sn}, {batch.replace('_', ' ')} | {row['torch']} faces/s |")
    return [*lines, ""]


NOTE = (
    "The two CPU cores are shared with other work running at the same time (see the load "
    "average): numbers are lower bounds for a dedicated machine and vary between runs, so "
    "compare the two backends of one row (measured minutes apart), not rows of different "
    "runs. Detection at reduced resolution keeps the smallest face at 40 full-resolution "
    "pixels, so MTCNN's image pyramid starts at the same size as at full resolution; only "
    "the crops of its later stages get cheaper. The levers are the detector backend, "
    "`detect_every`, `min_face_size` and batching. torch's OpenMP threads busy-wait, so on "
    "two cores that other processes also use, two threads can be slower than one."
)
PARTS = ("stages", "end_to_end", "passers", "face_side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/results/bench-agent.json"))
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("RLLFPR_DATA", "../shared/data"))
    )
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=3.0, help="per stage measurement")
    parser.add_argument("--passers", type=int, default=12, help="people per time in view")
    parser.add_argument("--rounds", type=int, default=3, help="agent runs per face side")
    parser.add_argument(
        "--agent-threads",
        type=int,
        default=0,
        help="the face-side agents' CPU threads (0: the agent's default, all cores)",
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.seconds, args.passers = 80, 0.3, 2
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rllfpr-bench-agent-") as workdir:
        document = measure(args, Path(workdir))
    document = {
        "command": "python " + " ".join(sys.argv),
        "hardware": hardware.describe(torch.device(args.device)),
        "measured_at": utc_now().isoformat(timespec="seconds"),
        "load_average": {
            "before": [round(x, 2) for x in before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "note": NOTE,
        **document,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(document) + "\n")
    print(markdown(document))


if __name__ == "__main__":
    main()
