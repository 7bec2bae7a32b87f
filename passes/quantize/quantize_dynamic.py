"""quantize-dynamic: dynamic int8 quantization of MatMul/Gemm with constant float weights.

Each target becomes one ``com.microsoft.DynamicQuantizeMatMul(A, B, b_scale, b_zero_point,
bias)``, the kernel ONNX Runtime CPU runs fastest for this scheme: the weight ``B`` [K, N] is
stored as int8 (symmetric, zero point 0, clamped to [-127, 127], or [-63, 63] with
``reduce_range``), with one scale per output column (``b_scale`` of shape [N]) or one per
tensor; the float activation ``A`` is quantized to uint8 at run time, per tensor, by the kernel
itself. No calibration data is needed.

Targets:

* ``MatMul`` whose input 1 is a 2-D float32 initializer (``A`` may have any rank);
* ``Gemm`` with ``transA=0`` and a float32 initializer ``B``: ``transB`` is handled by
  transposing the constant weight, ``alpha`` is folded into the weight and ``beta`` into the
  bias, and a constant ``C`` that broadcasts along rows ([N], [1, N], [1] or a scalar) becomes
  the 1-D ``bias``. A ``C`` that varies per row or is computed at run time is skipped.

Targets inside If/Loop/Scan bodies are rewritten too (the kernel needs no calibration): a
quantized weight lives in the scope that held the float one, so a weight that both branches
of an If read is quantized once; the report's ``subgraphs`` counts the rewrites per body.

Skipped nodes are counted per reason (``skipped:<reason>``). The rewritten nodes are gone
from the graph, so a second run finds nothing to do (``modified=False``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from graphopt import ir as gir
from graphopt.core.build import (
    MS_DOMAIN,
    Namer,
    add_initializer,
    drop_if_unused,
    ensure_ms_opset,
    replace_node,
)
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const
from graphopt.ir import float_weight

_OP_TYPES = ("MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class QuantizeDynamicOptions:
    op_types: list[str] = option(list(_OP_TYPES), "op types to quantize (MatMul, Gemm)")
    exclude: list[str] = option([], "node names kept in float")
    per_channel: bool = option(True, "one weight scale per output column (else per tensor)")
    reduce_range: bool = option(
        False, "7-bit weights in [-63, 63]: no u8s8 overflow on x86 CPUs without VNNI"
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.op_types) - set(_OP_TYPES))
        if unknown:
            raise ValueError(
                f"op_types: cannot quantize {', '.join(unknown)} (supported: MatMul, Gemm)"
            )


def quantize_symmetric_int8(
    w: np.ndarray, per_channel: bool, qmax: int = 127
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 (q [K, N], scale [N] or scalar) of a [K, N] weight, per column or tensor."""
    w64 = w.astype(np.float64)
    amax = np.max(np.abs(w64), axis=0) if per_channel else np.array(np.max(np.abs(w64)))
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(w64 / scale.astype(np.float64)), -qmax, qmax).astype(np.int8)
    return q, scale


