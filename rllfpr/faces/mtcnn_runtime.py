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

from rllfpr.files import write_private
from rllfpr.runtimes import ort_session_options

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


def onnx_files(cache: Path | None = None, again: bool = False) -> dict[str, Path]:
    """The three networks' ONNX files in ``cache``/mtcnn, exported on first use (and
    ``again`` when a cached file would not load)."""
    networks = _networks()
    directory = (cache or default_cache()) / "mtcnn"
    tag = weights_hash(networks)
    paths = {name: directory / f"{name}-{tag}.onnx" for name in NAMES}
    for name, path in paths.items():
        if again or not path.is_file():
            log.info("exporting MTCNN's %s to %s", name, path)
            write_private(path, _export(name, networks[name]))
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

        def sessions(paths: dict[str, Path]) -> dict[str, Any]:
            return {
                name: ort.InferenceSession(str(path), options, providers=providers)
                for name, path in paths.items()
            }

        try:
            self.sessions = sessions(onnx_files(cache))
        except Exception as error:  # onnxruntime's errors derive from Exception only
            log.warning("MTCNN's cached ONNX files do not load (%s): exporting them again", error)
            self.sessions = sessions(onnx_files(cache, again=True))
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
MAX_CROPS = 256  # R-Net and O-Net crops per engine call (more run in chunks)
MAX_IMAGES = 8  # images per P-Net engine call (more run in chunks)
PNET_STEP = 64  # P-Net profiles cover heights and widths rounded up to this
WORKSPACE_BYTES = 1 << 30
Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min, optimum, max


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


class _Engine:
    """One network as a TensorRT engine with one optimization profile, cached beside its ONNX
    file as ``engines/{network}-{weights}-{gpu}-trt{version}-{profile}.engine``."""

    def __init__(
        self, trt: Any, runtime: Any, logger: Any, name: str, onnx: Path, shapes: Shapes
    ) -> None:
        self.name, self.max_shape = name, shapes[2]
        self._trt = trt
        profile = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:8]
        gpu, version = _slug(torch.cuda.get_device_name()), _slug(trt.__version__)
        self.path = onnx.parent / "engines" / f"{onnx.stem}-{gpu}-trt{version}-{profile}.engine"
        engine = None
        if self.path.is_file():
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                log.warning("rebuilding the unusable cached engine %s", self.path)
        if engine is None:
            serialized = self._build(logger, onnx.read_bytes(), shapes)
            write_private(self.path, serialized)
            engine = runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise RuntimeError(f"TensorRT could not load the engine it just built: {self.path}")
        self._engine = engine
        self._context = engine.create_execution_context()

    def _build(self, logger: Any, onnx_model: bytes, shapes: Shapes) -> bytes:
        trt = self._trt
        log.info("building the TensorRT engine %s (once per GPU and profile)", self.path.name)
        builder = trt.Builder(logger)
        explicit_batch = int(trt.__version__.split(".")[0]) < 10  # the default from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit_batch else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_model):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse MTCNN's {self.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32: the same faces as the CPU
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT, *shapes)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build MTCNN's {self.name} (see its log)")
        return bytes(serialized)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The network's outputs, in ``OUTPUTS`` order, for at most ``max_shape`` images."""
        inputs = torch.from_numpy(np.ascontiguousarray(images)).cuda()
        self._context.set_input_shape(INPUT, tuple(inputs.shape))
        self._context.set_tensor_address(INPUT, inputs.data_ptr())
        outputs = []
        for name in OUTPUTS[self.name]:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs.append(torch.empty(shape, dtype=torch.float32, device="cuda"))
            self._context.set_tensor_address(name, outputs[-1].data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run MTCNN's {self.name}")
        stream.synchronize()
        return [output.cpu().numpy() for output in outputs]

    def run_chunks(self, images: np.ndarray) -> list[np.ndarray]:
        step = self.max_shape[0]
        chunks = [self.run(images[i : i + step]) for i in range(0, len(images), step)]
        if len(chunks) == 1:
            return chunks[0]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


class TensorRTNetworks:
    """The ONNX files as TensorRT engines on the GPU (TensorRT 8.5 or later, as the SN's).
    R-Net's and O-Net's engines take up to ``MAX_CROPS`` crops a call; P-Net's covers
    ``MAX_IMAGES`` images up to the largest pyramid level seen so far, rounded up to
    ``PNET_STEP`` pixels (the first level of the first frames, so in practice one engine
    per camera resolution); a larger image builds, once, an engine with a larger profile."""

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
                ((1, 3, size, size), (MAX_CROPS // 4, 3, size, size), (MAX_CROPS, 3, size, size)),
            )
            for name, size in CROP_SIZES.items()
        }
        self._pnet: _Engine | None = None

    def _engine(self, name: str, shapes: Shapes) -> _Engine:
        return _Engine(self._trt, self._runtime, self._logger, name, self._paths[name], shapes)

    def pnet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = images.shape[2:]
        engine = self._pnet
        if engine is None or height > engine.max_shape[2] or width > engine.max_shape[3]:
            covered = engine.max_shape[2:] if engine is not None else (0, 0)
            top = (
                MAX_IMAGES,
                3,
                max(covered[0], -(-height // PNET_STEP) * PNET_STEP),
                max(covered[1], -(-width // PNET_STEP) * PNET_STEP),
            )
            engine = self._pnet = self._engine("pnet", ((1, 3, 12, 12), top, top))
        regression, probability = engine.run_chunks(images)
        return regression, probability

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, probability = self._crops["rnet"].run_chunks(crops)
        return regression, probability

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        regression, landmarks, probability = self._crops["onet"].run_chunks(crops)
        return regression, landmarks, probability
