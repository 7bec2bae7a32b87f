"""The boundary of an attention block, read from the graph: which softmax, which projections
of which input, the biases, scale, head counts, an added mask and the output value.

``inferred_attention`` proves what this reads before it rewrites anything; nothing here
changes the graph. A block is a Softmax over the last axis whose scores depend, through
layout, shape-arithmetic and scalar ops only, on two projections ``MatMul(x, W)`` of one
input x [B, S, C] (plus at most one added term that does not read x: a mask), whose
probabilities multiply a third projection of x, and whose context reaches a [B, S, H*D]
value through layout ops.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import onnx_ir as ir

from graphopt.ir import const_array as _const

# ops a block may contain between x and O besides the projections: layout, the run-time shape
# arithmetic exporters emit around it, biases and scales; anything else ends the search
_LAYOUT = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
_INSIDE = _LAYOUT | frozenset(
    {
        "Shape",
        "Gather",
        "Concat",
        "ReduceProd",
        "Max",
        "Min",
        "Cast",
        "Slice",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Sqrt",
        "Softmax",
        "MatMul",
        "Constant",
    }
)
_MAX_NODES = 400  # a block larger than this is not one attention
_MAX_CHAIN = 12  # layout ops between the softmax, the context MatMul and O


def std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.op_type in ops and node.domain in ("", "ai.onnx")


def _is_projection(node: ir.Node) -> bool:
    """MatMul of a computed activation by a constant 2-D weight."""
    if not std(node, "MatMul") or len(node.inputs) != 2:
        return False
    w = _const(node.inputs[1])
    return w is not None and w.ndim == 2 and _const(node.inputs[0]) is None


def walk(
    roots: list[ir.Value],
    stop: ir.Value | None,
    *,
    inputs: tuple[ir.Value, ...] = (),
    biases: list[ir.Value] | None = None,
    x: ir.Value | None = None,
) -> tuple[list[ir.Node], list[ir.Node], list[str]]:
    """Nodes above ``roots`` (to constants, projections, ``stop`` or ``inputs``): (nodes,
    projections, reasons it left the block). With ``stop`` None, projections end the walk
    and Shape nodes are not followed (their input may be x); with ``stop`` set, it goes to
    x. With ``biases`` given, an Add whose one operand does not depend on ``x`` (a mask or
    position bias) records that operand there instead of walking it."""
    nodes: list[ir.Node] = []
    projections: list[ir.Node] = []
    outside: list[str] = []
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        v = todo.pop()
        if v is None or v is stop or any(v is i for i in inputs) or v.const_value is not None:
            continue
        p = v.producer()
        if p is None:
            outside.append(f"reads graph input {v.name!r}")
            continue
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.domain not in ("", "ai.onnx") or p.op_type not in _INSIDE:
            outside.append(f"reads {p.op_type} {p.name!r}")
            continue
        nodes.append(p)
        if len(nodes) > _MAX_NODES:
            outside.append(f"more than {_MAX_NODES} nodes")
            break
        if _is_projection(p):
            projections.append(p)
            if stop is None:
                continue
        if stop is None and p.op_type == "Shape":
            continue
        if biases is not None and x is not None and std(p, "Add") and len(p.inputs) == 2:
            free = [i for i in p.inputs if _independent_of(i, x)]
            if len(free) == 1:
                biases.append(free[0])  # type: ignore[arg-type]
                todo.extend(i for i in p.inputs if i is not free[0] and i is not None)
                continue
        todo.extend(i for i in p.inputs if i is not None)
    return nodes, projections, outside


def _independent_of(v: ir.Value | None, x: ir.Value) -> bool:
    """Whether a computed value is reached from graph inputs without reading ``x``'s
    values (its shape may be read): what an additive mask or position bias is."""
    if v is None or v.const_value is not None or v is x:
        return False
    seen: set[int] = set()
    todo = [v]
    while todo:
        u = todo.pop()
        if u is x:
            return False
        p = u.producer()
        if p is None or id(p) in seen or u.const_value is not None:
            continue
        seen.add(id(p))
        if len(seen) > _MAX_NODES:
            return False
        if p.op_type != "Shape":
            todo.extend(i for i in p.inputs if i is not None)
    return True


def _next_in_chain(v: ir.Value) -> ir.Node | None:
    """The one consumer of ``v`` besides Shape nodes (None if there are several)."""
    if v.is_graph_output():
        return None
    users = [u.node for u in v.uses() if not std(u.node, "Shape")]
    return users[0] if len(users) == 1 else None


def _bias(mm: ir.Node, width: int) -> np.ndarray | None:
    """The constant Adds right after a projection (through Reshapes), summed to [width]."""
    total = np.zeros(width, np.float64)
    v = mm.outputs[0]
    for _ in range(_MAX_CHAIN):
        n = _next_in_chain(v)
        if std(n, "Reshape"):
            v = n.outputs[0]  # type: ignore[union-attr]
            continue
        if not std(n, "Add"):
            break
        other = n.inputs[1] if n.inputs[0] is v else n.inputs[0]  # type: ignore[union-attr]
        c = _const(other)
        if c is None:
            break
        if c.size != width:
            return None
        total += c.astype(np.float64).reshape(-1)
        v = n.outputs[0]  # type: ignore[union-attr]
    return total.astype(np.float32)


def _scale(nodes: list[ir.Node]) -> float:
    """Product of the float scalar Mul constants, over the float scalar Div constants."""
    scale = 1.0
    for n in nodes:
        if not std(n, "Mul", "Div"):
            continue
        for i, inp in enumerate(n.inputs):
            c = _const(inp)
            if c is None or c.size != 1 or c.dtype.kind != "f":
                continue
            if n.op_type == "Mul":
                scale *= float(c.reshape(-1)[0])
            elif i == 1:
                scale /= float(c.reshape(-1)[0])
    return scale


def _head_counts(nodes: list[ir.Node], width: int) -> list[int]:
    """Head counts the block's shapes suggest: dims h with h * (width // h) == width whose
    partner width // h sits next to them, most frequent first."""
    seen: Counter[int] = Counter()
    for n in nodes:
        dims: list[object] = []
        for out in n.outputs:
            if out.shape is not None:
                dims.extend(out.shape)
        if std(n, "Reshape"):
            c = _const(n.inputs[1])
            if c is not None:
                dims.extend(int(d) for d in c.reshape(-1))
        if std(n, "Concat"):  # a run-time target shape: [B, S] read, [H, D] constant
            dims.append(None)
            for i in n.inputs:
                c = _const(i)
                dims.extend([None] if c is None else (int(d) for d in c.reshape(-1)))
        for a, b in itertools.pairwise(dims):
            if not (isinstance(a, int) and isinstance(b, int)):
                continue
            if a == -1 and 1 < b < width and width % b == 0:  # [.., -1, D]: H is inferred
                a = width // b
            elif b == -1 and 1 < a < width and width % a == 0:  # [.., H, -1]
                b = width // a
            if 1 < a < width and a * b == width:
                seen[a] += 1
    return [h for h, _ in seen.most_common()]


