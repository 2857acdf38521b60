"""ONNX export of the SN, the graph that ONNX Runtime and TensorRT run on the edge.

The exported graph computes ``to_pixels(sn(faces))``: grey levels 0..255 as float32 (the cast
to uint8 happens in the backend), so every backend produces the same wire pixels.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from rllfpr.models.scrambler import ScramblerNetwork

# ONNX opset 13 is the newest that TensorRT 8.4 (JetPack 5) parses; TensorRT 10 parses 9-20.
OPSET = 13
INPUT_NAME = "faces"
OUTPUT_NAME = "pixels"

# Operators that onnx-tensorrt marks supported ("Y") for TensorRT 8.4, docs/operators.md.
# Our oldest target; TensorRT 10.x supports a superset. Notably absent: MaxUnpool, OneHot,
# and MaxPool's indices output.
_OPERATORS_TEXT = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomUniform RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
"""
TENSORRT_8_4_OPERATORS = frozenset(_OPERATORS_TEXT.split())


class _WirePixels(nn.Module):
    def __init__(self, network: ScramblerNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.network.to_pixels(self.network(faces))


_EXPORT_LOCK = threading.Lock()


def export_onnx(network: ScramblerNetwork, path: Path | None = None) -> bytes:
    """Export with a dynamic batch dimension; returns the model bytes (and writes ``path``)."""
    size = network.config.input_size
    example = torch.zeros(1, network.config.in_channels, size, size)
    # torch.onnx.export keeps global state: two agents of one process that switch keys at the
    # same moment would collide ("GLOBALS.in_onnx_export must be False").
    with _EXPORT_LOCK, tempfile.TemporaryDirectory() as workdir, warnings.catch_warnings():
        target = Path(workdir) / "scrambler.onnx"
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            _WirePixels(network).eval(),
            (example,),
            target,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        data = target.read_bytes()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def unsupported_operators(model_bytes: bytes) -> set[str]:
    """Operators of the model that TensorRT 8.4's ONNX parser does not support."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    return {node.op_type for node in model.graph.node} - TENSORRT_8_4_OPERATORS
