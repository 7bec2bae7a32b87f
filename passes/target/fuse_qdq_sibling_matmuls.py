"""fuse-qdq-sibling-matmuls: int8 MatMuls that read the same quantized input (attention's
query, key and value projections) become one MatMul on the concatenated weights and a
Split, so ONNX Runtime runs one integer GEMM where it ran three.

Each sibling is ``DQ(x) -> MatMul <- DQ(W_p)`` with its output quantized by its own
``Q(s_p, z_p)`` (ORT's ``QLinearMatMul``). A fused GEMM writes one quantized tensor, so the
parts must share a scale and zero point. The scale is exact to share: part p's weight scales
are multiplied by ``alpha_p = S / s_p'``, so its columns produce ``v_p * alpha_p``, which
quantizes with the common ``S`` to exactly the integers ``v_p`` gives with ``s_p'``. The
readers of each part then dequantize with that part's own ``s_p'``. The zero point cannot be
rescaled away: the parts must already share one, which ``qdq-insert`` arranges on the CPU
target (it widens sibling ranges by a few percent: MiniLM's zero points 118-134 became one).
Given ``max_scale_growth`` > 1, the pass aligns them itself: the parts take the common ``z``
that coarsens them least, and a part whose ``z_p`` differs gets the smallest ``s_p' >= s_p``
that still covers ``[(qmin - z_p) s_p, (qmax - z_p) s_p]``; a group needing more growth is
left.

The new parameters travel to every reader: the part's DequantizeLinears, and through data
movement (Reshape, Transpose, ...) to the QuantizeLinears that repeat the old parameters, so
ORT still drops the Q/DQ around those ops. The Split between is ``DQ -> Split -> Q`` with the
common parameters, which ORT runs on the 8-bit tensor.

Measured on all-MiniLM-L6-v2 int8 (ORT 1.31, 2-thread Xeon with AMX, seq 128): 18
projections become 6 GEMMs of [384, 1152]; see the README for the latency. Only the CPU
target is rewritten. Run after ``qdq-insert``; a second run finds no siblings left.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize.qdq_params import common_zero_point
from graphopt.passes.target.qdq_forms import (
    Dequant,
    Quant,
    dequantize_of,
    is_std,
    per_tensor_quantize,
)

from graphopt.core.build import Namer, add_initializer, drop_if_unused
from graphopt.core.ops import SCALE_PRESERVING
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import ai_onnx_opset
from graphopt.ir import const_array as _const


@dataclasses.dataclass(frozen=True)
class FuseQdqSiblingMatmulsOptions:
    max_scale_growth: float = option(
        1.0,
        "most a part's quantization step may grow to share the group's zero point (ratio); "
        "1: only parts that share one already (qdq-insert aligns them on the CPU), so the "
        "integers are the same as before",
    )
    min_group: int = option(2, "fewest sibling MatMuls worth fusing")

    def __post_init__(self) -> None:
        if not self.max_scale_growth >= 1.0:
            raise ValueError(f"max_scale_growth must be at least 1, got {self.max_scale_growth}")
        if self.min_group < 2:
            raise ValueError(f"min_group must be at least 2, got {self.min_group}")


@dataclasses.dataclass(frozen=True)
class _Sibling:
    matmul: ir.Node
    a: Dequant
    w: Dequant
    out: Quant  # the QuantizeLinear reading the MatMul's output

    @property
    def width(self) -> int:
        return int(self.w.quantized.shape[1])  # type: ignore[index]


@register_pass
class FuseQdqSiblingMatmulsPass(GraphoptPass):
    name = "fuse-qdq-sibling-matmuls"
    Options = FuseQdqSiblingMatmulsOptions
    # With the zero points aligned (qdq-insert's doing, the default) the GEMM computes the
    # same integers: verify-each, which simulates QDQ in float, sees only rounding flips of
    # the rescaled weight scales (MiniLM: none, the outputs were identical). With
    # max_scale_growth > 1 a part is requantized on a coarser step, a change like int8's own
    # (MiniLM at 1.15: cosine 0.998 to the model before, 0.9970 to fp32 either way).
    tolerance = Tolerance(max_abs=float("inf"), max_rel=float("inf"), min_cosine=0.99)
    summary = "int8 MatMuls reading one quantized input -> one GEMM + Split (CPU)"

    def run(self, model: ir.Model) -> bool:
        if self.context.target != "cpu":
            return self.decline(
                f"target {self.context.target}: the fusion is chosen for ORT's CPU GEMM"
            )
        graph = model.graph
        namer = Namer(graph)  # state of this run only
        split_input = ai_onnx_opset(model) >= 13  # Split's sizes: an input from opset 13
        groups: dict[tuple, list[_Sibling]] = defaultdict(list)
        for node in graph:
            sib = self._sibling(node)
            if sib is not None:
                groups[self._key(sib)].append(sib)
        changed = False
        for sibs in groups.values():
            if len(sibs) < self.options.min_group:
                continue
            if self._fuse(graph, sibs, namer, split_input):
                self.count("groups_fused")
                self.count("matmuls_fused", len(sibs))
                changed = True
        if changed:
            return True
        skipped = self.skip_counts()
        return self.decline(
            "no int8 MatMuls with quantized outputs share a quantized input"
            + (f" (skipped: {skipped})" if skipped else "")
            + ("" if any(is_std(n, "DequantizeLinear") for n in graph) else "; nothing is int8")
        )

    # ----------------------------------------------------------------- matching
    def _sibling(self, mm: ir.Node) -> _Sibling | None:
        if not is_std(mm, "MatMul") or len(mm.inputs) != 2:
            return None
        a = dequantize_of(mm.inputs[0])
        w_producer = mm.inputs[1].producer() if mm.inputs[1] is not None else None
        if a is None or w_producer is None or not w_producer.inputs:
            return None
        wq = w_producer.inputs[0]
        if wq is None or _const(wq) is None or wq.shape is None or len(wq.shape) != 2:
            return None
        w = dequantize_of(mm.inputs[1], int(wq.shape[1]))
        y = mm.outputs[0]
        if w is None or y.is_graph_output() or len(y.uses()) != 1:
            return None
        out = per_tensor_quantize(y.uses()[0][0])
        if out is None or out.node.outputs[0].is_graph_output():
            return None
        return _Sibling(mm, a, w, out)

    @staticmethod
    def _key(s: _Sibling) -> tuple:
        scale, zp = s.a.params()
        return (
            id(s.a.quantized),
            float(scale.reshape(-1)[0]),
            None if zp is None else int(zp.reshape(-1)[0]),
            int(s.w.quantized.shape[0]),  # type: ignore[index]
            s.w.quantized.dtype,
            s.out.dtype,
        )

    def _family(self, q: ir.Node, scale: float, zp: int) -> tuple[list[ir.Node], list[ir.Node]]:
        """The Q and DQ nodes that carry ``q``'s parameters (``scale``, ``zp``) from its
        output on: its DequantizeLinear readers, and through data movement the Qs that
        repeat the parameters (ORT drops the Q/DQ around such ops). Raises ValueError when a
        reader of a quantized value is not a DequantizeLinear."""
        qs, dqs, todo = [q], [], [q]
        while todo:
            node = todo.pop()
            for use in node.outputs[0].uses():
                dq = use.node
                if not is_std(dq, "DequantizeLinear") or use.idx != 0 or len(dq.inputs) < 3:
                    raise ValueError("quantized_reader_not_dequantize")
                s, z = _const(dq.inputs[1]), _const(dq.inputs[2])
                if s is None or z is None or s.size != 1 or z.size != 1:
                    raise ValueError("reader_parameters_differ")
                if not np.isclose(float(s.reshape(())), scale) or int(z.reshape(())) != zp:
                    raise ValueError("reader_parameters_differ")
                if dq not in dqs:
                    dqs.append(dq)
                for mover_use in dq.outputs[0].uses():
                    mover = mover_use.node
                    if mover.op_type not in SCALE_PRESERVING or mover.domain not in ("", "ai.onnx"):
                        continue
                    for q_use in mover.outputs[0].uses():
                        nq = per_tensor_quantize(q_use.node)
                        if nq is not None and nq.node not in qs and _same(nq, scale, zp):
                            qs.append(nq.node)
                            todo.append(nq.node)
        return qs, dqs

    # ----------------------------------------------------------------- rewriting
    def _fuse(self, graph: ir.Graph, sibs: list[_Sibling], namer: Namer, split_input: bool) -> bool:
        dtype = sibs[0].out.dtype
        z, new_scales = common_zero_point([(s.out.scale, s.out.zero_point) for s in sibs], dtype)
        growth = max(n / s.out.scale for n, s in zip(new_scales, sibs, strict=True))
        if growth > self.options.max_scale_growth:
            for s in sibs:
                self.leave(s.matmul, "zero_points_differ")
            return False
        families = []
        try:
            for s in sibs:
                families.append(self._family(s.out.node, s.out.scale, s.out.zero_point))
        except ValueError as exc:
            for s in sibs:
                self.leave(s.matmul, str(exc))
            return False
        common = new_scales[0]
        base = sibs[0].matmul.name or "MatMul"
        # the new nodes go where the first sibling was, reading that sibling's input
        first = min(sibs, key=lambda s: _index(graph, s.matmul)).matmul
        weights, w_scales, w_zps = [], [], []
        for s, new in zip(sibs, new_scales, strict=True):
            ws, wz = s.w.params()
            n = s.width
            weights.append(_const(s.w.quantized))
            w_scales.append(np.broadcast_to(ws.reshape(-1), (n,)) * np.float32(common / new))
            w_zps.append(
                np.broadcast_to(wz.reshape(-1), (n,))
                if wz is not None
                else np.zeros(n, s.w.quantized.dtype.numpy())
            )
        init = lambda suffix, array: add_initializer(  # noqa: E731
            graph, namer(f"{base}_siblings_{suffix}"), array
        )
        w_cat = init("weight", np.concatenate(weights, axis=1))
        ws_cat = init("weight_scale", np.concatenate(w_scales).astype(np.float32))
        wz_cat = init("weight_zero_point", np.concatenate(w_zps))
        s_common = init("scale", np.array(common, np.float32))
        z_common = init("zero_point", np.array(z, dtype))
        sizes = np.array([s.width for s in sibs], np.int64)

        def node(op: str, inputs: list, name: str, outputs: int = 1, **attrs: object) -> ir.Node:
            n = ir.node(
                op,
                inputs,
                attributes=attrs,  # type: ignore[arg-type]
                num_outputs=outputs,
                name=namer(f"{base}_siblings_{name}"),
            )
            return self.mark(n)

        dq_w = node("DequantizeLinear", [w_cat, ws_cat, wz_cat], "dq_weight", axis=1)
        mm = node("MatMul", [first.inputs[0], dq_w.outputs[0]], "matmul")
        q = node("QuantizeLinear", [mm.outputs[0], s_common, z_common], "q")
        dq = node("DequantizeLinear", [q.outputs[0], s_common, z_common], "dq")
        if split_input:
            split_in, split_attrs = [dq.outputs[0], init("sizes", sizes)], {}
        else:  # before opset 13 the sizes are an attribute
            split_in, split_attrs = [dq.outputs[0]], {"split": sizes.tolist()}
        split = node("Split", split_in, "split", outputs=len(sibs), axis=-1, **split_attrs)
        new_nodes = [dq_w, mm, q, dq, split]
        stale: list[ir.Value] = []
        for i, (s, new, (qs, dqs)) in enumerate(zip(sibs, new_scales, families, strict=True)):
            part_q = node("QuantizeLinear", [split.outputs[i], s_common, z_common], f"q{i}")
            new_nodes.append(part_q)
            part_s = init(f"part{i}_scale", np.array(new, np.float32))
            part_z = init(f"part{i}_zero_point", np.array(z, dtype))
            old_out = s.out.node.outputs[0]
            ir.convenience.replace_all_uses_with(old_out, part_q.outputs[0])
            for fq in qs[1:] + dqs:
                stale.extend(v for v in fq.inputs[1:3] if v is not None)
            for fq in qs[1:]:
                fq.replace_input_with(1, part_s)
                fq.replace_input_with(2, part_z)
            for fdq in dqs:
                fdq.replace_input_with(1, part_s)
                fdq.replace_input_with(2, part_z)
        graph.insert_before(first, new_nodes)
        for s in sibs:
            old_params = [s.out.node.inputs[1], s.out.node.inputs[2]]
            graph.remove([s.out.node, s.matmul], safe=True)
            for dq_node in (s.w.node, s.a.node):
                if dq_node.graph is graph and not _used(dq_node):
                    graph.remove(dq_node, safe=True)
            for v in (s.w.quantized, s.w.scale, s.w.zero_point, s.a.scale, s.a.zero_point):
                drop_if_unused(graph, v)
            for v in old_params:
                drop_if_unused(graph, v)
        for v in stale:
            drop_if_unused(graph, v)
        return True


def _same(q: Quant, scale: float, zp: int) -> bool:
    return bool(np.isclose(q.scale, scale)) and q.zero_point == zp


def _used(node: ir.Node) -> bool:
    return any(o.uses() or o.is_graph_output() for o in node.outputs)


def _index(graph: ir.Graph, node: ir.Node) -> int:
    for i, n in enumerate(graph):
        if n is node:
            return i
    raise ValueError(f"{node.name} is not in the graph")