def _forward(v: ir.Value, until: str) -> tuple[ir.Node | None, ir.Value]:
    """Follow single-consumer layout ops from ``v``: the first ``until`` node reached."""
    for _ in range(_MAX_CHAIN):
        n = _next_in_chain(v)
        if std(n, until):
            return n, v
        if n is None or not std(n, *_LAYOUT):
            return None, v
        v = n.outputs[0]
    return None, v


def _merged_output(v: ir.Value, width: int) -> ir.Value | None:
    """The first value from ``v`` on, through layout ops, of shape [B, S, width] (or of
    rank 3 with a run-time last dim that a [width, *] projection reads)."""
    for _ in range(_MAX_CHAIN):
        n = _next_in_chain(v)
        if n is None or not std(n, *_LAYOUT):
            return None
        v = n.outputs[0]
        if v.shape is None or len(v.shape) != 3:
            continue
        last = v.shape[2]
        if last == width:
            return v
        reader = _next_in_chain(v)
        if not isinstance(last, int) and reader is not None and _is_projection(reader):
            if _const(reader.inputs[1]).shape[0] == width:  # type: ignore[union-attr]
                return v
    return None


def read_block(softmax: ir.Node) -> dict | None:
    """The block around one softmax, before the functional check (None: not attention)."""
    scores = softmax.inputs[0]
    rank = len(scores.shape) if scores is not None and scores.shape is not None else None
    axis = softmax.attributes.get_int("axis", -1)
    if scores is None or not (axis == -1 or (rank is not None and axis == rank - 1)):
        return None
    score_nodes, qk, outside = walk([scores], stop=None)
    found: list[ir.Value] = []
    if outside and len(qk) == 2 and qk[0].inputs[0] is qk[1].inputs[0]:
        # something outside the block reaches the scores: a mask or position bias is
        # taken as attention_bias when it is added to them and does not read x
        score_nodes, qk, outside = walk([scores], None, biases=found, x=qk[0].inputs[0])
    if outside or len(qk) != 2 or len(found) > 1:
        return None
    if found and found[0].dtype not in (None, ir.DataType.FLOAT):
        return None
    x = qk[0].inputs[0]
    if qk[1].inputs[0] is not x or x is None or x.shape is None or len(x.shape) != 3:
        return None
    if x.dtype != ir.DataType.FLOAT:
        return None
    ctx, _ = _forward(softmax.outputs[0], "MatMul")
    if ctx is None:
        return None
    other = [i for i in ctx.inputs if i is not None]
    side = [i for i in other if i not in _walk_values(softmax.outputs[0], ctx)]
    if len(side) != 1:
        return None
    v_nodes, vp, outside = walk(side, stop=None)
    if outside or len(vp) != 1 or vp[0].inputs[0] is not x or vp[0] in qk:
        return None
    w = [_const(p.inputs[1]) for p in (*qk, vp[0])]
    width = w[0].shape[1]  # type: ignore[union-attr]
    if any(wi.shape != w[0].shape for wi in w) or w[0].shape[0] != x.shape[2]:  # type: ignore[union-attr]
        return None
    out = _merged_output(ctx.outputs[0], width)
    if out is None:
        return None
    biases = [_bias(p, width) for p in (*qk, vp[0])]
    if any(b is None for b in biases):
        return None
    heads = _head_counts(score_nodes + v_nodes, width)
    if not heads:
        return None
    return {
        "x": x,
        "out": out,
        "projections": [*qk, vp[0]],
        "weights": w,
        "biases": biases,
        "heads": heads,
        "scale": _scale(score_nodes),
        "bias": found[0] if found else None,
        "score_mm": next((n for n in score_nodes if std(n, "MatMul") and n not in qk), None),
    }


def _walk_values(start: ir.Value, end: ir.Node) -> set[ir.Value]:
    """Values on the layout chain from ``start`` to ``end`` (the softmax side of ctx)."""
    values = {start}
    v = start
    for _ in range(_MAX_CHAIN):
        n = _next_in_chain(v)
        if n is None or n is end:
            break
        v = n.outputs[0]
        values.add(v)
    return values
