"""fuse-qdq-matmul-bias: an int8 MatMul with a float output and its bias Add become one
``com.microsoft.MatMulIntegerToFloat`` that adds the bias in the GEMM's epilogue.

ONNX Runtime's CPU EP turns ``DequantizeLinear -> MatMul`` whose output stays float into
``MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point, b_zero_point)``, but it leaves
the bias ``Add`` that follows as a separate float pass over the output, although the kernel
takes an optional ``bias`` input that it applies while it scales the int32 accumulators. In a
quantized transformer those Adds are the attention output projection's and the second FFN
layer's (two per layer, [batch, seq, hidden] each); the pass writes the fused kernel directly:

    Q(x) -> DQ(a_scale, a_zp) -> MatMul <- DQ(b_scale, b_zp) <- W_int8      MatMulIntegerToFloat(
                                   |                                  =>      Q(x), W_int8, a_scale,
                                  Add <- bias (constant, [N])                 b_scale, a_zp, b_zp,
                                                                              bias)

Measured on all-MiniLM-L6-v2 int8 (ORT 1.31, 2-thread Xeon with AMX, seq 128): 12 Adds gone,
2% of the int8 latency. ORT computes the same integer GEMM, scale and bias as before (its
outputs are bit-identical on MiniLM).

Applied where A's DequantizeLinear is per tensor, B's is per tensor or per output column
(``axis=1`` of a 2-D weight), the scales are float32, the MatMul's only reader is an ``Add``
whose other operand is a float32 constant broadcasting along the last axis only ([N], [1, N],
a scalar), and the output is float32. Only the CPU target is rewritten (the contrib kernel is
ONNX Runtime's CPU kernel). Run after ``qdq-insert``; a second run finds nothing to fuse.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from graphopt.passes.target.qdq_forms import Dequant, dequantize_of, is_std

from graphopt.core.build import MS_DOMAIN, Namer, add_initializer, drop_if_unused, ensure_ms_opset
from graphopt.core.pass_base import GraphoptPass, NoOptions, Tolerance
from graphopt.core.registry import register_pass
from graphopt.ir import const_array as _const
from graphopt.ir import shape_through_qdq

_FUSED = "MatMulIntegerToFloat"


@dataclasses.dataclass(frozen=True)
class _Match:
    matmul: ir.Node
    add: ir.Node
    a: Dequant
    b: Dequant
    bias: np.ndarray  # [N] float32
    bias_value: ir.Value  # the Add's constant operand, reused when it is already [N]


@register_pass
class FuseQdqMatmulBiasPass(GraphoptPass):
    name = "fuse-qdq-matmul-bias"
    Options = NoOptions
    # What ONNX Runtime runs is unchanged (its optimized outputs are bit-identical on
    # MiniLM: the same integer GEMM, scale and bias). But verify-each runs models without
    # optimizations, where the QDQ MatMul before the pass is simulated in float and the
    # fused kernel after it is integer; the float rounding of the simulation flips later
    # quantization steps, and the flips compound over the layers (MiniLM: cosine 0.9997 to
    # 0.998 to the model before). So the bound is int8's own, as for qdq-insert.
    tolerance = Tolerance(max_abs=float("inf"), max_rel=float("inf"), min_cosine=0.99)
    summary = "int8 MatMul + bias Add -> com.microsoft.MatMulIntegerToFloat with bias (CPU)"

    def run(self, model: ir.Model) -> bool:
        if self.context.target != "cpu":
            return self.decline(
                f"target {self.context.target}: MatMulIntegerToFloat is ONNX Runtime's CPU kernel"
            )
        graph = model.graph
        namer = Namer(graph)
        changed = False
        for node in list(graph):
            match = self._match(node)
            if match is not None:
                self._rewrite(graph, namer, match)
                self.count("fused")
                changed = True
        if changed:
            ensure_ms_opset(model)
            return True
        already = sum(
            1
            for n in graph
            if n.op_type == _FUSED and n.domain == MS_DOMAIN and len(n.inputs) > 6
            if n.inputs[6] is not None
        )
        reason = "no int8 (QDQ) MatMul with a float output read only by a constant bias Add"
        if already:
            reason += f" ({already} already fused)"
        elif not any(is_std(n, "DequantizeLinear") for n in graph):
            reason += (
                " (nothing in the model is int8: the pass follows qdq-insert, which may keep"
                " a model float)"
            )
        skipped = self.skip_counts()
        return self.decline(reason + (f"; skipped: {skipped}" if skipped else ""))

    # ----------------------------------------------------------------- matching
    def _match(self, mm: ir.Node) -> _Match | None:
        """The fusion for a QDQ MatMul read only by a bias Add, None otherwise (counted
        ``skipped:<why>`` where the MatMul is one but its form does not suit the kernel)."""
        if not is_std(mm, "MatMul") or len(mm.inputs) != 2:
            return None
        if not all(is_std(v.producer() if v else None, "DequantizeLinear") for v in mm.inputs):
            return None  # not int8: ORT runs it in float
        y = mm.outputs[0]
        if y.is_graph_output() or len(y.uses()) != 1:
            return None
        add = y.uses()[0][0]
        if not is_std(add, "Add") or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
            return None  # no bias to fuse (a quantized output is ORT's QLinearMatMul)
        bias_value = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        ba = _const(bias_value)
        if ba is None:
            return None  # a residual or a mask, not a bias
        a = dequantize_of(mm.inputs[0], None)
        if a is None:
            self.leave(mm, "activation_dequantize_form")
            return None
        b_shape = mm.inputs[1].producer().inputs[0].shape  # type: ignore[union-attr]
        n = b_shape[-1] if b_shape is not None and len(b_shape) >= 2 else None
        if not isinstance(n, int):
            self.leave(mm, "weight_shape_unknown")
            return None
        b = dequantize_of(mm.inputs[1], n)
        if b is None:
            self.leave(mm, "weight_dequantize_form")
            return None
        if ba.dtype != np.float32 or add.outputs[0].dtype != ir.DataType.FLOAT:
            self.leave(mm, "bias_not_constant_float32")
            return None
        if ba.size not in (1, n) or (ba.ndim > 0 and ba.size == n and ba.shape[-1] != n):
            self.leave(mm, "bias_shape")  # the kernel's bias is per output column
            return None
        if ba.ndim > 1 and ba.ndim > self._rank(y, a.quantized):
            self.leave(mm, "bias_rank")  # a bias of higher rank would broadcast the output
            return None
        bias = np.broadcast_to(ba.reshape(-1), (n,)).astype(np.float32)
        return _Match(mm, add, a, b, bias, bias_value)

    @staticmethod
    def _rank(y: ir.Value, a: ir.Value) -> int:
        """The MatMul output's rank: its shape's, else A's (B is 2-D), else 0 (unknown)."""
        if y.shape is not None:
            return len(y.shape)
        shape = shape_through_qdq(a)
        return max(len(shape), 2) if shape is not None else 0

    # ----------------------------------------------------------------- rewriting
    def _rewrite(self, graph: ir.Graph, namer: Namer, m: _Match) -> None:
        ba = _const(m.bias_value)
        if ba is not None and ba.shape == m.bias.shape:
            bias = m.bias_value
        else:
            bias = add_initializer(graph, namer(f"{m.bias_value.name or 'bias'}_1d"), m.bias)
        inputs: list[ir.Value | None] = [
            m.a.quantized,
            m.b.quantized,
            m.a.scale,
            m.b.scale,
            m.a.zero_point,
            m.b.zero_point,
            bias,
        ]
        name = namer(f"{m.matmul.name or 'MatMul'}_{_FUSED}")
        fused = self.mark(ir.Node(MS_DOMAIN, _FUSED, inputs, name=name))
        fused.outputs[0].dtype = ir.DataType.FLOAT
        ir.convenience.replace_nodes_and_values(
            graph, m.add, [m.matmul, m.add], [fused], [m.add.outputs[0]], [fused.outputs[0]]
        )
        for dq in (m.a.node, m.b.node):
            if dq.graph is graph and not any(o.uses() or o.is_graph_output() for o in dq.outputs):
                graph.remove(dq, safe=True)
        drop_if_unused(graph, m.bias_value)
