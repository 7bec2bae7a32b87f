"""qdq-insert: static post-training int8 quantization in QDQ form for Conv, Gemm and MatMul.

For every target node (``Conv``, ``Gemm``, or ``MatMul`` whose second input is a constant
float weight):

* its activation input gets a per-tensor ``QuantizeLinear -> DequantizeLinear`` pair whose
  scale and zero point come from calibration (one streamed ONNX Runtime run over the DATA via
  :func:`graphopt.calib.collect_stats`, then :func:`graphopt.calib.compute_ranges`). uint8
  activations are asymmetric with an integer zero point in [0, 255] so that 0.0 is exactly
  representable; int8 activations are symmetric (zero point 0). Several targets reading the
  same tensor share one pair;
* its weight becomes an int8 initializer (symmetric, clamped to [-127, 127]) followed by a
  ``DequantizeLinear``, per output channel (Conv axis 0, Gemm axis 0 with transB else 1,
  MatMul ``[K, N]`` axis 1) or per tensor;
* a Conv/Gemm bias stays float (TODO: int32 bias with scale = s_x * s_w).

Per-axis DequantizeLinear needs ai.onnx opset 13; older models are left alone (stat
``skipped:opset``). A node whose inputs already come from DequantizeLinear is skipped, so a
second run changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import onnx_ir as ir

from graphopt.calib import collect_stats, compute_ranges
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const

_MIN_OPSET = 13
_FLOAT = frozenset({ir.DataType.FLOAT})  # TODO: float16 models (scales in float16)


@dataclasses.dataclass(frozen=True)
class InsertQdqOptions:
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = option(
        "minmax", "how activation ranges are chosen from the calibration histogram"
    )
    per_channel: bool = option(True, "quantize weights per output channel (else per tensor)")
    activation_type: Literal["uint8", "int8"] = option(
        "uint8", "activation type: uint8 (asymmetric) or int8 (symmetric)"
    )
    op_types: list[str] = option(["Conv", "Gemm", "MatMul"], "op types to quantize")
    exclude: list[str] = option([], "node names kept in float")
    bins: int = option(2048, "histogram bins per calibrated tensor")
    reduce_range: bool = option(
        False, "7-bit weights in [-63, 63]: no u8s8 overflow on x86 CPUs without VNNI"
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.op_types) - {"Conv", "Gemm", "MatMul"})
        if unknown:
            raise ValueError(
                f"op_types: cannot quantize {', '.join(unknown)} (supported: Conv, Gemm, MatMul)"
            )
        if self.bins < 1:
            raise ValueError(f"bins must be at least 1, got {self.bins}")


def _from_dq(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def activation_qparams(lo: float, hi: float, activation_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point uint8/int8) of a per-tensor range containing 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if activation_type == "int8":
        t = max(-lo, hi)
        scale = t / 127.0 if t > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zp, np.uint8)


def quantize_weight(
    w: np.ndarray, axis: int | None, qmax: int = 127
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 (q, scale) in [-qmax, qmax]: per ``axis`` or per tensor (``axis`` None)."""
    w64 = w.astype(np.float64)
    if axis is None:
        amax = np.array(np.max(np.abs(w64)) if w64.size else 0.0)
        shaped = amax
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w64), axis=others) if w64.size else np.zeros(w.shape[axis])
        shaped = amax.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    s = np.where(shaped > 0, shaped / qmax, 1.0).astype(np.float32).astype(np.float64)
    q = np.clip(np.rint(w64 / s), -qmax, qmax).astype(np.int8)
    return q, scale


