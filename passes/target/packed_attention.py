"""Attention with one packed q/k/v projection, as paddle2onnx writes it, as ORT's ``Attention``.

onnxscript's rules match the PyTorch exporters' attention (three projections, or SDPA); the
SVTR blocks of PP-OCR's recognizers (paddle2onnx) project q, k and v with one MatMul and
split them with a Reshape to [batch, seq, 3, heads, head_size] and a Transpose
(2, 0, 3, 1, 4), then Slice + Squeeze (or Gather) along the first axis::

    qkv = Transpose(Reshape(MatMul(x, W) + b, [0, S, 3, N, D]), perm=[2, 0, 3, 1, 4])
    q, k, v = qkv[0], qkv[1], qkv[2]
    ctx = Softmax((q * s) @ Transpose(k, [0, 1, 3, 2])) @ v
    out = Reshape(Transpose(ctx, [0, 2, 1, 3]), [0, S, N * D])

W's columns are ordered (q|k|v, head, dim): exactly the packed weight
``com.microsoft.Attention`` takes, so the whole block is ``Attention(x, W, b)`` with
``num_heads = N`` and ``scale = s``. The Softmax may be written for opset < 13 as
Reshape(Softmax(Flatten(scores)), Shape(scores)). Nothing is assumed beyond what is matched:
every intermediate is read once, the weights are constants of the right shapes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.ir import const_array as _const


def _std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.op_type in ops and node.domain in ("", "ai.onnx")


def _only_use(v: ir.Value | None) -> ir.Node | None:
    """The one node reading ``v`` (None when it is read more than once or is an output)."""
    if v is None or v.is_graph_output():
        return None
    uses = list(v.uses())
    return uses[0].node if len(uses) == 1 else None


def _perm(node: ir.Node) -> tuple[int, ...]:
    attr = node.attributes.get("perm")
    return tuple(attr.value) if attr is not None else ()


def _scalar(v: ir.Value | None) -> float | None:
    c = _const(v)
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


def _softmax_of(scores: ir.Value) -> tuple[ir.Value, list[ir.Node]] | None:
    """The softmax over the last axis of ``scores``: (its output, its nodes)."""
    user = _only_use(scores)
    if _std(user, "Softmax"):
        axis = user.attributes.get_int("axis", -1)  # type: ignore[union-attr]
        if axis in (-1, 3):
            return user.outputs[0], [user]  # type: ignore[union-attr]
        return None
    # opset < 13: Reshape(Softmax(Flatten(scores, axis=3)), Shape(scores)); the Shape may
    # have been folded into a constant where the scores' shape is static
    users = [u.node for u in scores.uses()]
    flatten = next((n for n in users if _flattens_to_rows(n, scores)), None)
    shape = next((n for n in users if _std(n, "Shape")), None)
    if flatten is None or len(users) != 1 + (shape is not None):
        return None
    softmax = _only_use(flatten.outputs[0])
    if not _std(softmax, "Softmax") or softmax.attributes.get_int("axis", 1) not in (1, -1):  # type: ignore[union-attr]
        return None
    reshape = _only_use(softmax.outputs[0])  # type: ignore[union-attr]
    if not _std(reshape, "Reshape"):
        return None
    target = reshape.inputs[1]  # type: ignore[union-attr]
    if shape is not None:
        if target is not shape.outputs[0]:
            return None
    else:
        dims = list(scores.shape) if scores.shape is not None else []
        folded = _const(target)
        if folded is None or not all(isinstance(d, int) for d in dims):
            return None
        if [int(d) for d in folded.reshape(-1)] != dims:
            return None
    nodes = [flatten, softmax, reshape] + ([shape] if shape is not None else [])
    return reshape.outputs[0], nodes  # type: ignore[union-attr,list-item]


def _flattens_to_rows(node: ir.Node, scores: ir.Value) -> bool:
    """Flatten(scores, axis=3), or the Reshape to [rows, last] onnxscript folds it into."""
    if _std(node, "Flatten"):
        return node.attributes.get_int("axis", 1) == 3
    if not _std(node, "Reshape") or node.inputs[0] is not scores:
        return False
    target = _const(node.inputs[1])
    last = scores.shape[-1] if scores.shape is not None and len(scores.shape) == 4 else None
    if target is None or target.size != 2 or not isinstance(last, int):
        return False
    return int(target.reshape(-1)[1]) == last


def _split_index(v: ir.Value | None) -> tuple[int, ir.Value, list[ir.Node]] | None:
    """``v`` = T[i] for T split on axis 0 by Squeeze(Slice) or Gather: (i, T, nodes)."""
    p = v.producer() if v is not None else None
    if _std(p, "Gather") and p.attributes.get_int("axis", 0) == 0:  # type: ignore[union-attr]
        i = _scalar(p.inputs[1])  # type: ignore[union-attr]
        return (int(i), p.inputs[0], [p]) if i is not None else None  # type: ignore[union-attr,list-item]
    if not _std(p, "Squeeze"):
        return None
    axes = _const(p.inputs[1]) if len(p.inputs) > 1 else None  # type: ignore[union-attr]
    if axes is None:
        attr = p.attributes.get("axes")  # type: ignore[union-attr]
        axes = np.asarray(attr.value) if attr is not None else None
    if axes is None or list(np.asarray(axes).reshape(-1)) != [0]:
        return None
    s = p.inputs[0].producer()  # type: ignore[union-attr]
    if not _std(s, "Slice") or _only_use(s.outputs[0]) is not p:  # type: ignore[union-attr]
        return None
    starts, ends = _const(s.inputs[1]), _const(s.inputs[2])  # type: ignore[union-attr]
    axes_s = _const(s.inputs[3]) if len(s.inputs) > 3 else np.array([0])  # type: ignore[union-attr]
    steps = _const(s.inputs[4]) if len(s.inputs) > 4 else np.array([1])  # type: ignore[union-attr]
    if any(a is None or a.size != 1 for a in (starts, ends, axes_s, steps)):
        return None
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])  # type: ignore[union-attr]
    if int(axes_s.reshape(-1)[0]) != 0 or int(steps.reshape(-1)[0]) != 1 or end != start + 1:  # type: ignore[union-attr]
        return None
    return start, s.inputs[0], [s, p]  # type: ignore[union-attr,list-item,return-value]


def _packed_projection(
    qkv: ir.Value,
) -> tuple[ir.Value, ir.Value, ir.Value, int, int, list[ir.Node]] | None:
    """Transpose(Reshape(MatMul(x, W) + b, [0, S, 3, N, D]), (2, 0, 3, 1, 4)) above ``qkv``:
    (x, W, b, N, D, nodes)."""
    t = qkv.producer()
    if not _std(t, "Transpose") or _perm(t) != (2, 0, 3, 1, 4):  # type: ignore[arg-type]
        return None
    r = t.inputs[0].producer()  # type: ignore[union-attr]
    if not _std(r, "Reshape") or _only_use(r.outputs[0]) is not t:  # type: ignore[union-attr]
        return None
    shape = r.outputs[0].shape  # type: ignore[union-attr]
    if shape is None or len(shape) != 5 or shape[2] != 3:
        return None
    heads, size = shape[3], shape[4]
    if not isinstance(heads, int) or not isinstance(size, int):
        return None
    add = r.inputs[0].producer()  # type: ignore[union-attr]
    if not _std(add, "Add") or _only_use(add.outputs[0]) is not r:  # type: ignore[union-attr]
        return None
    mm, bias = None, None
    for i in (0, 1):
        p = add.inputs[i].producer()  # type: ignore[union-attr]
        if _std(p, "MatMul") and _const(add.inputs[1 - i]) is not None:  # type: ignore[union-attr]
            mm, bias = p, add.inputs[1 - i]  # type: ignore[union-attr]
    if mm is None or bias is None or _only_use(mm.outputs[0]) is not add:
        return None
    w, b = _const(mm.inputs[1]), _const(bias)
    hidden = heads * size
    if (
        w is None
        or b is None
        or w.ndim != 2
        or w.shape[1] != 3 * hidden
        or b.shape != (3 * hidden,)
    ):
        return None
    x = mm.inputs[0]
    if x is None or x.shape is None or len(x.shape) != 3:
        return None
    return x, mm.inputs[1], bias, heads, size, [mm, add, r, t]  # type: ignore[return-value]


def _match(softmax_out: ir.Value, scores_mm: ir.Node) -> dict | None:
    """Everything around one softmax, or None where the block is not the packed form."""
    # scores = (q * s) @ Transpose(k, (0, 1, 3, 2)), the scale maybe on q or on the scores
    q_side, k_side = scores_mm.inputs
    scale = 1.0
    nodes: list[ir.Node] = [scores_mm]
    qp = q_side.producer() if q_side is not None else None
    if _std(qp, "Mul", "Div") and _only_use(q_side) is scores_mm:
        for i in (0, 1):
            c = _scalar(qp.inputs[1 - i])  # type: ignore[union-attr]
            if c is not None and (qp.op_type == "Mul" or i == 0):  # type: ignore[union-attr]
                scale = c if qp.op_type == "Mul" else 1.0 / c  # type: ignore[union-attr]
                q_side = qp.inputs[i]  # type: ignore[union-attr]
                nodes.append(qp)  # type: ignore[arg-type]
                break
    kt = k_side.producer() if k_side is not None else None
    if not _std(kt, "Transpose") or _perm(kt) != (0, 1, 3, 2) or _only_use(k_side) is not scores_mm:  # type: ignore[arg-type]
        return None
    nodes.append(kt)  # type: ignore[arg-type]
    ctx_mm = _only_use(softmax_out)
    if not _std(ctx_mm, "MatMul") or ctx_mm.inputs[0] is not softmax_out:  # type: ignore[union-attr]
        return None
    split = [_split_index(v) for v in (q_side, kt.inputs[0], ctx_mm.inputs[1])]  # type: ignore[union-attr]
    if any(s is None for s in split) or [s[0] for s in split] != [0, 1, 2]:  # type: ignore[index]
        return None
    packed = split[0][1]  # type: ignore[index]
    if any(s[1] is not packed for s in split):  # type: ignore[index]
        return None
    if any(_only_use(s[2][-1].outputs[0]) is None for s in split):  # type: ignore[index]
        return None
    proj = _packed_projection(packed)
    if proj is None or len(list(packed.uses())) != 3:
        return None
    x, w, b, heads, size, proj_nodes = proj
    # out = Reshape(Transpose(ctx, (0, 2, 1, 3)), [0, S, N * D])
    t = _only_use(ctx_mm.outputs[0])  # type: ignore[union-attr]
    if not _std(t, "Transpose") or _perm(t) != (0, 2, 1, 3):  # type: ignore[arg-type]
        return None
    r = _only_use(t.outputs[0])  # type: ignore[union-attr]
    if not _std(r, "Reshape"):
        return None
    out_shape = r.outputs[0].shape  # type: ignore[union-attr]
    if out_shape is None or len(out_shape) != 3 or out_shape[2] != heads * size:
        return None
    for s in split:
        nodes += s[2]  # type: ignore[index]
    return {
        "x": x,
        "w": w,
        "b": b,
        "heads": heads,
        "scale": scale,
        "size": size,
        "out": r.outputs[0],  # type: ignore[union-attr]
        "nodes": [*proj_nodes, *nodes, ctx_mm, t, r],
    }


def fuse_packed_attention(model: ir.Model, **_: object) -> int:
    """Rewrite every matched block as ``com.microsoft.Attention``; returns how many."""
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.graph is None or not _std(node, "MatMul"):
            continue
        scores = node.outputs[0]
        soft = _softmax_of(scores)
        if soft is None:
            continue
        m = _match(soft[0], node)
        if m is None:
            continue
        attrs: dict[str, object] = {"num_heads": m["heads"]}
        if abs(m["scale"] - 1.0 / np.sqrt(m["size"])) > 1e-6 * abs(m["scale"]):
            attrs["scale"] = float(m["scale"])
        out = m["out"]
        attn = ir.node(
            "Attention",
            [m["x"], m["w"], m["b"]],
            attributes=attrs,
            domain="com.microsoft",
            name=f"{out.name}_attention",
        )
        last = m["nodes"][-1]
        graph.insert_after(last, attn)
        attn.outputs[0].shape = out.shape
        attn.outputs[0].type = out.type
        ir.convenience.replace_all_uses_with(out, attn.outputs[0])
        if out.is_graph_output():
            idx = graph.outputs.index(out)
            graph.outputs[idx] = attn.outputs[0]
            name = out.name
            out.name = f"{name}_unfused"
            attn.outputs[0].name = name
        dead = [*m["nodes"], *soft[1]]
        graph.remove([n for n in dead if n.graph is graph], safe=False)
        count += 1
    if count:
        model.opset_imports.setdefault("com.microsoft", 1)
    return count
