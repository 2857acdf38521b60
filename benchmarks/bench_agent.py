"""Edge-agent speed: each pipeline stage and the whole agent, on 640x480 frames with 1-3 faces.

Frames are composed from LFW photos (one to three photos of 110-170 pixels, the face about
half of that, drifting a pixel a frame over a textured background, a new scene every 40
frames) and written as an
MJPG video, which the agent reads like a camera file. Measured on this machine:

- per stage: video decoding, MTCNN detection (full 640x480 and downscaled to 320 wide, single
  frames and batches), alignment with the sharpness gate, the SN in torch and in ONNX Runtime
  (batches of 1, 8 and 32; the default 112-pixel SN and the 64-pixel one of the CPU-scale
  training configs), face-message encoding, spool writes;
- end to end: the agent itself (``edge_agent.agent.Agent``) replaying the video as fast as it
  can into a local Mosquitto, with a key published like the trainer does, for several
  detection settings; frames/s counts every frame read, faces/s every face detected.
- with ``--device cuda`` (a GPU machine): the SN in torch on the GPU and MTCNN on the GPU.

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
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from edge_agent.backends import OnnxRuntimeBackend, TorchBackend
from edge_agent.sources import Backoff, CaptureSource
from edge_agent.spool import Spool
from rllfpr import local_services, mqtt
from rllfpr.config import AgentSettings, KeySettings, MqttSettings, Settings
from rllfpr.faces.align import align
from rllfpr.faces.detect import Detection, FaceDetector, crop_box
from rllfpr.faces.pixels import sharpness
from rllfpr.keys import bundle, envelope, material
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import FaceHeader, KeyAnnouncement, KeyState, PixelFormat, utc_now
from trainer import hardware

WIDTH, HEIGHT = 640, 480
SCENE_FRAMES = 40


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


def compose_frames(photos: list[np.ndarray], count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """640x480 RGB frames: scenes of 1-3 drifting faces on a textured background."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, SCENE_FRAMES):
        background = cv2.GaussianBlur(
            rng.integers(40, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8), (0, 0), 8
        )
        people = int(rng.integers(1, 4))
        sizes = rng.integers(110, 171, people)
        lanes = np.linspace(0, WIDTH - 170 - SCENE_FRAMES, people).astype(int)
        rows = rng.integers(20, HEIGHT - 180, people)
        picks = rng.choice(len(photos), people, replace=False)
        faces = [cv2.resize(photos[i], (int(s), int(s))) for i, s in zip(picks, sizes, strict=True)]
        for step in range(min(SCENE_FRAMES, count - start)):
            frame = background.copy()
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
    step()
    done, started = 0, time.perf_counter()
    while True:
        step()
        if sync:
            torch.cuda.synchronize()
        done += items
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


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
) -> dict[str, float]:
    """MTCNN alone on ``frames`` (8 of them), in batches, with ``threads`` torch threads."""
    frames = frames[:8]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)

    def step() -> None:
        for start in range(0, len(frames), batch):
            detector.detect_downscaled(frames[start : start + batch], width, 40)

    try:
        per_second = rate(step, len(frames), seconds)
    finally:
        torch.set_num_threads(previous)
    return {"frames_per_s": round(per_second, 1), "width": width, "batch": batch}


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
    unit = torch.from_numpy(faces[:32].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    network.self_learn([unit])
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
        rates = {
            name: round(rate(partial(backend.scramble, chunk), batch, seconds), 1)
            for name, backend in backends.items()
        }
        if "onnxruntime" in rates:
            rates["onnxruntime_over_torch"] = round(rates["onnxruntime"] / rates["torch"], 2)
        result[f"batch_{batch}"] = rates
    network.to("cpu")
    return result


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
    endpoint: local_services.Endpoint, keydir: Path, network: ScramblerNetwork
) -> KeySettings:
    """Key material for the agent and the retained bundle + activation, as the trainer does."""
    signing_key = Ed25519PrivateKey.generate()
    fleet_key = material.FleetKey.generate()
    material.save_public_key(signing_key.public_key(), keydir / "signing.pub.pem")
    material.save_fleet_key(fleet_key, keydir / "fleet.key")
    state = network.key_state()
    sealed = bundle.seal(
        epoch=1,
        scope="bench",
        recognizer_id="bench",
        architecture=state["architecture"],
        state=state["state"],
        signing_key=signing_key,
        fleet_key=fleet_key,
    )
    announcement = KeyAnnouncement(
        scope="bench",
        epoch=1,
        state=KeyState.ACTIVE,
        bundle_id=bundle.read_header(sealed).bundle_id,
        bundle_sha256=hashlib.sha256(sealed).hexdigest(),
    )
    settings = MqttSettings(host=endpoint.host, port=endpoint.port)
    client = mqtt.make_client(settings, "bench-trainer", client_id="bench-trainer")
    mqtt.connect(client, settings, clean_start=True)
    for topic, payload in (
        (topics.key_bundle("bench", 1), sealed),
        (topics.key_announcements("bench", 1), envelope.sign(announcement, signing_key)),
    ):
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    return KeySettings(
        directory=keydir / "agent-keys",
        trusted_signers=[keydir / "signing.pub.pem"],
        fleet_key_file=keydir / "fleet.key",
        scope="bench",
    )


