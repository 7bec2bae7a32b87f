"""Multi-head attention recognised by what it computes, where no rule spells out its idiom.

onnxscript's rules and ``packed_attention`` match attention by its ops. Exporters keep
inventing new spellings: tf2onnx lowers Keras' ``MultiHeadAttention`` einsums to
Unsqueeze → Transpose → Reshape → MatMul → Reshape → Squeeze chains whose shapes are computed
at run time (Shape, Gather, ReduceProd, Max, Concat), with the biases added after the head
split. Instead of another pattern per exporter, this rule reads the block's boundary and then
proves its function:

- a Softmax over the last axis whose input depends, through layout, shape-arithmetic and
  scalar ops only, on exactly two projections ``MatMul(x, Wq)`` and ``MatMul(x, Wk)`` of one
  input ``x`` [B, S, C], plus at most one term added to the scores that does not read x's
  values (a padding mask or position bias, e.g. the TorchScript exporter's [B, 1, S, S]
  Where);
- its output, through layout ops, multiplied with a third projection ``MatMul(x, Wv)``;
- the product, through layout ops, reaching a value ``O`` of shape [B, S, H*D].

The biases are the constant Adds that follow each projection, the scale is the product of
the scalar Mul/Div constants on the score side and the head count comes from the shapes on
the way. The block from ``x`` to ``O`` is then cut out as a model of its own and run in
ONNX Runtime on random ``x`` (two sequences where the batch is free); only when it equals
multi-head attention with those parameters (a NumPy reference) within float tolerance is
``O`` rewritten as
``com.microsoft.Attention(x, [Wq|Wk|Wv], [bq|bk|bv])``, the added term (random, with keys
masked by the float minimum, in the proof) becoming its ``attention_bias``, expanded once to
[B, 1, S, S] as ORT requires. Masks applied otherwise (causal Wheres, a mask added before
the scale), constant relative position terms or head layouts other than (head, dim) fail
the check, and the block is left as it is; the old nodes go when nothing reads them any
more.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import onnx
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


def _std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.op_type in ops and node.domain in ("", "ai.onnx")


def _is_projection(node: ir.Node) -> bool:
    """MatMul of a computed activation by a constant 2-D weight."""
    if not _std(node, "MatMul") or len(node.inputs) != 2:
        return False
    w = _const(node.inputs[1])
    return w is not None and w.ndim == 2 and _const(node.inputs[0]) is None


def _walk(
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
        if biases is not None and x is not None and _std(p, "Add") and len(p.inputs) == 2:
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
    users = [u.node for u in v.uses() if not _std(u.node, "Shape")]
    return users[0] if len(users) == 1 else None


def _bias(mm: ir.Node, width: int) -> np.ndarray | None:
    """The constant Adds right after a projection (through Reshapes), summed to [width]."""
    total = np.zeros(width, np.float64)
    v = mm.outputs[0]
    for _ in range(_MAX_CHAIN):
        n = _next_in_chain(v)
        if _std(n, "Reshape"):
            v = n.outputs[0]  # type: ignore[union-attr]
            continue
        if not _std(n, "Add"):
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
        if not _std(n, "Mul", "Div"):
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
        if _std(n, "Reshape"):
            c = _const(n.inputs[1])
            if c is not None:
                dims.extend(int(d) for d in c.reshape(-1))
        if _std(n, "Concat"):  # a run-time target shape: [B, S] read, [H, D] constant
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
        if _std(n, until):
            return n, v
        if n is None or not _std(n, *_LAYOUT):
            return None, v
        v = n.outputs[0]
    return None, v


def _merged_output(v: ir.Value, width: int) -> ir.Value | None:
    """The first value from ``v`` on, through layout ops, of shape [B, S, width] (or of
    rank 3 with a run-time last dim that a [width, *] projection reads)."""
    for _ in range(_MAX_CHAIN):
        n = _next_in_chain(v)
        if n is None or not _std(n, *_LAYOUT):
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


def _run_block(
    model: ir.Model,
    x: ir.Value,
    out: ir.Value,
    order: dict[int, int],
    feeds: dict[ir.Value, np.ndarray],
) -> np.ndarray | None:
    """Run the nodes from ``x`` (and the bias, if any) to ``out`` as a model of their own."""
    import onnxruntime as ort

    extra = tuple(v for v in feeds if v is not x)
    nodes, _, outside = _walk([out], stop=x, inputs=extra)
    if outside:
        return None
    nodes.sort(key=lambda n: order.get(id(n), 1 << 30))
    inits: dict[str, onnx.TensorProto] = {}
    for n in nodes:
        for i in n.inputs:
            if i is not None and i.const_value is not None and i.producer() is None:
                tensor = ir.serde.serialize_tensor(i.const_value)  # type: ignore[arg-type]
                tensor.name = i.name  # the value's name, whatever the tensor was called
                inits[i.name] = tensor
    dims = [d if isinstance(d, int) else None for d in x.shape]  # type: ignore[union-attr]
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in nodes],
        "attention_block",
        [onnx.helper.make_tensor_value_info(x.name, onnx.TensorProto.FLOAT, dims)]
        + [onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None) for v in extra],
        [onnx.helper.make_tensor_value_info(out.name, onnx.TensorProto.FLOAT, None)],
        list(inits.values()),
    )
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {v.name: a for v, a in feeds.items()})[0])
    except Exception:  # a block ORT cannot run alone is not fused
        return None


def _reference(
    x: np.ndarray,
    w: list[np.ndarray],
    b: list[np.ndarray],
    heads: int,
    scale: float,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Multi-head attention in NumPy (float64): what ``com.microsoft.Attention`` computes,
    with ``bias`` ([B, 1, S, S]) added to the scaled scores."""
    batch, seq, _ = x.shape
    size = w[0].shape[1] // heads
    q, k, v = (
        (x.astype(np.float64) @ wi + bi).reshape(batch, seq, heads, size).transpose(0, 2, 1, 3)
        for wi, bi in zip(w, b, strict=True)
    )
    scores = scale * q @ k.transpose(0, 1, 3, 2)
    if bias is not None:
        scores = scores + bias.astype(np.float64)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * size)