@register_pass
class InsertQdqPass(GraphoptPass):
    name = "qdq-insert"
    Options = InsertQdqOptions
    # Quantization is lossy by design: an int8 rounding error of up to half a step per value
    # can move single elements arbitrarily far in relative terms (outputs near 0), so
    # elementwise bounds are off; what must hold is that the outputs keep their direction.
    # A cosine of 0.99 catches a broken scale, zero point, axis or layout (those give cosines
    # far below), while calibrated int8 on a trained net lands at 0.999+.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.99)
    needs = frozenset({"data"})
    summary = "static int8 QDQ quantization of Conv/Gemm/MatMul (calibrated on DATA)"

    def run(self, model: ir.Model) -> bool:
        opts = self.options
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        graph = model.graph
        targets = [n for n in graph if self._is_target(n)]
        if not targets:
            return False
        if opset < _MIN_OPSET:
            self.count("skipped:opset", len(targets))
            return False
        samples = self.context.data
        if samples is None:
            raise DataError("qdq-insert needs calibration data (DATA)")
        names = list(dict.fromkeys(n.inputs[0].name for n in targets))  # type: ignore[union-attr]
        stats = collect_stats(model, samples, tensors=names, bins=opts.bins, progress=False)
        ranges = compute_ranges(stats, opts.calibration, symmetric=opts.activation_type == "int8")
        self._taken = (
            set(graph.initializers)
            | {v.name for n in graph for v in n.outputs if v.name}
            | {v.name for v in graph.inputs if v.name}
        )
        dq_of: dict[str, ir.Value] = {}
        wdq_of: dict[tuple[int, int | None], ir.Value] = {}
        for node in targets:
            x = node.inputs[0]
            assert x is not None and x.name is not None
            if x.name not in ranges:  # not a float tensor at run time
                self.count("skipped:activation_type")
                continue
            if x.name not in dq_of:
                dq_of[x.name] = self._insert_activation_qdq(graph, node, x, ranges[x.name])
            w = node.inputs[1]
            assert w is not None
            axis = self._weight_axis(node) if opts.per_channel else None
            key = (id(w), axis)
            if key not in wdq_of:
                wdq_of[key] = self._insert_weight_dq(graph, node, w, axis)
            node.replace_input_with(0, dq_of[x.name])
            node.replace_input_with(1, wdq_of[key])
            if not w.uses() and not w.is_graph_output() and w.name in graph.initializers:
                graph.initializers.pop(w.name)
            self.count(f"quantized:{node.op_type}")
        return bool(dq_of)

    # ----------------------------------------------------------------- matching
    def _is_target(self, node: ir.Node) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type not in self.options.op_types:
            return False
        if node.name and node.name in self.options.exclude:
            return False
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return False
        x, w = node.inputs[0], node.inputs[1]
        if _from_dq(x) or _from_dq(w):
            return False  # already quantized (idempotence)
        if not x.name or _const(x) is not None or (x.dtype is not None and x.dtype not in _FLOAT):
            return False
        wa = _const(w)
        if wa is None or wa.dtype != np.float32:
            return False
        if node.op_type in ("Gemm", "MatMul") and wa.ndim != 2:
            return False
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            return False  # TODO: transposed activations
        return not (node.op_type == "Conv" and wa.ndim < 3)

    @staticmethod
    def _weight_axis(node: ir.Node) -> int:
        if node.op_type == "Conv":
            return 0
        if node.op_type == "Gemm":
            return 0 if _attr(node, "transB", 0) else 1
        return 1  # MatMul, W is [K, N]

    # ----------------------------------------------------------------- rewriting
    def _name(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    def _initializer(self, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
        name = self._name(base)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape = ir.Shape(array.shape)
        value.dtype = ir.DataType.from_numpy(array.dtype)
        graph.register_initializer(value)
        return value

    def _insert_activation_qdq(
        self, graph: ir.Graph, first: ir.Node, x: ir.Value, rng: tuple[float, float]
    ) -> ir.Value:
        assert x.name is not None
        scale, zp = activation_qparams(rng[0], rng[1], self.options.activation_type)
        s = self._initializer(graph, f"{x.name}_scale", scale)
        z = self._initializer(graph, f"{x.name}_zero_point", zp)
        q = self.mark(
            ir.Node("", "QuantizeLinear", [x, s, z], name=self._name(f"{x.name}_QuantizeLinear"))
        )
        q.outputs[0].name = self._name(f"{x.name}_quantized")
        q.outputs[0].dtype = ir.DataType.from_numpy(zp.dtype)
        q.outputs[0].shape = x.shape
        dq = self.mark(
            ir.Node(
                "",
                "DequantizeLinear",
                [q.outputs[0], s, z],
                name=self._name(f"{x.name}_DequantizeLinear"),
            )
        )
        dq.outputs[0].name = self._name(f"{x.name}_dequantized")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = x.shape
        graph.insert_before(first, [q, dq])
        self.count("qdq_pairs")
        return dq.outputs[0]

    def _insert_weight_dq(
        self, graph: ir.Graph, first: ir.Node, w: ir.Value, axis: int | None
    ) -> ir.Value:
        wa = _const(w)
        assert wa is not None
        base = w.name or "weight"
        q, scale = quantize_weight(wa, axis, 63 if self.options.reduce_range else 127)
        qv = self._initializer(graph, f"{base}_quantized", q)
        sv = self._initializer(graph, f"{base}_scale", scale)
        zv = self._initializer(graph, f"{base}_zero_point", np.zeros(scale.shape, np.int8))
        attrs = [] if axis is None else [ir.AttrInt64("axis", axis)]
        dq = self.mark(
            ir.Node(
                "",
                "DequantizeLinear",
                [qv, sv, zv],
                attributes=attrs,
                name=self._name(f"{base}_DequantizeLinear"),
            )
        )
        dq.outputs[0].name = self._name(f"{base}_dequantized")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(wa.shape)
        graph.insert_before(first, [dq])
        self.count("weights_quantized")
        return dq.outputs[0]
