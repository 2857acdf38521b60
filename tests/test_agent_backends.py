"""Scrambler backends: the same wire pixels from torch, ONNX Runtime and TensorRT.

The tolerance (``backends.EQUIVALENCE``) is stated per batch of real aligned faces: at most
0.5 % of pixels may differ and the mean absolute difference is at most 0.05 grey levels
(see the module docstring of ``edge_agent.backends`` for why single pixels can differ).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.backends import (
    EQUIVALENCE,
    OnnxRuntimeBackend,
    TorchBackend,
    available_backends,
    resolve,
    within_tolerance,
)
from rllfpr.faces.align import align
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from tests.support.agent import lfw_images, read_rgb, self_learned, shared_detector

FACES = 32
CUDA = torch.cuda.is_available()
TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def faces(data_root: Path) -> np.ndarray:
    """Aligned 112x112 faces of different LFW people."""
    aligned = []
    for path in lfw_images(data_root, FACES, start=200):
        image = read_rgb(path)
        detections = shared_detector().detect([image])[0]
        if detections:
            best = max(detections, key=lambda d: d.score)
            aligned.append(align(image, best.landmarks, 112))
    return np.stack(aligned)


@pytest.fixture(scope="module")
def network(faces: np.ndarray) -> ScramblerNetwork:
    return self_learned(ScramblerConfig(), 0, faces[:16])  # the default SN


def describe(a: np.ndarray, b: np.ndarray) -> str:
    difference = np.abs(a.astype(int) - b.astype(int))
    return f"{(difference > 0).mean():.4%} of pixels differ, mean {difference.mean():.4f}"


def test_onnxruntime_matches_torch_on_the_cpu(network: ScramblerNetwork, faces: np.ndarray) -> None:
    reference = TorchBackend(network).scramble(faces)
    output = OnnxRuntimeBackend(network, providers=["CPUExecutionProvider"]).scramble(faces)
    assert output.dtype == np.uint8
    assert output.shape == (len(faces), 112, 112)
    assert within_tolerance(reference, output), describe(reference, output)
    assert not np.array_equal(
        reference, TorchBackend(ScramblerNetwork(network.config, 99)).scramble(faces)
    )


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_torch_on_cuda_matches_the_cpu(network: ScramblerNetwork, faces: np.ndarray) -> None:
    reference = TorchBackend(network).scramble(faces)
    output = TorchBackend(network, "cuda").scramble(faces)
    network.to("cpu")
    assert within_tolerance(reference, output), describe(reference, output)


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="this ONNX Runtime has no CUDA execution provider (the onnxruntime-gpu package)",
)
def test_onnxruntime_on_cuda_matches_torch(network: ScramblerNetwork, faces: np.ndarray) -> None:
    reference = TorchBackend(network).scramble(faces)
    output = OnnxRuntimeBackend(network, providers=["CUDAExecutionProvider"]).scramble(faces)
    assert within_tolerance(reference, output), describe(reference, output)


@pytest.mark.skipif(
    not (TENSORRT and CUDA),
    reason="the tensorrt Python package is not installed"
    if not TENSORRT
    else "TensorRT needs a CUDA GPU",
)
def test_tensorrt_matches_torch_caches_its_engine_and_refits_new_keys(
    network: ScramblerNetwork, faces: np.ndarray, tmp_path: Path
) -> None:
    from edge_agent.tensorrt_backend import TensorRTBackend

    reference = TorchBackend(network).scramble(faces)
    built = TensorRTBackend(network, tmp_path / "engines" / "fleet-1")
    assert built.origin == "built"
    output = built.scramble(faces)
    assert within_tolerance(reference, output), describe(reference, output)
    assert built.engine_path.stat().st_mode & 0o777 == 0o600
    assert TensorRTBackend(network, tmp_path / "engines" / "fleet-1").origin == "cached"
    other = self_learned(network.config, 1234, faces[:16])  # the next key, same architecture
    rotated = TensorRTBackend(other, tmp_path / "engines" / "fleet-2")
    assert rotated.origin in {"refitted", "built"}  # refit needs TensorRT >= 10
    expected = TorchBackend(other).scramble(faces)
    refitted = rotated.scramble(faces)
    assert within_tolerance(expected, refitted), describe(expected, refitted)


def test_empty_batches_and_wrong_input(network: ScramblerNetwork) -> None:
    for backend in (TorchBackend(network), OnnxRuntimeBackend(network)):
        assert backend.scramble(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 112, 112)
        with pytest.raises(ValueError, match="uint8"):
            backend.scramble(np.zeros((1, 112, 112, 3), np.float32))


def test_backend_choice() -> None:
    assert "torch" in available_backends()
    assert resolve("torch") == "torch"
    assert resolve("auto") == available_backends()[-1]
    if "tensorrt" not in available_backends():
        with pytest.raises(RuntimeError, match="not available here"):
            resolve("tensorrt")


def test_tolerance_is_tight_enough_to_catch_another_key(
    network: ScramblerNetwork, faces: np.ndarray
) -> None:
    reference = TorchBackend(network).scramble(faces)
    other = TorchBackend(ScramblerNetwork(network.config, 1234)).scramble(faces)
    assert not within_tolerance(reference, other)
    assert EQUIVALENCE.max_differing_fraction < 0.01
