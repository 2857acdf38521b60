"""Which inference runtimes this machine has, and how ONNX Runtime sessions are configured.

Shared by the face detector (``rllfpr.faces``) and the edge agent's scrambler backends.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnxruntime_cuda() -> bool:
    """Whether the installed ONNX Runtime has the CUDA provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def ort_session_options(threads: int = 0, spinning: bool = False) -> Any:
    """ONNX Runtime session options for a small machine that runs other threads too.

    ``threads`` intra-op threads (0: ONNX Runtime's default, one per physical core), one
    inter-op thread with sequential execution (the graphs are chains), every graph
    optimization, and idle threads that sleep rather than spin unless ``spinning``: a
    spinning pool takes a core from the agent's frame reader and MQTT threads between calls
    (``docs/results/bench-agent.md`` measures both)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
