"""Writing qdq-insert's plan into a graph: Q/DQ pairs, int8 weights, int32 biases, smoothing.

One :class:`Emitter` per rewritten model holds what that rewrite shares between nodes (the
Q/DQ pair of each tensor, the parameters of each calibrated root, the float constants that
int8 copies replaced); it is thrown away after the rewrite. The pass rewrites many trial
copies per run and the model itself last, all through :func:`quantize`.

Nodes inside If/Loop/Scan bodies get their Q/DQ nodes and int8 constants in their own body:
ONNX Runtime fuses a QDQ group only within one graph, so a DequantizeLinear that a body node
reads must sit in that body, with its scale and zero point as the body's initializers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize import qdq_activations as acts
from graphopt.passes.quantize.qdq_params import (
    activation_qparams,
    param_roots,
    quantize_bias,
    quantize_constant,
    quantize_table,
    quantize_weight,
    weight_axis,
)
from graphopt.passes.quantize.qdq_plan import QdqPlan, QdqRun, plan_model

from graphopt.core.build import Namer, add_initializer
from graphopt.ir import Pristine, defining_graph, iter_nodes
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const


def quantize(run: QdqRun, model: ir.Model, kept: dict[str, str]) -> bool:
    """Plan with ``kept`` nodes left float, then insert Q/DQ into ``model`` (its If/Loop/Scan
    bodies included); records what was quantized in ``run``. Returns whether anything was
    planned."""
    chosen = plan_model(run, model, set(run.exclude) | set(kept))
    emitter = Emitter(run, model)
    emitter.rewrite(chosen, param_roots(chosen))
    emitter.drop_replaced()
    return bool(chosen.nodes)


def trial(run: QdqRun, pristine: Pristine, kept: dict[str, str]) -> ir.Model:
    """A quantized copy of the float model with ``kept`` nodes in float."""
    copy = pristine.copy()
    quantize(run, copy, kept)
    return copy


class Emitter:
    """Writes one plan into one model."""

    def __init__(self, run: QdqRun, model: ir.Model) -> None:
        self.run = run
        self.model = model
        self.name = Namer.for_model(model)
        #: (calibrated root, graph) -> its scale and zero point, initializers of that graph
        self.qparams: dict[tuple[ir.Value, ir.Graph], tuple[ir.Value, ir.Value]] = {}
        #: (float tensor, graph) -> its DequantizeLinear output in that graph
        self.dq: dict[tuple[ir.Value, ir.Graph], ir.Value] = {}
        self.replaced: list[ir.Value] = []  # float constants that int8 copies replaced

    def rewrite(self, plan: QdqPlan, roots: dict[ir.Value, ir.Value]) -> None:
        run, ranges = self.run, self.run.ranges
        run.embeddings = {n.name for n in plan.embedding if n.name}
        run.quantized = {}
        quantized_out = {y for n in plan.outputs for y in plan.all_outputs(n)}

        def params(v: ir.Value, graph: ir.Graph) -> tuple[ir.Value, ir.Value] | None:
            root = roots.get(v, v)
            if (root, graph) in self.qparams:
                return self.qparams[root, graph]
            if root.name not in ranges:
                return None
            scale, zp = activation_qparams(*ranges[root.name], run.act_type)
            pair = (
                self.initializer(f"{root.name}_scale", scale, graph),
                self.initializer(f"{root.name}_zero_point", zp, graph),
            )
            self.qparams[root, graph] = pair
            return pair

        self.apply_smoothing(plan, quantized_out)
        # 0. embedding tables: int8 copies; the gathered rows keep the table's parameters
        for n in plan.embedding:
            table = n.inputs[0]
            assert table is not None
            dq, pair = self.table_dq(n, table)
            n.replace_input_with(0, dq)
            self.replaced.append(table)
            self.qparams[plan.outputs[n], _graph(n)] = pair
            run.count("quantized:Gather(embedding)")
        # 1. outputs of quantized nodes: every reader goes through the Q/DQ pair
        for n in plan.outputs:
            for y in plan.all_outputs(n):
                p = params(y, _graph(n))
                if p is not None:
                    self.qdq(y, p, readers=None)
        # 2. activation inputs from the float world: only quantized readers switch over
        dq_outputs = set(self.dq.values())
        for n in plan.nodes:
            if not n.name:
                n.name = self.name(f"{n.op_type}_q")
            for i in plan.inputs[n]:
                v = n.inputs[i]
                if v is None or v in dq_outputs:
                    continue
                if _const(v) is not None:
                    self.replaced.append(v)
                    dq = self.const_dq(n, v)
                elif (v, _graph(n)) in self.dq:
                    dq = self.dq[v, _graph(n)]
                else:
                    # a tensor of an outer scope gets its pair in the reader's body
                    outer = defining_graph(v) is not _graph(n)
                    p = params(v, _graph(n))
                    assert p is not None and (v not in quantized_out or outer)
                    dq = self.qdq(v, p, readers=[], into=_graph(n) if outer else None)
                dq_outputs.add(dq)
                n.replace_input_with(i, dq)
        # 3. weights, bias and embedding tables
        wdq_of: dict[tuple[int, int | None], ir.Value] = {}
        for n in plan.weighted:
            w = n.inputs[1]
            assert w is not None
            axis = weight_axis(n) if run.per_channel else None
            key = (id(w), axis)
            if key not in wdq_of:
                wdq_of[key] = self.weight_dq(n, w, axis)
            n.replace_input_with(1, wdq_of[key])
            self.replaced.append(w)
            self.bias(n)
            run.count(f"quantized:{n.op_type}")
        run.count("quantized:MatMul(activations)", len(plan.act_matmul))
        for n in plan.act_matmul:
            self.fold_scalar(n)
        for n in plan.region:
            run.count(f"quantized:{n.op_type}")
        for n in plan.nodes:
            run.quantized[n.name] = n.op_type  # type: ignore[index]
        for n in plan.region:
            if n.op_type in acts.SATURATING:
                self.saturating(n)
        for n in iter_nodes(self.model):
            if n.op_type == "Resize" and n.domain in ("", "ai.onnx"):
                self.drop_empty_roi(n)
        run.count("relu_absorbed", len(plan.absorbed))

    # ------------------------------------------------------------ smoothing
    def apply_smoothing(self, plan: QdqPlan, quantized_out: set[ir.Value]) -> None:
        """x -> Mul(x, 1/s) for the quantized MatMuls reading x; their weights become W * s."""
        run = self.run
        readers: dict[ir.Value, list[ir.Node]] = {}
        for n in plan.weighted:
            x = n.inputs[0]
            if n.op_type == "MatMul" and x is not None and x.name in run.smooth:
                if x not in quantized_out:
                    readers.setdefault(x, []).append(n)
        for x, nodes in readers.items():
            graph = _graph(nodes[0])
            if any(_graph(n) is not graph for n in nodes):
                continue  # readers in several scopes: smoothing stays off for x
            scale, rng = run.smooth[x.name]  # type: ignore[index]
            inv = self.initializer(f"{x.name}_smooth_inv", (1.0 / scale).astype(np.float32), graph)
            mul = run.mark(ir.Node("", "Mul", [x, inv], name=self.name(f"{x.name}_smooth")))
            y = mul.outputs[0]
            y.name = self.name(f"{x.name}_smoothed")
            y.dtype, y.shape = x.dtype, x.shape
            producer = x.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, [mul])
            else:
                graph.insert_before(next(iter(graph)), [mul])
            run.ranges[y.name] = rng  # type: ignore[index]
            scaled: dict[int, ir.Value] = {}
            for n in nodes:
                w = n.inputs[1]
                assert w is not None
                if id(w) not in scaled:
                    wa = _const(w)
                    assert wa is not None
                    new = (wa.astype(np.float64) * scale[:, None]).astype(np.float32)
                    scaled[id(w)] = self.initializer(f"{w.name}_smoothed", new, graph)
                    self.replaced.append(w)
                n.replace_input_with(0, y)
                n.replace_input_with(1, scaled[id(w)])
            run.count("smoothed_matmuls", len(nodes))

    def fold_scalar(self, mm: ir.Node) -> None:
        """MatMul(DQ(a), DQ(b)) / c  ->  MatMul(DQ(a, s_a / c), DQ(b)): one op less.

        Attention divides its scores by sqrt(head_dim) right after Q.K^T; in int8 that
        constant belongs in the dequantization scale (exact for powers of two, one float
        rounding of the scale otherwise), and ORT's integer kernel applies it for free.
        """
        graph = _graph(mm)
        y = mm.outputs[0]
        uses = list(y.uses())
        if len(uses) != 1 or y.is_graph_output() or uses[0].idx != 0:
            return
        op = uses[0].node
        if op.op_type not in ("Div", "Mul") or op.domain not in ("", "ai.onnx"):
            return
        c = _const(op.inputs[1]) if len(op.inputs) == 2 else None
        if op.graph is not graph or op.outputs[0].is_graph_output() or c is None or c.size != 1:
            return
        c64 = float(np.asarray(c, np.float64).reshape(()))
        if not np.isfinite(c64) or c64 == 0.0:
            return
        dq = mm.inputs[0].producer() if mm.inputs[0] is not None else None
        scale = (
            _const(dq.inputs[1]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        )
        if dq is None or scale is None or scale.size != 1:
            return
        factor = 1.0 / c64 if op.op_type == "Div" else c64
        new_scale = np.asarray(float(scale.reshape(())) * factor, np.float32)
        s = self.initializer(f"{mm.name}_a_scale", new_scale, graph)
        base = f"{mm.name}_a"
        out = self.dequantize(mm, dq.inputs[0], s, dq.inputs[2], None, base, dq.outputs[0].shape)
        mm.replace_input_with(0, out)
        if not list(dq.outputs[0].uses()) and not dq.outputs[0].is_graph_output():
            graph.remove(dq, safe=True)
        ir.convenience.replace_all_uses_with(op.outputs[0], y)
        graph.remove(op, safe=True)
        self.run.count(f"folded_scalar_{op.op_type}")

    # ------------------------------------------------------------ activations
    def saturating(self, n: ir.Node) -> None:
        """HardSigmoid/HardSwish between Q/DQ -> their integer form (:mod:`.qdq_activations`),
        or left as they are with the reason in ``run.activation_why``."""
        run = self.run
        x = n.inputs[0]
        y = n.outputs[0]
        dq = x.producer() if x is not None else None
        q = next((u.node for u in y.uses() if u.node.op_type == "QuantizeLinear"), None)
        x_range = acts.quantized_range(dq) if dq is not None and dq.inputs else None
        why = acts.why_float(n, run.act_type, x_range)
        sy, zy = (_const(q.inputs[1]), _const(q.inputs[2])) if q is not None else (None, None)
        if not why and (sy is None or zy is None or sy.size != 1):
            why = "its output is not per-tensor quantized"
        if not why and n.op_type == "HardSigmoid" and int(zy.reshape(())) != 0:  # type: ignore[union-attr]
            why = "its output range does not start at 0"
        alpha, beta = acts.gate_params(n)
        # the HardSwish gate's own finest scale (zero point 0)
        sg = np.float32(acts.gate_scale(alpha, beta, x_range[1])) if x_range else np.float32(0)
        if not why and n.op_type == "HardSwish":
            assert x_range is not None and sy is not None
            steps = acts.hardswish_error_steps(x_range, float(sg), float(sy.reshape(())))
            if steps >= 0.99:
                why = f"the gate's rounding may move outputs by {steps:.2f} steps"
        if why:
            run.activation_why[n.name] = why  # type: ignore[index]
            run.count(f"activation_float:{n.op_type}")
            return
        assert x is not None and q is not None and sy is not None and x_range is not None
        name = n.name  # every planned node is named (step 2)
        assert name
        graph = _graph(n)
        c = self.initializer(f"{name}_offset", np.array(beta / alpha, np.float32), graph)
        add = run.mark(ir.Node("", "Add", [x, self.const_dq(n, c)], name=self.name(f"{name}_add")))
        self.replaced.append(c)
        t = add.outputs[0]
        t.name, t.dtype, t.shape = self.name(f"{name}_shifted"), ir.DataType.FLOAT, y.shape
        if n.op_type == "HardSigmoid":
            # Q(clip(a*x + b, 0, 1), s) == Q(x + b/a, s/a): the Q saturates, its DQ reads s
            s_q = self.initializer(
                f"{name}_gate_scale", (sy / np.float32(alpha)).astype(np.float32), graph
            )
            graph.insert_before(n, [add])
            ir.convenience.replace_all_uses_with(y, t)
            q.replace_input_with(1, s_q)
            graph.remove(n, safe=True)
            add.name = name  # ORT's fused QLinearAdd bears the activation's name
            form = f"HardSigmoid: {acts.INTEGER_ADD}"
        else:
            zero = self.initializer(f"{name}_gate_zero_point", np.array(0, np.uint8), graph)
            s_t = self.initializer(
                f"{name}_gate_scale", np.array(sg / np.float32(alpha), np.float32), graph
            )
            s_g = self.initializer(f"{name}_gate_dq_scale", np.array(sg, np.float32), graph)
            qt = run.mark(
                ir.Node("", "QuantizeLinear", [t, s_t, zero], name=self.name(f"{name}_gate_Q"))
            )
            qt.outputs[0].name = self.name(f"{name}_gate_quantized")
            qt.outputs[0].dtype, qt.outputs[0].shape = ir.DataType.UINT8, y.shape
            dqt = run.mark(
                ir.Node(
                    "",
                    "DequantizeLinear",
                    [qt.outputs[0], s_g, zero],
                    name=self.name(f"{name}_gate_DQ"),
                )
            )
            g = dqt.outputs[0]
            g.name, g.dtype, g.shape = self.name(f"{name}_gate"), ir.DataType.FLOAT, y.shape
            mul = run.mark(ir.Node("", "Mul", [x, g], name=self.name(f"{name}_mul")))
            ir.convenience.replace_nodes_and_values(
                graph, n, [n], [add, qt, dqt, mul], [y], [mul.outputs[0]]
            )
            mul.name = name  # ORT's fused QLinearMul bears the activation's name
            form = f"HardSwish: {acts.INTEGER_ADD_MUL}"
        survivor = add if n.op_type == "HardSigmoid" else mul
        survivor.metadata_props[acts.FORM_KEY] = form
        run.count(f"activation_integer:{n.op_type}")

    # ------------------------------------------------------------ Q/DQ nodes
    def qdq(
        self,
        x: ir.Value,
        pair: tuple[ir.Value, ir.Value],
        readers: list | None,
        into: ir.Graph | None = None,
    ) -> ir.Value:
        """Q/DQ on ``x`` after its producer, or at the top of ``into`` (a body reading ``x``
        from an outer scope); ``readers`` None: all readers in that graph (and a graph
        output) switch to DQ; readers in other scopes keep ``x``."""
        assert x.name is not None
        mark = self.run.mark
        graph = into if into is not None else defining_graph(x)
        assert graph is not None
        s, z = pair
        base = x.name
        q = mark(ir.Node("", "QuantizeLinear", [x, s, z], name=self.name(f"{base}_Q")))
        q.outputs[0].name = self.name(f"{base}_quantized")
        q.outputs[0].dtype = z.dtype
        q.outputs[0].shape = x.shape
        dq = mark(
            ir.Node("", "DequantizeLinear", [q.outputs[0], s, z], name=self.name(f"{base}_DQ"))
        )
        out = dq.outputs[0]
        out.dtype = ir.DataType.FLOAT
        out.shape = x.shape
        if readers is None:
            for use in list(x.uses()):
                if use.node is not q and use.node.graph is graph:
                    use.node.replace_input_with(use.idx, out)
            if x.is_graph_output() and x in graph.outputs:
                # the graph output keeps its name, now on the DequantizeLinear output
                idx = [i for i, o in enumerate(graph.outputs) if o is x]
                old = x.name
                x.name = self.name(f"{old}_float")
                out.name = old
                for i in idx:
                    graph.outputs[i] = out
            else:
                out.name = self.name(f"{base}_dequantized")
        else:
            out.name = self.name(f"{base}_dequantized")
        producer = x.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, [q, dq])
        else:
            graph.insert_before(next(iter(graph)), [q, dq])
        self.dq[x, graph] = out
        self.run.count("qdq_pairs")
        return out

    def dequantize(
        self,
        before: ir.Node,
        q: ir.Value,
        s: ir.Value,
        z: ir.Value,
        axis: int | None,
        base: str,
        shape: Iterable[int] | None,
    ) -> ir.Value:
        """A DequantizeLinear of the constant ``q`` inserted before ``before``."""
        attrs = [] if axis is None else [ir.AttrInt64("axis", axis)]
        dq = self.run.mark(
            ir.Node(
                "", "DequantizeLinear", [q, s, z], attributes=attrs, name=self.name(f"{base}_DQ")
            )
        )
        dq.outputs[0].name = self.name(f"{base}_dequantized")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(list(shape)) if shape is not None else None
        _graph(before).insert_before(before, [dq])
        return dq.outputs[0]

    def const_dq(self, node: ir.Node, v: ir.Value) -> ir.Value:
        """A constant input of Add/Mul/Concat: per-tensor quantized like an activation."""
        graph = _graph(node)
        if (v, graph) in self.dq:
            return self.dq[v, graph]
        a = _const(v)
        assert a is not None
        q, scale, zp = quantize_constant(a, self.run.act_type)
        qv = self.initializer(f"{v.name}_quantized", q, graph)
        sv = self.initializer(f"{v.name}_scale", scale, graph)
        zv = self.initializer(f"{v.name}_zero_point", zp, graph)
        out = self.dequantize(node, qv, sv, zv, None, v.name or "const", a.shape)
        self.dq[v, graph] = out
        return out

    def weight_dq(self, first: ir.Node, w: ir.Value, axis: int | None) -> ir.Value:
        wa = _const(w)
        assert wa is not None
        base = w.name or "weight"
        q, scale = quantize_weight(wa, axis, self.run.qmax)
        graph = _graph(first)
        qv = self.initializer(f"{base}_quantized", q, graph)
        sv = self.initializer(f"{base}_scale", scale, graph)
        zv = self.initializer(f"{base}_zero_point", np.zeros(scale.shape, np.int8), graph)
        self.run.count("weights_quantized")
        return self.dequantize(first, qv, sv, zv, axis, base, wa.shape)

    def bias(self, node: ir.Node) -> None:
        """Conv/Gemm bias -> int32 with scale s_x * s_w, the scale of the int32 accumulator."""
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
            return
        b = _const(node.inputs[2])
        if b is None or b.dtype != np.float32 or b.ndim != 1:
            return
        if node.op_type == "Gemm" and (
            _attr(node, "beta", 1.0) != 1.0 or _attr(node, "alpha", 1.0) != 1.0
        ):
            return
        x_dq, w_dq = node.inputs[0].producer(), node.inputs[1].producer()  # type: ignore[union-attr]
        assert x_dq is not None and w_dq is not None
        sx = float(_const(x_dq.inputs[1]))  # type: ignore[arg-type]
        sw = _const(w_dq.inputs[1])
        assert sw is not None
        int32 = quantize_bias(b, sx, sw)
        if int32 is None:
            return
        q, scale = int32
        base = node.inputs[2].name or "bias"  # type: ignore[union-attr]
        graph = _graph(node)
        qv = self.initializer(f"{base}_quantized", q, graph)
        sv = self.initializer(f"{base}_scale", scale, graph)
        zv = self.initializer(f"{base}_zero_point", np.zeros(b.shape, np.int32), graph)
        old = node.inputs[2]
        assert old is not None
        node.replace_input_with(2, self.dequantize(node, qv, sv, zv, 0, base, b.shape))
        self.replaced.append(old)
        self.run.count("bias_int32")

    def table_dq(
        self, node: ir.Node, table: ir.Value
    ) -> tuple[ir.Value, tuple[ir.Value, ir.Value]]:
        a = _const(table)
        assert a is not None
        base = table.name or "table"
        q, scale, zp = quantize_table(a, self.run.act_type)
        graph = _graph(node)
        qv = self.initializer(f"{base}_quantized", q, graph)
        sv = self.initializer(f"{base}_scale", scale, graph)
        zv = self.initializer(f"{base}_zero_point", zp, graph)
        self.run.count("weights_quantized")
        return self.dequantize(node, qv, sv, zv, None, base, a.shape), (sv, zv)

    # ------------------------------------------------------------ housekeeping
    def drop_empty_roi(self, node: ir.Node) -> None:
        """An empty constant ``roi`` becomes an omitted input (optional from opset 13).

        Opset 11-12 Resize needs a roi input, so exporters and the version converter write an
        empty tensor. With integer convolutions around it, ONNX Runtime 1.31's NHWC layout
        pass moves the (float) Resize, permutes roi with a Gather and fails on the empty
        tensor ("indices element out of data bounds"): ddddocr's converted detector.
        """
        roi = node.inputs[1] if len(node.inputs) > 1 else None
        arr = _const(roi)
        if arr is not None and arr.size == 0:
            node.replace_input_with(1, None)
            self.run.count("resize_empty_roi_dropped")

    def drop_replaced(self) -> None:
        """Float constants that their int8 copies made unused leave the model."""
        for v in self.replaced:
            graph = v.graph  # the scope that holds the constant
            if graph is not None and not v.uses() and not v.is_graph_output():
                if graph.initializers.get(v.name or "") is v:
                    graph.initializers.pop(v.name)  # type: ignore[arg-type]

    def initializer(self, base: str, array: np.ndarray, graph: ir.Graph) -> ir.Value:
        """A new constant in ``graph``, the scope of the nodes that read it."""
        return add_initializer(graph, self.name(base), array)


def _graph(node: ir.Node) -> ir.Graph:
    assert node.graph is not None
    return node.graph