DEFAULT = {"detect_every": 3, "detect_width": 320}
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


def bench_end_to_end(video: Path, workdir: Path, network: ScramblerNetwork) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with local_services.mosquitto() as endpoint:
        keys = publish_key(endpoint, workdir, network)
        detector = FaceDetector(min_face_size=40, min_score=0.0)
        for index, (name, (backend, options)) in enumerate(END_TO_END.items()):
            settings = Settings(
                mqtt=MqttSettings(host=endpoint.host, port=endpoint.port),
                keys=keys,
                agent=AgentSettings(
                    site="bench",
                    camera=f"cam{index}",
                    replay_fps=0,
                    spool_dir=workdir / "spool",
                    metrics_port=0,
                    backend=backend,
                    device="cpu",
                    **options,
                ),
            )
            threads = torch.get_num_threads()
            results[name] = {"backend": backend, **options, **run_agent(settings, video, detector)}
            torch.set_num_threads(threads)
            print(f"  {name}: {results[name]}", file=sys.stderr)
    return results


def run_agent(settings: Settings, video: Path, detector: FaceDetector) -> dict[str, Any]:
    agent = Agent(settings, str(video), detector=detector)
    agent.start()
    try:
        if not agent.wait_for_key(30):
            raise RuntimeError("the benchmark agent received no key")
        started = time.perf_counter()
        agent.run()
        elapsed = time.perf_counter() - started
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
        "faces_detected_per_s": round(value("faces_detected") / elapsed, 1),
        "frames": int(frames),
        "faces_detected": int(value("faces_detected")),
        "faces_published": int(value("faces_published")),
        "seconds": round(elapsed, 2),
        "stage_ms_per_frame": {
            stage: round(1000 * (seconds or 0.0) / frames, 2)
            for stage, seconds in stage_seconds.items()
        },
    }


# ----- GPU
def bench_gpu(frames: list[np.ndarray], faces: np.ndarray, seconds: float) -> dict[str, Any]:
    detector = FaceDetector(min_face_size=40, min_score=0.0, device="cuda")
    detection = {
        f"width_{width}_batch_{batch}": bench_detection(frames, detector, width, batch, seconds)
        for width in (640, 320)
        for batch in (1, 8)
    }
    sn = {}
    for name, config in SN_CONFIGS.items():
        network = make_network(config, faces_at(faces, config.input_size))
        sn[name] = bench_scrambler(faces_at(faces, config.input_size), network, seconds, "cuda")
    return {"device": torch.cuda.get_device_name(), "mtcnn": detection, "scrambler": sn}


