"""fold-attention-biases: attention's key bias is dropped and its value bias moves past it.

Two identities of softmax attention, P = softmax_j(q . k_j^T + m_j), ctx = P . V:

* **Key bias.** With k_j = x_j Wk + bk, the scores gain q . bk^T, the same for every key j
  of a query row, and softmax over j ignores a per-row constant. The bias Add is removed.
* **Value bias.** Each row of P sums to 1, so P . (V + bv) = P . V + bv: the bias leaves
  attention unchanged, and after the heads are merged it meets the output projection,
  (ctx + bv) Wo + bo = ctx Wo + (bv Wo + bo). The bias Add is removed and bo absorbs bv Wo.

That is two elementwise Adds less per layer (in int8 models two requantizing QLinearAdds),
exact up to float reassociation. Patterns are matched structurally (Softmax over the last
axis; between the scores MatMul and the Softmax only scalar Div/Mul and Adds such as the
mask; between the bias Add and the attention MatMul only Reshape/Transpose; every
intermediate read once), and then *proven*: the rewritten model must reproduce the original's
outputs on two inputs (DATA when given, else random ones) within the reassociation
tolerance, or nothing is changed and the report says why.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import ir as gir
from graphopt import runtime
from graphopt.core.build import Namer, add_initializer, drop_if_unused
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import register_pass
from graphopt.errors import DataError
from graphopt.inputs import data
from graphopt.ir import Pristine
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const

_MOVEMENT = ("Reshape", "Transpose")


def _std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.op_type in ops and node.domain in ("", "ai.onnx")


def _single_use(v: ir.Value | None) -> bool:
    return v is not None and len(v.uses()) == 1 and not v.is_graph_output()


def _scalar(v: ir.Value | None) -> bool:
    c = _const(v)
    return c is not None and c.size == 1


def _weighted_matmul(v: ir.Value | None) -> bool:
    p = v.producer() if v is not None else None
    return _std(p, "MatMul") and _const(p.inputs[1]) is not None  # type: ignore[union-attr]


def _bias_add(v: ir.Value | None) -> tuple[ir.Node, int] | None:
    """Walk up single-use Reshape/Transpose from ``v`` to ``MatMul(x, W) + b``: (Add, b index)."""
    while v is not None and _single_use(v):
        p = v.producer()
        if _std(p, *_MOVEMENT):
            v = p.inputs[0]  # type: ignore[union-attr]
            continue
        if not _std(p, "Add") or len(p.inputs) != 2:  # type: ignore[union-attr]
            return None
        for i in (0, 1):
            b = _const(p.inputs[i])  # type: ignore[union-attr]
            if b is not None and b.ndim == 1 and _weighted_matmul(p.inputs[1 - i]):  # type: ignore[union-attr]
                return p, i  # type: ignore[return-value]
        return None
    return None


def _scores_matmul(softmax: ir.Node, depth: int = 6) -> ir.Node | None:
    """The MatMul of two activations whose output reaches ``softmax`` through scalar
    Div/Mul and Adds (the mask), each read once."""
    v = softmax.inputs[0]
    for _ in range(depth):
        if not _single_use(v):
            return None
        p = v.producer()  # type: ignore[union-attr]
        if _std(p, "MatMul") and all(_const(i) is None for i in p.inputs):  # type: ignore[union-attr]
            return p
        if _std(p, "Div", "Mul") and _scalar(p.inputs[1]):  # type: ignore[union-attr]
            v = p.inputs[0]  # type: ignore[union-attr]
        elif _std(p, "Add") and len(p.inputs) == 2:  # type: ignore[union-attr]
            # follow the operand that comes from a MatMul through this kind of chain
            a, b = p.inputs  # type: ignore[union-attr]
            v = a if _reaches_matmul(a, depth) else b
        else:
            return None
    return None


def _reaches_matmul(v: ir.Value | None, depth: int) -> bool:
    for _ in range(depth):
        p = v.producer() if v is not None else None
        if _std(p, "MatMul"):
            return True
        if not _std(p, "Div", "Mul", "Add"):
            return False
        v = p.inputs[0]  # type: ignore[union-attr]
    return False


def _last_axis_softmax(node: ir.Node, opset: int) -> bool:
    if not _std(node, "Softmax"):
        return False
    axis = _attr(node, "axis", -1 if opset >= 13 else 1)
    x = node.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    return axis == -1 or (rank is not None and axis == rank - 1)


def _output_projection(v: ir.Value) -> tuple[ir.Node, ir.Node, int] | None:
    """Down from the context through single-use Reshape/Transpose to MatMul(ctx, Wo) + bo."""
    while _single_use(v):
        use = next(iter(v.uses()))
        n = use.node
        if _std(n, *_MOVEMENT) and use.idx == 0:
            v = n.outputs[0]
            continue
        if _std(n, "MatMul") and use.idx == 0 and _const(n.inputs[1]) is not None:
            y = n.outputs[0]
            if not _single_use(y):
                return None
            add = next(iter(y.uses())).node
            if _std(add, "Add") and len(add.inputs) == 2:
                for i in (0, 1):
                    if add.inputs[i] is not y and _const(add.inputs[i]) is not None:
                        return n, add, i
        return None
    return None


@register_pass
class FoldAttentionBiasesPass(GraphoptPass):
    name = "fold-attention-biases"
    tolerance = Tolerance.reassociation()
    summary = "drop attention's key bias and fold its value bias into the output projection"

    def run(self, model: ir.Model) -> bool:
        trial = Pristine(model).copy()
        keys, values = self._rewrite(trial)
        if not keys and not values:
            return False
        ok, why = self._proven(model, trial)
        if not ok:
            self.count("not_applied")
            self.details["not_applied"] = why
            return False
        self._rewrite(model)  # the same deterministic match on the real model
        self.count("key_bias_dropped", keys)
        self.count("value_bias_moved", values)
        return True

    def _rewrite(self, model: ir.Model) -> tuple[int, int]:
        graph = model.graph
        opset = gir.ai_onnx_opset(model)
        keys: list[tuple[ir.Node, int]] = []
        values: list[tuple[ir.Node, int, ir.Node, ir.Node, int]] = []
        for s in graph:
            if not _last_axis_softmax(s, opset):
                continue
            mm = _scores_matmul(s)
            k = _bias_add(mm.inputs[1]) if mm is not None else None
            if k is not None:
                keys.append(k)
            uses = list(s.outputs[0].uses())
            if len(uses) == 1 and _std(uses[0].node, "MatMul") and uses[0].idx == 0:
                pv = uses[0].node
                v = _bias_add(pv.inputs[1])
                proj = _output_projection(pv.outputs[0])
                if v is not None and proj is not None:
                    values.append((*v, *proj))
        namer = Namer(graph)
        for add, i in keys:
            _drop(graph, add, i)
        moved = sum(_move_value_bias(graph, namer, *v) for v in values)
        return len(keys), moved

    def _proven(self, original: ir.Model, trial: ir.Model) -> tuple[bool, str]:
        """The trial's outputs against the original's, on two inputs (DATA or random)."""
        samples = self.context.data
        if samples is not None:
            feeds = list(samples.feeds[:2])
        else:
            try:
                feeds = data.random_feeds(original, count=2, seed=0, dims={"*": 4}).feeds
            except DataError as exc:  # an input without a shape: nothing to prove it on
                return False, f"cannot prove without DATA: {exc}"
        before = runtime.run_feeds(runtime.make_session(original, optimize=False), feeds)
        after = runtime.run_feeds(runtime.make_session(trial, optimize=False), feeds)
        for fa, fb in zip(after, before, strict=True):
            for a, b in zip(fa, fb, strict=True):
                if a.dtype.kind != "f":
                    if not np.array_equal(a, b):
                        return False, "an integer output changed"
                    continue
                ok, metrics = self.tolerance.check(a, b)
                if not ok:
                    return False, f"outputs moved beyond the reassociation tolerance: {metrics}"
        return True, ""


def _drop(graph: ir.Graph, add: ir.Node, bias_index: int) -> None:
    x = add.inputs[1 - bias_index]
    assert x is not None
    ir.convenience.replace_all_uses_with(add.outputs[0], x)
    graph.remove(add, safe=True)


def _move_value_bias(
    graph: ir.Graph, namer: Namer, add: ir.Node, i: int, wo_mm: ir.Node, bo_add: ir.Node, j: int
) -> bool:
    """bo += bv @ Wo, then the bv Add goes."""
    bv, wo, bo = _const(add.inputs[i]), _const(wo_mm.inputs[1]), _const(bo_add.inputs[j])
    if bv is None or wo is None or bo is None or wo.ndim != 2 or bv.shape != (wo.shape[0],):
        return False
    if bo.shape not in ((wo.shape[1],), (1, wo.shape[1])) or bo.dtype != np.float32:
        return False
    new = bo.astype(np.float64).reshape(-1) + bv.astype(np.float64) @ wo.astype(np.float64)
    old = bo_add.inputs[j]
    name = namer(f"{old.name or 'bias'}_with_value_bias")  # type: ignore[union-attr]
    bo_add.replace_input_with(
        j, add_initializer(graph, name, new.astype(np.float32).reshape(bo.shape))
    )
    drop_if_unused(graph, old)
    _drop(graph, add, i)
    return True
