"""MTCNN's networks as ONNX, run by ONNX Runtime or TensorRT (or eager torch, to compare).

The three networks are facenet-pytorch's, with their weights. They are exported once per
weights (the file names carry a hash of them and of the export settings) into a cache
directory, written atomically, so concurrent processes share one copy. P-Net is fully
convolutional with a dynamic batch, height and width; R-Net and O-Net have a dynamic batch.
Each graph returns what ``rllfpr.faces.mtcnn.Networks`` expects: the face probability
rather than both softmax outputs.

ONNX Runtime sessions never busy-wait: idle intra-op threads sleep
(``session.intra_op.allow_spinning = 0``) instead of spinning against the agent's other
threads on a small machine; ``docs/results/bench-agent.md`` has the measurement. TensorRT
engines are built on the device from the same ONNX files, FP32 with TF32 off, and cached
beside them under a name carrying the GPU, the TensorRT version and the profile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rllfpr.runtimes import ort_session_options, write_atomically

log = logging.getLogger(__name__)

OPSET = 13  # the newest that TensorRT 8.4 (JetPack 5) parses, as for the SN
EXPORT_VERSION = 1  # bump when the exported graphs change
NAMES = ("pnet", "rnet", "onet")
INPUT = "images"
OUTPUTS = {
    "pnet": ("regression", "probability"),
    "rnet": ("regression", "probability"),
    "onet": ("regression", "landmarks", "probability"),
}
CROP_SIZES = {"rnet": 24, "onet": 48}


def default_cache() -> Path:
    return Path(os.environ.get("RLLFPR_CACHE", "~/.cache/rllfpr")).expanduser()


def _networks() -> dict[str, nn.Module]:
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    return {"pnet": PNet().eval(), "rnet": RNet().eval(), "onet": ONet().eval()}


def weights_hash(networks: dict[str, nn.Module]) -> str:
    """A hash of the three networks' weights and of how they are exported."""
    digest = hashlib.sha256(f"opset{OPSET}-v{EXPORT_VERSION}".encode())
    for name in NAMES:
        for key, tensor in sorted(networks[name].state_dict().items()):
            digest.update(f"{name}.{key}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _FaceProbability(nn.Module):
    """A facenet-pytorch network whose last output keeps only the face class."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *rest, probability = self.network(images)
        return (*rest, probability[:, 1])


_EXPORT_LOCK = threading.Lock()  # torch.onnx.export keeps global state


def _export(name: str, network: nn.Module) -> bytes:
    size = CROP_SIZES.get(name, 12)
    axes = {0: "batch"} if name != "pnet" else {0: "batch", 2: "height", 3: "width"}
    dynamic = {INPUT: axes, **{output: {0: "batch"} for output in OUTPUTS[name]}}
    if name == "pnet":
        dynamic.update({"regression": axes, "probability": {0: "batch", 1: "h", 2: "w"}})
    with _EXPORT_LOCK, tempfile.TemporaryDirectory() as workdir, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        target = Path(workdir) / f"{name}.onnx"
        torch.onnx.export(
            _FaceProbability(network).eval(),
            (torch.zeros(1, 3, size, size),),
            target,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=list(OUTPUTS[name]),
            dynamic_axes=dynamic,
        )
        return target.read_bytes()


def onnx_files(cache: Path | None = None) -> dict[str, Path]:
    """The three networks' ONNX files in ``cache``/mtcnn, exported on first use."""
    networks = _networks()
    directory = (cache or default_cache()) / "mtcnn"
    tag = weights_hash(networks)
    paths = {name: directory / f"{name}-{tag}.onnx" for name in NAMES}
    for name, path in paths.items():
        if not path.is_file():
            log.info("exporting MTCNN's %s to %s", name, path)
            write_atomically(path, _export(name, networks[name]))
    return paths


# ----- runtimes
class TorchNetworks:
    """The networks in eager torch (what the ONNX files are checked against)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self._networks = {
            name: _FaceProbability(network).to(self.device) for name, network in _networks().items()
        }

    def _run(self, name: str, images: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            outputs = self._networks[name](torch.from_numpy(images).to(self.device))
        return tuple(output.cpu().numpy() for output in outputs)

    def pnet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, probability = self._run("pnet", images)
        return regression, probability

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, probability = self._run("rnet", crops)
        return regression, probability

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        regression, landmarks, probability = self._run("onet", crops)
        return regression, landmarks, probability


# R-Net and O-Net crops per ONNX Runtime call on the CPU: small calls keep the activations in
# the core's cache. CPU time per crop, one thread (2-core Xeon, AVX-512): O-Net 0.48 ms in
# calls of 16 against 0.62 ms for 144 crops at once, R-Net 0.093 ms in calls of 16-64
# against 0.123 ms for 384 at once. P-Net gets every frame of a pyramid level at once.
CPU_CROPS_PER_CALL = {"rnet": 32, "onet": 16}


class OnnxRuntimeNetworks:
    """The ONNX files in ONNX Runtime: the CPU, or CUDA when ``device`` is ``cuda`` and the
    installed ONNX Runtime has the CUDA provider."""

    def __init__(
        self,
        cache: Path | None = None,
        threads: int = 0,
        device: str = "cpu",
        spinning: bool = False,
    ) -> None:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "MTCNN on ONNX Runtime CUDA needs onnxruntime-gpu (this ONNX Runtime has "
                    f"{', '.join(ort.get_available_providers())})"
                )
            providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
        options = ort_session_options(threads, spinning)
        self.sessions = {
            name: ort.InferenceSession(str(path), options, providers=providers)
            for name, path in onnx_files(cache).items()
        }
        self._per_call = CPU_CROPS_PER_CALL if device == "cpu" else {}

    def _run(self, name: str, images: np.ndarray) -> list[np.ndarray]:
        step = self._per_call.get(name) or len(images)
        chunks = [
            self.sessions[name].run(None, {INPUT: images[start : start + step]})
            for start in range(0, len(images), step)
        ]
        if len(chunks) == 1:
            return list(chunks[0])
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def pnet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, probability = self._run("pnet", images)
        return regression, probability

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, probability = self._run("rnet", crops)
        return regression, probability

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        regression, landmarks, probability = self._run("onet", crops)
        return regression, landmarks, probability


# ----- TensorRT
MAX_CROPS = 256  # R-Net and O-Net crops per engine call (more are run in chunks)
MAX_IMAGES = 8  # images per P-Net engine call (more are run in chunks)
WORKSPACE_BYTES = 1 << 30


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


class _Engine:
    """One TensorRT engine with one optimization profile, cached on disk."""

    def __init__(
        self,
        trt: Any,
        runtime: Any,
        logger: Any,
        onnx_path: Path,
        shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    ) -> None:
        self._trt = trt
        profile = json.dumps({"min_opt_max": shapes}).encode()
        tag = hashlib.sha256(onnx_path.read_bytes() + profile).hexdigest()[:16]
        gpu = _slug(torch.cuda.get_device_name())
        self.path = onnx_path.parent / "engines" / f"{gpu}-trt{_slug(trt.__version__)}-{tag}"
        self.path = self.path.with_name(f"{onnx_path.stem}-{self.path.name}.engine")
        self.max_shape = shapes[2]
        engine = None
        if self.path.is_file():
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                log.warning("rebuilding the unusable cached engine %s", self.path)
        if engine is None:
            serialized = self._build(logger, onnx_path.read_bytes(), shapes)
            write_atomically(self.path, serialized)
            engine = runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise RuntimeError(f"TensorRT could not load the engine it just built: {self.path}")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._outputs = [
            name
            for name in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT
        ]

    def _build(
        self,
        logger: Any,
        onnx_model: bytes,
        shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    ) -> bytes:
        trt = self._trt
        log.info("building a TensorRT engine for %s (first start on this GPU)", self.path.name)
        builder = trt.Builder(logger)
        explicit_batch = int(trt.__version__.split(".")[0]) < 10  # the default from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit_batch else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_model):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {self.path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.clear_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT, *shapes)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {self.path.name} (see its log)")
        return bytes(serialized)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        inputs = torch.from_numpy(np.ascontiguousarray(images)).cuda()
        self._context.set_input_shape(INPUT, tuple(inputs.shape))
        self._context.set_tensor_address(INPUT, inputs.data_ptr())
        outputs = []
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            output = torch.empty(shape, dtype=torch.float32, device="cuda")
            self._context.set_tensor_address(name, output.data_ptr())
            outputs.append((name, output))
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path.name}")
        stream.synchronize()
        by_name = {name: output.cpu().numpy() for name, output in outputs}
        return [by_name[name] for name in OUTPUTS[self.path.name.split("-")[0]]]


class TensorRTNetworks:
    """The ONNX files as TensorRT engines on the GPU. P-Net's engine covers images up to the
    largest pyramid level seen (rounded up to 64 pixels); a larger one builds, once, an
    engine with a larger profile."""

    def __init__(self, cache: Path | None = None) -> None:
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise RuntimeError("the TensorRT MTCNN needs a CUDA GPU")
        self._trt: Any = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._paths = onnx_files(cache)
        self._crops = {
            name: self._engine(
                name,
                (1, 3, size, size),
                (MAX_CROPS // 4, 3, size, size),
                (MAX_CROPS, 3, size, size),
            )
            for name, size in CROP_SIZES.items()
        }
        self._pnet: _Engine | None = None

    def _engine(self, name: str, *shapes: tuple[int, ...]) -> _Engine:
        minimum, optimum, maximum = shapes
        return _Engine(
            self._trt, self._runtime, self._logger, self._paths[name], (minimum, optimum, maximum)
        )

    def pnet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = images.shape[2:]
        engine = self._pnet
        if engine is None or height > engine.max_shape[2] or width > engine.max_shape[3]:
            top = (MAX_IMAGES, 3, -(-height // 64) * 64, -(-width // 64) * 64)
            if engine is not None:
                top = (
                    MAX_IMAGES,
                    3,
                    max(top[2], engine.max_shape[2]),
                    max(top[3], engine.max_shape[3]),
                )
            engine = self._pnet = self._engine("pnet", (1, 3, 12, 12), top, top)
        chunks = [engine.run(images[i : i + MAX_IMAGES]) for i in range(0, len(images), MAX_IMAGES)]
        regression, probability = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
        return regression, probability

    def _crops_run(self, name: str, crops: np.ndarray) -> list[np.ndarray]:
        engine = self._crops[name]
        chunks = [engine.run(crops[i : i + MAX_CROPS]) for i in range(0, len(crops), MAX_CROPS)]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, probability = self._crops_run("rnet", crops)
        return regression, probability

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        regression, landmarks, probability = self._crops_run("onet", crops)
        return regression, landmarks, probability