def _match(softmax: ir.Node) -> dict | None:
    """The block around one softmax, before the functional check (None: not attention)."""
    scores = softmax.inputs[0]
    rank = len(scores.shape) if scores is not None and scores.shape is not None else None
    axis = softmax.attributes.get_int("axis", -1)
    if scores is None or not (axis == -1 or (rank is not None and axis == rank - 1)):
        return None
    score_nodes, qk, outside = _walk([scores], stop=None)
    found: list[ir.Value] = []
    if outside and len(qk) == 2 and qk[0].inputs[0] is qk[1].inputs[0]:
        # something outside the block reaches the scores: a mask or position bias is
        # taken as attention_bias when it is added to them and does not read x
        score_nodes, qk, outside = _walk([scores], None, biases=found, x=qk[0].inputs[0])
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
    v_nodes, vp, outside = _walk(side, stop=None)
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
        "score_mm": next((n for n in score_nodes if _std(n, "MatMul") and n not in qk), None),
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


def _prove(model: ir.Model, m: dict, order: dict[int, int]) -> tuple[list[int], int] | None:
    """(order of the q, k projections, heads) under which the block is attention, or None."""
    x: ir.Value = m["x"]
    batch = x.shape[0] if isinstance(x.shape[0], int) else 2  # type: ignore[index]
    seq = x.shape[1] if isinstance(x.shape[1], int) else 5  # type: ignore[index]
    rng = np.random.default_rng(0)
    feed = rng.standard_normal((batch, seq, int(m["weights"][0].shape[0]))).astype(np.float32)
    feeds = {x: feed}
    bias = None
    if m["bias"] is not None:
        # any additive bias, with keys masked as exporters do (the float minimum)
        bias = rng.standard_normal((batch, 1, seq, seq)).astype(np.float32)
        bias[-1, ..., seq // 2 :] = np.finfo(np.float32).min
        feeds[m["bias"]] = bias
    got = _run_block(model, x, m["out"], order, feeds)
    if got is None or got.shape != (batch, seq, m["weights"][0].shape[1]):
        return None
    # q is the projection on the score MatMul's left; try it first, then the other
    score_mm = m["score_mm"]
    first = 0
    if score_mm is not None:
        left, _, _ = _walk([score_mm.inputs[0]], stop=None)
        first = 0 if m["projections"][0] in left else 1
    for qk_order in ([first, 1 - first], [1 - first, first]):
        w = [m["weights"][qk_order[0]], m["weights"][qk_order[1]], m["weights"][2]]
        b = [m["biases"][qk_order[0]], m["biases"][qk_order[1]], m["biases"][2]]
        for heads in m["heads"]:
            want = _reference(feed, w, b, heads, m["scale"], bias)
            tol = 1e-4 * max(1.0, float(np.abs(want).max()))
            if np.allclose(got, want, rtol=1e-3, atol=tol):
                return [*qk_order, 2], heads
    return None


def _full_bias(graph: ir.Graph, bias: ir.Value, x: ir.Value, attn_at: ir.Value) -> ir.Value:
    """``bias`` as Attention's attention_bias: ORT wants [B or 1, H or 1, S, S], while
    exporters add masks that broadcast ([B, 1, 1, S]); Expand to [1, 1, S, S] is the same
    broadcast the Add did. Inserted before the first attention that reads it."""
    shape = bias.shape
    seq = x.shape[1] if x.shape is not None else None
    if shape is not None and len(shape) == 4 and seq is not None and shape[2] == seq == shape[3]:
        return bias
    anchor = attn_at.producer()
    base = bias.name or "attention_bias"
    x_shape = ir.node("Shape", [x], name=f"{base}_x_shape")
    one = ir.Value(name=f"{base}_seq_index", const_value=ir.tensor(np.array([1], np.int64)))
    ones = ir.Value(name=f"{base}_ones", const_value=ir.tensor(np.array([1, 1], np.int64)))
    graph.register_initializer(one)
    graph.register_initializer(ones)
    seq_len = ir.node("Gather", [x_shape.outputs[0], one], attributes={"axis": 0})
    target = ir.node(
        "Concat", [ones, seq_len.outputs[0], seq_len.outputs[0]], attributes={"axis": 0}
    )
    expand = ir.node("Expand", [bias, target.outputs[0]], name=f"{base}_expanded")
    for n in (x_shape, seq_len, target, expand):
        graph.insert_before(anchor, n)  # type: ignore[arg-type]
    expand.outputs[0].name = f"{base}_expanded"
    expand.outputs[0].type = bias.type
    return expand.outputs[0]


def fuse_inferred_attention(model: ir.Model, **_: object) -> int:
    """Rewrite every softmax block proven to be multi-head attention; returns how many."""
    graph = model.graph
    order = {id(n): i for i, n in enumerate(graph)}
    expanded: dict[int, ir.Value] = {}
    count = 0
    for softmax in [n for n in graph if _std(n, "Softmax")]:
        if softmax.graph is not graph:
            continue
        m = _match(softmax)
        if m is None:
            continue
        proof = _prove(model, m, order)
        if proof is None:
            continue
        idx, heads = proof
        width = int(m["weights"][0].shape[1])
        size = width // heads
        w = np.concatenate([m["weights"][i] for i in idx], axis=1).astype(np.float32)
        b = np.concatenate([m["biases"][i] for i in idx]).astype(np.float32)
        out: ir.Value = m["out"]
        base = out.name or f"attention_{count}"
        w_val = ir.Value(name=f"{base}_qkv_weight", const_value=ir.tensor(w))
        b_val = ir.Value(name=f"{base}_qkv_bias", const_value=ir.tensor(b))
        graph.register_initializer(w_val)
        graph.register_initializer(b_val)
        attrs: dict[str, object] = {"num_heads": heads}
        if abs(m["scale"] - 1.0 / np.sqrt(size)) > 1e-6 * abs(m["scale"]):
            attrs["scale"] = float(m["scale"])
        inputs = [m["x"], w_val, b_val]
        if m["bias"] is not None:
            if id(m["bias"]) not in expanded:
                expanded[id(m["bias"])] = _full_bias(graph, m["bias"], m["x"], attn_at=out)
            inputs += [None, None, expanded[id(m["bias"])]]
        attn = ir.node(
            "Attention",
            inputs,
            attributes=attrs,
            domain="com.microsoft",
            name=f"{base}_attention",
        )
        graph.insert_after(out.producer(), attn)  # type: ignore[arg-type]
        attn.outputs[0].shape = out.shape
        attn.outputs[0].type = out.type
        ir.convenience.replace_all_uses_with(out, attn.outputs[0])
        if out.is_graph_output():
            graph.outputs[graph.outputs.index(out)] = attn.outputs[0]
            out.name = f"{base}_unfused"
            attn.outputs[0].name = base
        count += 1
    if count:
        model.opset_imports.setdefault("com.microsoft", 1)
    return count
