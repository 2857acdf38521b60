"""The TensorRT scrambler backend: an engine built from the SN's ONNX graph, cached on disk.

An engine is specific to a GPU model and a TensorRT version, and it holds the key's weights,
so its file name carries all three: ``{gpu}-trt{version}-{architecture hash}-{key hash}.engine``
inside the key's own engine directory (deleted with the key on revocation, mode 0600).

Engines are built with the REFIT flag. A new key of the same architecture is therefore not
built from scratch when a sibling key's engine is cached for the same GPU and TensorRT: a
copy of that engine is refitted with the new key's weights (``OnnxParserRefitter``, TensorRT
10 and later), which takes a fraction of a build. Anything that fails along the way (a cache
file from another build, a refit TensorRT refuses) falls back to a full build.

Precision is FP32 with TF32 off, so the output stays within ``backends.EQUIVALENCE`` of the
other backends. Buffers live in torch CUDA tensors and run on torch's current stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from edge_agent.backends import to_uint8
from rllfpr.faces import pixels
from rllfpr.files import remove, write_private
from rllfpr.models.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from rllfpr.models.scrambler import ScramblerNetwork

log = logging.getLogger(__name__)

MAX_BATCH = 32
OPTIMAL_BATCH = 8
WORKSPACE_BYTES = 1 << 30


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self, network: ScramblerNetwork, engine_dir: Path, max_batch: int = MAX_BATCH
    ) -> None:
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise RuntimeError("the TensorRT backend needs a CUDA GPU")
        self._trt: Any = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.input_size = network.config.input_size
        self._channels = network.config.in_channels
        self.max_batch = max_batch
        onnx_model = export_onnx(network)
        architecture = json.dumps(
            {"sn": network.config.model_dump(mode="json"), "max_batch": max_batch},
            sort_keys=True,
        ).encode()
        self._prefix = (
            f"{_slug(torch.cuda.get_device_name())}-trt{_slug(trt.__version__)}-"
            f"{_short_hash(architecture)}"
        )
        self.engine_path = engine_dir / f"{self._prefix}-{_short_hash(onnx_model)}.engine"
        self.origin: Literal["cached", "refitted", "built"] = "cached"
        self._engine = self._load_or_make(onnx_model)
        self._context = self._engine.create_execution_context()

    def _load_or_make(self, onnx_model: bytes) -> Any:
        if self.engine_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is not None:
                return engine
            log.warning("discarding unusable cached engine %s", self.engine_path)
            remove(self.engine_path)
        serialized = self._refit_sibling(onnx_model)
        self.origin = "refitted"
        if serialized is None:
            serialized = self._build(onnx_model)
            self.origin = "built"
        write_private(self.engine_path, serialized)
        engine = self._runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise RuntimeError("TensorRT could not load the engine it just made")
        return engine

    def _refit_sibling(self, onnx_model: bytes) -> bytes | None:
        """A copy of another key's engine of this architecture, refitted with this key."""
        trt = self._trt
        if not hasattr(trt, "OnnxParserRefitter"):  # TensorRT < 10
            return None
        siblings = sorted(self.engine_path.parent.parent.glob(f"*/{self._prefix}-*.engine"))
        for sibling in siblings:
            engine = self._runtime.deserialize_cuda_engine(sibling.read_bytes())
            if engine is None or not engine.refittable:
                continue
            refitter = trt.Refitter(engine, self._logger)
            if (
                trt.OnnxParserRefitter(refitter, self._logger).refit_from_bytes(onnx_model)
                and refitter.refit_cuda_engine()
            ):
                log.info("refitted the engine of %s with the new key", sibling.parent.name)
                return bytes(engine.serialize())
            log.warning("TensorRT refused to refit %s; building instead", sibling)
        return None

    def _build(self, onnx_model: bytes) -> bytes:
        trt = self._trt
        log.info("building a TensorRT engine for the SN (first start with this key)")
        builder = trt.Builder(self._logger)
        explicit_batch = int(trt.__version__.split(".")[0]) < 10  # the default from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit_batch else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_model):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse the SN graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.set_flag(trt.BuilderFlag.REFIT)
        config.clear_flag(trt.BuilderFlag.TF32)
        shape = (self._channels, self.input_size, self.input_size)
        profile = builder.create_optimization_profile()
        optimal = min(OPTIMAL_BATCH, self.max_batch)
        profile.set_shape(INPUT_NAME, (1, *shape), (optimal, *shape), (self.max_batch, *shape))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the SN engine (see its log above)")
        return bytes(serialized)

    def scramble(self, faces: np.ndarray) -> np.ndarray:
        size = self.input_size
        if not len(faces):
            return np.zeros((0, size, size), np.uint8)
        chunks = []
        stream = torch.cuda.current_stream()
        for start in range(0, len(faces), self.max_batch):
            chunk = faces[start : start + self.max_batch]
            cuda = torch.device("cuda")
            inputs = pixels.faces_to_sn_input(chunk, self._channels, cuda).contiguous()
            outputs = torch.empty((len(chunk), 1, size, size), device="cuda")
            self._context.set_input_shape(INPUT_NAME, tuple(inputs.shape))
            self._context.set_tensor_address(INPUT_NAME, inputs.data_ptr())
            self._context.set_tensor_address(OUTPUT_NAME, outputs.data_ptr())
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the SN engine")
            stream.synchronize()
            chunks.append(to_uint8(outputs.cpu().numpy()))
        return np.concatenate(chunks)