@register_pass
class QuantizeDynamicPass(GraphoptPass):
    name = "quantize-dynamic"
    Options = QuantizeDynamicOptions
    # Lossy by design: int8 weights plus run-time uint8 activations move each output by a few
    # quantization steps, which is arbitrarily large relative to outputs near 0, so elementwise
    # bounds are off. What must hold is the outputs' direction: a broken scale, axis, layout or
    # transpose gives cosines far below 0.99, while int8 on real weights lands at 0.999+.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.99)
    summary = "dynamic int8 quantization of MatMul/Gemm into com.microsoft.DynamicQuantizeMatMul"
    constant_weights = True
    enters_subgraphs = True

    def run(self, model: ir.Model) -> bool:
        self._namer = Namer.for_model(model)
        # one quantized copy per (weight, transposed?, alpha) even if several nodes share it
        self._weights: dict[tuple[int, bool, float], tuple[ir.Value, ir.Value, ir.Value]] = {}
        changed = False
        for graph, scope in list(gir.iter_scopes(model)):
            for node in list(graph):
                plan = self._plan(node)
                if plan is None:
                    continue
                self._rewrite(graph, node, *plan)
                self.count_scope(scope)
                changed = True
        if changed:
            ensure_ms_opset(model)
            return True
        ops = self.options.op_types
        return self.decline_no_target(
            f"{'/'.join(ops)} node with a float32 activation and a 2-D float32 constant weight",
            model,
            ops,
        )

    # ----------------------------------------------------------------- matching
    def render_notes(self) -> list[str]:
        return self.subgraph_notes("quantized") + self.left_alone_notes("left in float")

    def _plan(self, node: ir.Node) -> tuple[bool, float, np.ndarray | None] | None:
        """(transpose weight?, alpha, bias or None) for a target, None (counted) otherwise."""
        if node.domain not in ("", "ai.onnx") or node.op_type not in self.options.op_types:
            return None
        if node.name and node.name in self.options.exclude:
            self.leave(node, "excluded")
            return None
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return None
        wa, why = float_weight(node.inputs[0], node.inputs[1])
        if wa is None:
            self.leave(node, why)
            return None
        if node.op_type == "MatMul":
            return False, 1.0, None
        return self._plan_gemm(node, wa)

    def _plan_gemm(
        self, node: ir.Node, wa: np.ndarray
    ) -> tuple[bool, float, np.ndarray | None] | None:
        if _attr(node, "transA", 0):
            self.leave(node, "transA")
            return None
        trans_b = bool(_attr(node, "transB", 0))
        alpha = float(_attr(node, "alpha", 1.0))  # type: ignore[arg-type]
        beta = float(_attr(node, "beta", 1.0))  # type: ignore[arg-type]
        n = wa.shape[0] if trans_b else wa.shape[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is None:
            return trans_b, alpha, None
        ca = _const(c)
        if ca is None:
            self.leave(node, "bias_not_constant")
            return None
        if ca.dtype != np.float32:
            self.leave(node, "bias_dtype")
            return None
        row = ca.ndim > 2 or (ca.ndim == 2 and ca.shape[0] != 1)
        if row or ca.shape[-1:] not in ((), (1,), (n,)):
            self.leave(node, "bias_shape")  # per-row bias: DynamicQuantizeMatMul takes a 1-D bias
            return None
        bias = np.broadcast_to(ca.reshape(-1), (n,)).astype(np.float32) * np.float32(beta)
        return trans_b, alpha, bias

    # ----------------------------------------------------------------- rewriting
    def _quantized_weight(
        self, graph: ir.Graph, w: ir.Value, transpose: bool, alpha: float
    ) -> tuple[ir.Value, ir.Value, ir.Value]:
        key = (id(w), transpose, alpha)
        if key not in self._weights:
            wa = _const(w)
            assert wa is not None
            if transpose:
                wa = wa.T
            if alpha != 1.0:
                wa = wa * np.float32(alpha)
            qmax = 63 if self.options.reduce_range else 127
            q, scale = quantize_symmetric_int8(wa, self.options.per_channel, qmax)
            base = w.name or "weight"
            home = w.graph or graph  # the scope that holds the float weight
            self._weights[key] = (
                add_initializer(home, self._namer(f"{base}_quantized"), q),
                add_initializer(home, self._namer(f"{base}_scale"), scale),
                add_initializer(
                    home, self._namer(f"{base}_zero_point"), np.zeros(scale.shape, np.int8)
                ),
            )
            self.count("weights_quantized")
        return self._weights[key]

    def _rewrite(
        self,
        graph: ir.Graph,
        node: ir.Node,
        transpose: bool,
        alpha: float,
        bias: np.ndarray | None,
    ) -> None:
        a, w = node.inputs[0], node.inputs[1]
        assert a is not None and w is not None
        old_bias = node.inputs[2] if len(node.inputs) > 2 else None
        qw, scale, zp = self._quantized_weight(graph, w, transpose, alpha)
        inputs: list[ir.Value | None] = [a, qw, scale, zp]
        if bias is not None:
            assert old_bias is not None
            if np.array_equal(_const(old_bias), bias):  # type: ignore[arg-type]
                inputs.append(old_bias)  # already the 1-D float bias: share it
            else:
                base = old_bias.name or "bias"
                home = old_bias.graph or graph
                inputs.append(add_initializer(home, self._namer(f"{base}_1d"), bias))
        name = self._namer(f"{node.name or node.op_type}_DynamicQuantizeMatMul")
        new = self.mark(ir.Node(MS_DOMAIN, "DynamicQuantizeMatMul", inputs, name=name))
        new.outputs[0].dtype = ir.DataType.FLOAT
        replace_node(graph, node, new)
        drop_if_unused(w.graph or graph, w)
        if old_bias is not None:
            drop_if_unused(old_bias.graph or graph, old_bias)
        self.count(f"quantized:{node.op_type}")
