"""Sets of ONNX operators the passes reason about, and questions about one value, in one place.

Each set answers one question; passes combine them instead of writing their own lists.
"""

from __future__ import annotations

import onnx_ir as ir

#: ops with a weight operand: the layers quantization, pruning and reconstruction act on
WEIGHTED = frozenset({"Conv", "Gemm", "MatMul"})

#: the Q/DQ pair of static quantization
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})

#: ops that pick or rearrange elements without computing new values. A quantized tensor keeps
#: its scale through them, and ONNX Runtime runs them on int8 data without a DQ/Q around them.
SCALE_PRESERVING = frozenset(
    {
        "MaxPool",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Slice",
        "Resize",
        "Expand",
        "Tile",
        "Gather",
    }
)

#: ops with no arithmetic of their own (so no numerical sensitivity of their own): they move,
#: pick, join, split or describe data.
NO_ARITHMETIC = (SCALE_PRESERVING - {"Resize"}) | frozenset(
    {"Concat", "Split", "Identity", "Shape", "Cast", "Constant", "ConstantOfShape"}
)

#: ops of a model some quantizer already made integer (ORT's dynamic quantizer, QOperator)
INTEGER_OPS = frozenset(
    {
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
    }
)


def is_dequantized(value: ir.Value | None) -> bool:
    """Whether ``value`` is the output of a DequantizeLinear (a Q/DQ pass already acted)."""
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"
