"""Removing channels from the graph: the rewrite that follows a channel analysis.

Given the :class:`.channel_layout.Analysis` of a graph and, per space, the channel indices to
keep, :func:`apply` cuts the producers' output channels, the sinks' input rows, the sliced
per-channel parameters, depthwise Convs, Reshape targets and Split sizes, and the recorded
value shapes, all consistently. Weights other nodes share are copied first, so only the
pruned layer changes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.channel_layout import CHANNELS_KEY, Analysis, Layout
from graphopt.passes.sparsify.channel_shapes import shape_slot

from graphopt.core.build import Namer, add_initializer
from graphopt.ir import attr_value


def _own(
    graph: ir.Graph, namer: Namer, node: ir.Node, index: int, owned: set[ir.Value]
) -> ir.Value:
    """Input ``index`` of ``node`` as an initializer only this node reads (copied if shared)."""
    v = node.inputs[index]
    assert v is not None and v.const_value is not None
    if v in owned:
        return v
    readers = {id(user) for user, _ in v.uses()}
    if len(readers) > 1 or v.is_graph_output() or v.name not in graph.initializers:
        copy = add_initializer(graph, namer(f"{v.name or 'const'}_pruned"), v.const_value.numpy())
        node.replace_input_with(index, copy)
        v = copy
    owned.add(v)
    return v


def _own_target(graph: ir.Graph, namer: Namer, reshape: ir.Node) -> None:
    """Give a Reshape whose computed target other nodes share a Concat of its own.

    Common-subexpression elimination merges the identical ``[batch, seq, heads, head_dim]``
    of every layer into one Concat; a layer that loses heads must not change the others'.
    """
    target = reshape.inputs[1]
    concat = target.producer() if target is not None else None
    if concat is None or concat.op_type != "Concat":
        return
    if len(target.uses()) == 1 and not target.is_graph_output():
        return
    clone = ir.node(
        "Concat",
        list(concat.inputs),
        attributes={"axis": 0},
        name=namer(f"{concat.name or 'Concat'}_pruned"),
    )
    clone.outputs[0].name = namer(f"{target.name}_pruned")
    clone.outputs[0].dtype = target.dtype
    clone.outputs[0].shape = target.shape
    graph.insert_before(reshape, clone)
    reshape.replace_input_with(1, clone.outputs[0])


def _take(v: ir.Value, axis: int, idx: np.ndarray) -> None:
    assert v.const_value is not None
    arr = np.take(v.const_value.numpy(), idx, axis=axis)
    v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
    v.shape = ir.Shape(arr.shape)


def apply(
    graph: ir.Graph,
    analysis: Analysis,
    kept: dict[int, np.ndarray],
    *,
    silenced: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Remove every channel not in ``kept`` (space id -> sorted kept indices) from the graph.

    Spaces absent from ``kept`` keep all their channels. Returns counts for the report.
    First the rows that read removed channels are zeroed in every sink (they are cut a moment
    later, so this changes nothing in the result); ``silenced`` is called at that point, when
    the model is the exact reference the pruned one must reproduce.
    """
    kept = analysis.complete({s: np.asarray(k, np.int64) for s, k in kept.items()})
    namer = Namer(graph)
    owned: set[ir.Value] = set()
    stats: dict[str, int] = defaultdict(int)
    pruned = {s for s, k in kept.items() if len(k) < analysis.spaces[s].size}
    if not pruned:
        return dict(stats)

    def touches(layout: Layout) -> bool:
        return any(s in pruned for s in layout.spaces())

    if silenced is not None:
        for sink in analysis.sinks:
            if touches(sink.layout):
                w = _own(graph, namer, sink.node, 1, owned)
                assert w.const_value is not None
                arr = w.const_value.numpy().copy()
                drop = np.ones(arr.shape[sink.weight_axis], bool)
                drop[sink.layout.kept_indices(kept)] = False
                index: list[Any] = [slice(None)] * arr.ndim
                index[sink.weight_axis] = drop
                arr[tuple(index)] = 0
                w.const_value = ir.tensor(arr, name=w.name)
        silenced()

    # producers: output channels (a split's parts are cut through the space they came from)
    for s in sorted(pruned):
        space = analysis.spaces[s]
        if space.whole is not None:
            continue
        node, idx = space.producer, kept[s]
        op = node.op_type
        if op == "Conv":
            _take(_own(graph, namer, node, 1, owned), 0, idx)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                _take(_own(graph, namer, node, 2, owned), 0, idx)
        elif op == "Gemm":
            trans_b = int(attr_value(node, "transB", 0))  # type: ignore[arg-type]
            _take(_own(graph, namer, node, 1, owned), 0 if trans_b else 1, idx)
            c = node.inputs[2] if len(node.inputs) > 2 else None
            if c is not None and c.const_value is not None:
                arr = c.const_value.numpy()
                if arr.shape and arr.shape[-1] == space.size and space.size > 1:
                    _take(_own(graph, namer, node, 2, owned), arr.ndim - 1, idx)
        elif op == "MatMul":
            _take(_own(graph, namer, node, 1, owned), 1, idx)
        prev = node.metadata_props.get(CHANNELS_KEY)
        original = json.loads(prev) if prev else {"original": space.size, "kept": None}
        base = np.asarray(original["kept"] if original["kept"] is not None else range(space.size))
        original["kept"] = [int(i) for i in base[idx]]
        node.metadata_props[CHANNELS_KEY] = json.dumps(original, separators=(",", ":"))
        stats["channels_removed"] += space.size - len(idx)
        stats["layers_pruned"] += 1
    # sinks: input rows
    for sink in analysis.sinks:
        if touches(sink.layout):
            _take(
                _own(graph, namer, sink.node, 1, owned),
                sink.weight_axis,
                sink.layout.kept_indices(kept),
            )
            stats["sinks_resized"] += 1
    for sl in analysis.slices:
        if touches(sl.layout):
            _take(
                _own(graph, namer, sl.node, sl.index, owned), sl.axis, sl.layout.kept_indices(kept)
            )
            stats["parameters_sliced"] += 1
    for node, layout in analysis.depthwise:
        if touches(layout):
            idx = layout.kept_indices(kept)
            _take(_own(graph, namer, node, 1, owned), 0, idx)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                _take(_own(graph, namer, node, 2, owned), 0, idx)
            node.attributes["group"] = ir.AttrInt64("group", len(idx))
            stats["depthwise_resized"] += 1
    for node, out_axis, layout in analysis.reshapes:
        if not touches(layout):
            continue
        _own_target(graph, namer, node)
        slot = shape_slot(node, out_axis)
        if slot is None:
            continue
        holder, index, element = slot
        shape_v = _own(graph, namer, holder, index, owned)
        assert shape_v.const_value is not None
        target = shape_v.const_value.numpy().copy()
        if target[element] not in (0, -1):
            target[element] = layout.new_length(kept)
            shape_v.const_value = ir.tensor(target, name=shape_v.name)
            stats["reshapes_fixed"] += 1
    for node, x in analysis.splits:
        if not touches(x):
            continue
        ((whole, _),) = x.segments
        sizes = [len(kept.get(p, range(analysis.spaces[p].size))) for p in analysis.parts[whole]]
        rec = node.metadata_props.get(CHANNELS_KEY)
        original = (
            json.loads(rec)["original"]
            if rec
            else [analysis.spaces[p].size for p in analysis.parts[whole]]
        )
        node.metadata_props[CHANNELS_KEY] = json.dumps({"original": original})
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            v = _own(graph, namer, node, 1, owned)
            v.const_value = ir.tensor(np.asarray(sizes, np.int64), name=v.name)
        else:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
        stats["splits_resized"] += 1
    # value shapes along the channel axis
    for value, layout in analysis.layouts.items():
        if touches(layout) and value.shape is not None and len(value.shape) == layout.rank:
            dims = list(value.shape)
            if isinstance(dims[layout.axis], int):
                dims[layout.axis] = layout.new_length(kept)
                value.shape = ir.Shape(dims)
    return dict(stats)
