"""Scrambler backends: one small interface, three runtimes, the same wire pixels.

Every backend turns aligned RGB uint8 faces (N, S, S, 3) into the SN's wire pixels
(N, S, S) uint8: the SN input of ``rllfpr.faces.pixels`` (grey when the key takes one
channel), then the one fixed conversion of ``rllfpr.models.scrambler``:

- ``torch``: the ``ScramblerNetwork`` itself, on the CPU or a CUDA GPU;
- ``onnxruntime``: the graph of ``rllfpr.models.export`` (CPU; CUDA and TensorRT execution
  providers are used when the installed ONNX Runtime has them);
- ``tensorrt``: an engine built from the same ONNX graph (``edge_agent.tensorrt_backend``).

Runtimes sum in different orders, so a face's float output can differ in the last bits and
a grey level sitting on a .5 boundary can round the other way; a 2x2 max-pool whose window
holds near-equal values can also pick another position. Equivalence is therefore stated as a
tolerance (``EQUIVALENCE``) and tested, not assumed. TF32 stays off on GPUs (the SN itself
turns it off in torch; here for ONNX Runtime's CUDA provider and TensorRT): on an H100 it
changed 22 % of the wire pixels (``docs/results/bench-gpu.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from rllfpr.faces import pixels
from rllfpr.models.export import INPUT_NAME, export_onnx
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.runtimes import onnxruntime_available, ort_session_options, tensorrt_available

log = logging.getLogger(__name__)

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
BackendChoice = Literal["auto", "torch", "onnxruntime", "tensorrt"]


@dataclass(frozen=True)
class Tolerance:
    """How far two backends' uint8 outputs of the same batch of faces may differ."""

    max_differing_fraction: float  # of all pixels of the batch
    max_mean_abs_difference: float  # grey levels, over all pixels of the batch


# Measured on 199 aligned LFW faces, default SN, 4 keys (tests/test_agent_backends.py): CPU
# torch and ONNX Runtime differ on 0.03-0.09 % of pixels, mean |difference| 0.001-0.005 grey
# levels. Most differences are one grey level (a .5 rounding boundary); the rest come from a
# 2x2 max-pool window whose two largest values are within float error of each other, where
# the runtimes keep different positions and the decoder spreads that over a patch: a single
# face can then differ on a few percent of its pixels, by up to ~60 levels. So the bound is
# stated per batch, not per pixel.
EQUIVALENCE = Tolerance(max_differing_fraction=0.005, max_mean_abs_difference=0.05)


def within_tolerance(a: np.ndarray, b: np.ndarray, tolerance: Tolerance = EQUIVALENCE) -> bool:
    """Whether two backends' outputs of one batch agree within ``tolerance``."""
    if a.shape != b.shape:
        return False
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return bool(
        (difference > 0).mean() <= tolerance.max_differing_fraction
        and difference.mean() <= tolerance.max_mean_abs_difference
    )


class ScramblerBackend(Protocol):
    """Aligned RGB uint8 faces (N, S, S, 3) in, wire pixels (N, S, S) uint8 out."""

    name: str
    input_size: int

    def scramble(self, faces: np.ndarray) -> np.ndarray: ...


def to_uint8(grey_levels: np.ndarray) -> np.ndarray:
    """(N, 1, S, S) integral float grey levels -> (N, S, S) uint8."""
    return np.clip(grey_levels[:, 0], 0, 255).astype(np.uint8)


def _empty(size: int) -> np.ndarray:
    return np.zeros((0, size, size), np.uint8)


class TorchBackend:
    name = "torch"

    def __init__(self, network: ScramblerNetwork, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.input_size = network.config.input_size

    def scramble(self, faces: np.ndarray) -> np.ndarray:
        if not len(faces):
            return _empty(self.input_size)
        return pixels.scramble(self.network, faces)


ORT_PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


# Faces per ONNX Runtime call on the CPU. One face at a time keeps a face's activations in
# the core's cache: the 112-pixel SN ran 223 faces/s per core one by one and 179 in calls of
# 8 (CPU time, one thread); two threads on a loaded machine, 43 and 27 faces/s
# (docs/results/bench-agent.md has the current figures). GPUs get the whole batch.
CPU_FACES_PER_CALL = 1


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        network: ScramblerNetwork,
        engine_dir: Path | None = None,
        providers: list[str] | None = None,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        chosen = providers or [p for p in ORT_PROVIDER_PREFERENCE if p in available]
        self.session = ort.InferenceSession(
            export_onnx(network),
            ort_session_options(threads),
            providers=[(name, _provider_options(name, engine_dir)) for name in chosen],
        )
        self.providers = self.session.get_providers()
        self.input_size = network.config.input_size
        self._channels = network.config.in_channels
        on_cpu = self.providers == ["CPUExecutionProvider"]
        self.faces_per_call = CPU_FACES_PER_CALL if on_cpu else None

    def scramble(self, faces: np.ndarray) -> np.ndarray:
        if not len(faces):
            return _empty(self.input_size)
        inputs = np.ascontiguousarray(pixels.faces_to_sn_input(faces, self._channels).numpy())
        step = self.faces_per_call or len(inputs)
        grey = [
            self.session.run(None, {INPUT_NAME: inputs[start : start + step]})[0]
            for start in range(0, len(inputs), step)
        ]
        return to_uint8(np.concatenate(grey))


def _provider_options(provider: str, engine_dir: Path | None) -> dict[str, str]:
    if provider == "CUDAExecutionProvider":
        return {"use_tf32": "0"}
    if provider == "TensorrtExecutionProvider" and engine_dir is not None:
        # The engine holds the key's weights: it lives with the key and goes with it.
        engine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engine_dir)}
    return {}


def available_backends() -> list[BackendName]:
    found: list[BackendName] = ["torch"]
    if onnxruntime_available():
        found.append("onnxruntime")
    if tensorrt_available():
        found.append("tensorrt")
    return found


def resolve(choice: BackendChoice) -> BackendName:
    """``auto``: TensorRT on a GPU when installed, else ONNX Runtime, else torch."""
    if choice != "auto":
        if choice not in available_backends():
            raise RuntimeError(
                f"scrambler backend {choice!r} is not available here "
                f"(available: {', '.join(available_backends())})"
            )
        return choice
    return available_backends()[-1]


def build_backend(
    name: BackendName,
    network: ScramblerNetwork,
    *,
    device: str,
    engine_dir: Path,
    threads: int = 0,
) -> ScramblerBackend:
    """A backend for one key. ``engine_dir`` is where compiled engines of this key are
    cached; it belongs to the key and is deleted with it."""
    if name == "torch":
        return TorchBackend(network, device)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(network, engine_dir, threads=threads)
    from edge_agent.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(network, engine_dir)
