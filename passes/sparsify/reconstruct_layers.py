"""A layer ``reconstruct`` refits, as the fit sees it, and how its weights and bias are read.

The fit works on a weight as ``[outputs, inputs]`` rows (a Conv's kernel taps unrolled, a
Gemm's alpha folded in) and on a float bias, whether the model stores them as float
constants, as integers behind a DequantizeLinear (after ``qdq-insert``), or, for a MatMul,
as the constant of the ``Add`` that follows it. :class:`Layer` holds that view of one layer
for one run, with what the fit accumulates for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.ir import attr_value, const_array

#: Node metadata: hash of the weights ``reconstruct`` wrote (a second run finds nothing to do).
RECONSTRUCT_KEY = "pkg.graphopt.reconstructed"


@dataclasses.dataclass
class Layer:
    node: ir.Node
    x_cur: str  # input name in the current model
    x_ref: str  # input name in the original model
    y_ref: str  # output (after a MatMul's bias Add) name in the original model
    y_cur: str  # the same output in the current model
    out_kept: np.ndarray | None  # original output channels this layer still computes
    w: np.ndarray  # current weight as [O, K] (Conv: K = C/group * taps)
    b: np.ndarray | None  # current bias [O]
    w_ref: np.ndarray  # original weight as [O_ref, K_ref]
    b_ref: np.ndarray | None
    method: str = "output"
    mask: np.ndarray | None = None  # [O, K] True where a weight may be non-zero
    bias_add: ir.Node | None = None  # MatMul's bias Add
    stage: int = 0
    # accumulators
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    rows: dict[int, Any] = dataclasses.field(default_factory=dict)  # feed -> sampled positions
    targets: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # feed -> rows
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.node.name or self.node.op_type

    @property
    def group(self) -> int:
        if self.node.op_type != "Conv":
            return 1
        return int(attr_value(self.node, "group", 1))  # type: ignore[arg-type]


def as_rows(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """The weight as [outputs, inputs] (a Gemm's alpha folded in)."""
    op = node.op_type
    if op == "Conv":
        return w.reshape(w.shape[0], -1).astype(np.float64)
    if op == "Gemm":
        alpha = float(attr_value(node, "alpha", 1.0))  # type: ignore[arg-type]
        m = w if attr_value(node, "transB", 0) else w.T
        return m.astype(np.float64) * alpha
    return w.T.astype(np.float64)


def from_rows(node: ir.Node, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    op = node.op_type
    if op == "Conv":
        return rows.reshape(shape).astype(np.float32)
    if op == "Gemm":
        alpha = float(attr_value(node, "alpha", 1.0))  # type: ignore[arg-type]
        m = rows / alpha
        return (m if attr_value(node, "transB", 0) else m.T).astype(np.float32)
    return rows.T.astype(np.float32)


def weight_hash(w: np.ndarray, b: np.ndarray | None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(w, np.float32).tobytes())
    if b is not None:
        h.update(np.ascontiguousarray(b, np.float32).tobytes())
    return h.hexdigest()[:16]


def dq_of(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear of constants that computes ``value``, if that is what it is."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    if any(v is not None and const_array(v) is None for v in node.inputs):
        return None
    return node


def read_value(value: ir.Value | None) -> np.ndarray | None:
    """A constant's data, or a DequantizeLinear of constants evaluated in float64."""
    a = const_array(value)
    if a is not None:
        return a
    dq = dq_of(value)
    if dq is None:
        return None
    q = const_array(dq.inputs[0]).astype(np.float64)  # type: ignore[union-attr]
    scale = const_array(dq.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
    zp = const_array(dq.inputs[2]) if len(dq.inputs) > 2 else None
    zp = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
    if scale.ndim == 1 and scale.size > 1 and q.ndim > 1:  # per axis
        shape = [1] * q.ndim
        shape[int(attr_value(dq, "axis", 1)) % q.ndim] = scale.size  # type: ignore[call-overload]
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def bias_of(node: ir.Node, bias_add: ir.Node | None, n: int) -> np.ndarray | None:
    """The layer's bias as a float64 [n] (Gemm: times beta), None where it has none."""
    if node.op_type in ("Conv", "Gemm"):
        c = read_value(node.inputs[2]) if len(node.inputs) > 2 else None
        if c is None:
            return None
        beta = float(attr_value(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0  # type: ignore[arg-type]
        return np.broadcast_to(c.astype(np.float64).ravel(), (n,)) * beta
    if bias_add is None:
        return None
    value = next(v for v in bias_add.inputs if v is not node.outputs[0])
    c = read_value(value)
    return None if c is None else c.astype(np.float64).ravel()


def find_bias_add(node: ir.Node, n: int) -> tuple[ir.Node, int] | None:
    """A MatMul's only consumer when it is ``Add(y, constant [n])``: (Add node, bias index)."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    add, idx = uses[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = 1 - idx
    c = read_value(add.inputs[other])
    if c is None or c.size != n or c.shape[-1] != n:
        return None
    return add, other
