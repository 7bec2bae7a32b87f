"""Reading the QDQ form qdq-insert writes, for the target passes that rewrite it into the
kernels ONNX Runtime runs: which DequantizeLinear/QuantizeLinear a value comes from, with
constant parameters of a form the integer kernels take."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const

EIGHT_BIT = (ir.DataType.UINT8, ir.DataType.INT8)


def is_std(node: ir.Node | None, op_type: str) -> bool:
    """``node`` is the standard-domain ``op_type``."""
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Dequant:
    """One DequantizeLinear's parts: the quantized tensor, its scale and zero point values."""

    node: ir.Node
    quantized: ir.Value
    scale: ir.Value
    zero_point: ir.Value | None

    def params(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The scale and zero point arrays (constant by construction)."""
        s = _const(self.scale)
        assert s is not None
        return s, _const(self.zero_point) if self.zero_point is not None else None


def dequantize_of(value: ir.Value | None, per_column: int | None = None) -> Dequant | None:
    """The DequantizeLinear producing ``value`` when the integer kernels can take it: constant
    float32 scale (and zero point of its shape) per tensor, or, with ``per_column``, one per
    column of a 2-D ``per_column``-wide weight; an 8-bit input; no blocks. None otherwise."""
    dq = value.producer() if value is not None else None
    if dq is None or not is_std(dq, "DequantizeLinear") or len(dq.inputs) < 2:
        return None
    x, scale = dq.inputs[0], dq.inputs[1]
    zp = dq.inputs[2] if len(dq.inputs) > 2 else None
    sa = _const(scale)
    if x is None or scale is None or sa is None or sa.dtype != np.float32:
        return None
    if int(_attr(dq, "block_size", 0) or 0):  # type: ignore[arg-type]
        return None
    za = _const(zp) if zp is not None else None
    if zp is not None and (za is None or za.shape != sa.shape):
        return None
    if x.dtype not in EIGHT_BIT:
        return None
    if sa.size != 1:  # per column: of a 2-D weight, along its output axis
        if per_column is None or sa.shape != (per_column,):
            return None
        rank = len(x.shape) if x.shape is not None else 0
        if rank != 2 or int(_attr(dq, "axis", 1)) not in (1, -1):  # type: ignore[arg-type]
            return None
    return Dequant(dq, x, scale, zp)


@dataclasses.dataclass(frozen=True)
class Quant:
    """A per-tensor QuantizeLinear: its node, scale and zero point (scalars) and their type."""

    node: ir.Node
    scale: float
    zero_point: int
    dtype: np.dtype


def per_tensor_quantize(node: ir.Node) -> Quant | None:
    """``node`` as a per-tensor QuantizeLinear with constant float32 scale and an 8-bit zero
    point, None otherwise."""
    if not is_std(node, "QuantizeLinear") or len(node.inputs) < 3:
        return None
    s, z = _const(node.inputs[1]), _const(node.inputs[2])
    if s is None or z is None or s.size != 1 or z.size != 1 or s.dtype != np.float32:
        return None
    if z.dtype not in (np.uint8, np.int8) or int(_attr(node, "block_size", 0) or 0):  # type: ignore[arg-type]
        return None
    return Quant(node, float(s.reshape(())), int(z.reshape(())), z.dtype)
