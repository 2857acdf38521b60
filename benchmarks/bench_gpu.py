"""GPU throughput of the two networks on the hot paths, and whether the GPU scrambles exactly.

- SN (edge agent): torch eager on the GPU with TF32 off and on, at batch 1, 32 and 256, and how
  many wire pixels differ from the CPU reference (the wire format is exact uint8 grey levels);
  ONNX Runtime with every execution provider it offers there.
- Recognizer (recognizer service): embedding throughput with bf16 autocast, batch 512, for the
  backbones of the design study.

Usage: python benchmarks/bench_gpu.py OUT.json [--size 112] [--seconds 3]
Runs on the CPU too (tiny settings, for testing the script); the numbers that matter need CUDA.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from rllfpr.faces.pixels import pick_device
from rllfpr.models.export import export_onnx
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from trainer import hardware


def _rate(step: Callable[[], Any], batch: int, seconds: float, device: torch.device) -> float:
    """Items per second of ``step`` (one batch), after warm-up, synchronizing the device."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    sync()
    return done / (time.perf_counter() - started)


def _scrambler(size: int, device: torch.device) -> ScramblerNetwork:
    network = ScramblerNetwork(ScramblerConfig(input_size=size), seed=1)
    faces = torch.rand(256, 3, size, size, generator=torch.Generator().manual_seed(0))
    network.self_learn([faces[:128], faces[128:]])
    return network.to(device)


def bench_scrambler(size: int, seconds: float, device: torch.device) -> dict[str, Any]:
    network = _scrambler(size, torch.device("cpu"))
    probe = torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(1))
    reference = network.scramble(probe).numpy()
    result: dict[str, Any] = {"config": network.config.model_dump(mode="json")}
    network = network.to(device)
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        pixels = network.scramble(probe.to(device)).cpu().numpy()
        differ = (pixels != reference).mean()
        rates = {}
        for batch in (1, 32, 256):
            faces = torch.rand(batch, 3, size, size, device=device)

            def scramble(f: torch.Tensor = faces) -> torch.Tensor:
                return network.scramble(f)

            rates[f"batch_{batch}"] = round(_rate(scramble, batch, seconds, device), 1)
        result[f"torch_{device.type}_tf32_{'on' if tf32 else 'off'}"] = {
            "faces_per_s": rates,
            "pixels_differing_from_cpu": float(differ),
            "max_abs_difference": int(np.abs(pixels.astype(int) - reference.astype(int)).max()),
        }
    torch.backends.cudnn.allow_tf32 = False
    model = export_onnx(network.cpu())
    for provider in ort.get_available_providers():
        if provider in ("TensorrtExecutionProvider", "AzureExecutionProvider"):
            continue
        session = ort.InferenceSession(model, providers=[provider])
        name = session.get_inputs()[0].name
        pixels = session.run(None, {name: probe.numpy()})[0][:, 0]
        rates = {}
        for batch in (1, 32, 256):
            feed = {name: np.random.default_rng(0).random((batch, 3, size, size), np.float32)}

            def step(s: ort.InferenceSession = session, f: dict[str, Any] = feed) -> Any:
                return s.run(None, f)

            rates[f"batch_{batch}"] = round(_rate(step, batch, seconds, device), 1)
        result[f"onnxruntime_{provider}"] = {
            "faces_per_s": rates,
            "pixels_differing_from_cpu": float((pixels != reference).mean()),
        }
    return result


def bench_recognizers(size: int, seconds: float, device: torch.device) -> dict[str, Any]:
    result = {}
    batch = 512 if device.type == "cuda" else 8
    for backbone, stem in (
        ("resnet50", "imagenet"),
        ("resnet50", "full_resolution"),
        ("resnet18", "full_resolution"),
        ("compact", "full_resolution"),
    ):
        config = RecognizerConfig(backbone=backbone, stem=stem, input_size=size)
        model = Recognizer(config).to(device).eval().to(memory_format=torch.channels_last)
        faces = torch.randn(batch, 1, size, size, device=device)
        faces = faces.to(memory_format=torch.channels_last)

        @torch.no_grad()
        def step(m: Recognizer = model, f: torch.Tensor = faces) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return m(f)

        result[f"{backbone}_{stem}"] = {
            "batch": batch,
            "faces_per_s": round(_rate(step, batch, seconds, device), 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--seconds", type=float, default=3.0)
    arguments = parser.parse_args()
    device = pick_device("auto")
    result = {
        "command": "python benchmarks/bench_gpu.py OUT.json "
        f"--size {arguments.size} --seconds {arguments.seconds}",
        "hardware": hardware.describe(device),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "scrambler": bench_scrambler(arguments.size, arguments.seconds, device),
        "recognizer_bf16": bench_recognizers(arguments.size, arguments.seconds, device),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
