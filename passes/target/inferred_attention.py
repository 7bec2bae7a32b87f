"""Multi-head attention recognised by what it computes, where no rule spells out its idiom.

onnxscript's rules and ``packed_attention`` match attention by its ops. Exporters keep
inventing new spellings: tf2onnx lowers Keras' ``MultiHeadAttention`` einsums to
Unsqueeze → Transpose → Reshape → MatMul → Reshape → Squeeze chains whose shapes are computed
at run time (Shape, Gather, ReduceProd, Max, Concat), with the biases added after the head
split. Instead of another pattern per exporter, this rule reads the block's boundary
(``attention_boundary``) and then proves its function:

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

import numpy as np
import onnx
import onnx_ir as ir
from graphopt.passes.target import attention_boundary as boundary


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
    nodes, _, outside = boundary.walk([out], stop=x, inputs=extra)
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
        left, _, _ = boundary.walk([score_mm.inputs[0]], stop=None)
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
    # unknown dims compare equal in onnx_ir: only a named or fixed S proves [.., S, S]
    known = isinstance(seq, int) or getattr(seq, "value", None) is not None
    if shape is not None and len(shape) == 4 and known and shape[2] == seq == shape[3]:
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
    for softmax in [n for n in graph if boundary.std(n, "Softmax")]:
        if softmax.graph is not graph:
            continue
        m = boundary.read_block(softmax)
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