SN_CONFIGS = {
    "default SN, 112 px": ScramblerConfig(),
    "CPU-scale configs' SN, 64 px": ScramblerConfig(input_size=64),
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
    print("stages", file=sys.stderr)
    document["stages"] = {
        "decode_frames_per_s": round(bench_decode(video, count), 1),
        "mtcnn": {
            f"width_{width}_batch_{batch}_threads_{threads}": bench_detection(
                frames, detector, width, batch, seconds, threads
            )
            for width in (640, 320)
            for batch in (1, 8)
            for threads in (1, 2)
        },
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
        "encode_and_spool": bench_encode_and_spool(faces, seconds, workdir),
    }
    print("end to end", file=sys.stderr)
    network = make_network(ScramblerConfig(), faces)
    document["end_to_end"] = bench_end_to_end(video, workdir, network)
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
        lines += ["## End to end (the agent, into a local Mosquitto)", ""]
        lines += [
            "| run | SN backend | frames/s | faces detected/s | published | "
            "ms/frame: detect | align | scramble |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, run in document["end_to_end"].items():
            stages = run["stage_ms_per_frame"]
            lines.append(
                f"| {name} | {run['backend']} | {run['frames_per_s']} | "
                f"{run['faces_detected_per_s']} | {run['faces_published']} | "
                f"{stages['detect']} | {stages['align']} | {stages['scramble']} |"
            )
        lines.append("")
    if "stages" in document:
        stages = document["stages"]
        lines += ["## Stages", "", "| stage | rate |", "|---|---|"]
        lines.append(f"| decode MJPG 640x480 | {stages['decode_frames_per_s']} frames/s |")
        for name, row in stages["mtcnn"].items():
            lines.append(f"| MTCNN {name.replace('_', ' ')} | {row['frames_per_s']} frames/s |")
        lines.append(
            f"| align + sharpness | {stages['align_and_sharpness']['faces_per_s']} faces/s |"
        )
        coded = stages["encode_and_spool"]
        lines.append(f"| encode face message | {coded['encode_per_s']} faces/s |")
        lines.append(f"| spool write (SQLite) | {coded['spool_put_per_s']} messages/s |")
        lines += ["", "## Scrambler backends on the CPU (faces/s)", ""]
        lines += ["| SN | batch | torch | ONNX Runtime | ratio |", "|---|---|---|---|---|"]
        for sn, batches in stages["scrambler"].items():
            for batch, row in batches.items():
                lines.append(
                    f"| {sn} | {batch.split('_')[1]} | {row['torch']} | {row['onnxruntime']} | "
                    f"{row['onnxruntime_over_torch']} |"
                )
        lines.append("")
    if "gpu" in document:
        gpu = document["gpu"]
        lines += [f"## GPU: {gpu['device']}", "", "| what | rate |", "|---|---|"]
        for name, row in gpu["mtcnn"].items():
            lines.append(f"| MTCNN {name.replace('_', ' ')} | {row['frames_per_s']} frames/s |")
        for sn, batches in gpu["scrambler"].items():
            for batch, row in batches.items():
                lines.append(
                    f"| SN torch, {sn}, {batch.replace('_', ' ')} | {row['torch']} faces/s |"
                )
        lines.append("")
    return "\n".join(lines)


NOTE = (
    "The two CPU cores are shared with other work running at the same time (see the load "
    "average): numbers are lower bounds for a dedicated machine and vary between runs. "
    "MTCNN dominates. Detection at reduced resolution keeps the smallest face at 40 "
    "full-resolution pixels, so MTCNN's image pyramid starts at the same size as at full "
    "resolution; only the crops of its later stages get cheaper. The levers are "
    "`detect_every`, `min_face_size` and batching. torch's OpenMP threads busy-wait, so on "
    "two cores that other processes also use, two threads can be much slower than one "
    "(the stage rows show both)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/results/bench-agent.json"))
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("RLLFPR_DATA", "../shared/data"))
    )
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=3.0, help="per stage measurement")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.seconds = 80, 0.3
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
