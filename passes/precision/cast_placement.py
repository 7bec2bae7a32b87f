"""Rewriting a precision plan into a graph: converted constants, retyped nodes, boundary Casts.

Kept apart from the analysis (:mod:`.precision_plan`): the same rewrite runs on trial copies
(load check, timing, budget) and on the model, and where Casts go decides whether lowering
pays at all, so the rule that drops islands of data movement whose Casts would only cost
lives here too.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from graphopt.passes.precision import capability
from graphopt.passes.precision.precision_plan import (
    PRECISION_KEY,
    SHORT,
    Plan,
    PrecisionRun,
    to_low,
)

from graphopt.core.build import Namer
from graphopt.core.ops import NO_ARITHMETIC
from graphopt.ir import const_array as const

#: ops that only move data: no arithmetic, so no sensitivity of their own
MOVEMENT = NO_ARITHMETIC


def drop_movement_islands(run: PrecisionRun, nodes: list[ir.Node], plan: Plan) -> None:
    """A low region of data movement only computes nothing cheaper: its Casts only cost."""
    index = {id(nodes[i]): i for i in plan}
    parent = {i: i for i in plan}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, n in plan.items():
        for v, m in zip(nodes[i].outputs, n.outs, strict=True):
            if not m:
                continue
            for use in v.uses():
                j = index.get(id(use.node))
                if j is not None and plan[j].ins[use.idx]:
                    parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in plan:
        groups.setdefault(find(i), []).append(i)
    for members in groups.values():
        if all(plan[i].op_type in MOVEMENT for i in members):
            for i in members:
                why = "data movement only between fp32 nodes: its Casts would only cost"
                run.keep(plan[i].label, "cost", why)
                del plan[i]


def rewrite(
    model: ir.Model,
    plan: Plan,
    low: ir.DataType,
    *,
    keep_io: bool,
    mark: Callable[[ir.Node], ir.Node],
) -> collections.Counter[str]:
    """Convert ``plan``'s nodes of ``model`` (same node order as analysed) to ``low``; returns
    what it did (initializers converted, Casts inserted and removed, nodes converted)."""
    graph = model.graph
    nodes = list(graph)
    namer = Namer(graph)
    suffix = SHORT[low]
    stats: collections.Counter[str] = collections.Counter()
    wants_low: dict[ir.Value, list[tuple[ir.Node, int]]] = {}
    for i, n in plan.items():
        node = nodes[i]
        for k, (v, m) in enumerate(zip(node.inputs, n.ins, strict=True)):
            if m and v is not None:
                wants_low.setdefault(v, []).append((node, k))
    produced_low = {
        v for i, n in plan.items() for v, m in zip(nodes[i].outputs, n.outs, strict=True) if m
    }
    # 1. graph inputs read only in low precision change type (keep_io_types=false)
    if not keep_io:
        for v in graph.inputs:
            if v.dtype == ir.DataType.FLOAT and v in wants_low:
                if len(wants_low[v]) == sum(1 for _ in v.uses()):
                    v.dtype = low
                    produced_low.add(v)
    # 2. constants: converted directly, a second copy if fp32 readers remain
    for v, readers in list(wants_low.items()):
        a = const(v)
        if a is None or v in produced_low:
            continue
        del wants_low[v]
        others = len(list(v.uses())) - len(readers)
        if others == 0 and not v.is_graph_output() and v.name in graph.initializers:
            v.const_value = ir.tensor(to_low(a, low), name=v.name)
            v.dtype = low
        else:
            name = namer(f"{v.name or 'const'}_{suffix}")
            copy = ir.Value(name=name, const_value=ir.tensor(to_low(a, low), name=name))
            copy.dtype, copy.shape = low, ir.Shape(a.shape)
            graph.register_initializer(copy)
            for node, k in readers:
                node.replace_input_with(k, copy)
        stats["initializers_converted"] += 1
    # 3. attribute-typed nodes produce low directly
    for i in plan:
        _retype_attribute(nodes[i], low)
    # 4. low values read in fp32 (or leaving the graph): one Cast up, shared
    first = nodes[0] if nodes else None
    for v in list(produced_low):
        up_uses = [
            (u.node, u.idx) for u in v.uses() if (u.node, u.idx) not in set(wants_low.get(v, []))
        ]
        as_output = v.is_graph_output() and (keep_io or v.is_graph_input())
        if not up_uses and not as_output:
            continue
        cast = _cast(v, ir.DataType.FLOAT, namer, "fp32", mark)
        if as_output:
            old = v.name
            v.name = namer(f"{old}_{suffix}")
            cast.outputs[0].name = old
            for j, o in enumerate(graph.outputs):
                if o is v:
                    graph.outputs[j] = cast.outputs[0]
        for node, k in up_uses:
            node.replace_input_with(k, cast.outputs[0])
        _place(graph, v, cast, first)
        stats["casts_inserted"] += 1
    # 5. fp32 values read in low precision: one Cast down, shared
    for v, readers in wants_low.items():
        if v in produced_low:
            continue
        cast = _cast(v, low, namer, suffix, mark)
        for node, k in readers:
            node.replace_input_with(k, cast.outputs[0])
        _place(graph, v, cast, first)
        stats["casts_inserted"] += 1
    # 6. output types of converted nodes
    for i, n in plan.items():
        for v, m in zip(nodes[i].outputs, n.outs, strict=True):
            if m:
                v.dtype = low
        nodes[i].metadata_props[PRECISION_KEY] = low.name.lower()
        stats[f"converted:{n.op_type}"] += 1
    stats["casts_removed"] += remove_cancelling_casts(graph)
    if not keep_io:
        for v in graph.outputs:
            if v in produced_low:
                v.dtype = low
    return stats


def _retype_attribute(node: ir.Node, low: ir.DataType) -> None:
    attr = capability.ATTRIBUTE_TYPED.get(node.op_type)
    if attr is None:
        return
    if attr == "value":
        a = node.attributes.get("value")
        arr = a.value.numpy() if a is not None else np.zeros([1], np.float32)
        if arr.dtype == np.float32:
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(to_low(arr, low)))
    elif attr == "to":
        if node.attributes["to"].value == ir.DataType.FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", int(low))
    else:
        a = node.attributes.get(attr)
        if a is None or a.value == int(ir.DataType.FLOAT):
            node.attributes[attr] = ir.AttrInt64(attr, int(low))


def _cast(
    v: ir.Value,
    to: ir.DataType,
    namer: Namer,
    suffix: str,
    mark: Callable[[ir.Node], ir.Node],
) -> ir.Node:
    base = v.name or "value"
    cast = mark(
        ir.Node(
            "",
            "Cast",
            [v],
            attributes=[ir.AttrInt64("to", int(to))],
            name=namer(f"{base}_to_{suffix}"),
        )
    )
    cast.metadata_props[PRECISION_KEY] = "cast"
    out = cast.outputs[0]
    out.name = namer(f"{base}_{suffix}")
    out.dtype, out.shape = to, v.shape
    return cast


def _place(graph: ir.Graph, v: ir.Value, cast: ir.Node, first: ir.Node | None) -> None:
    producer = v.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, [cast])
    elif first is not None:
        graph.insert_before(first, [cast])
    else:
        graph.append(cast)


def remove_cancelling_casts(graph: ir.Graph) -> int:
    """Drop Casts to a tensor's own type and exact round trips (fp16 -> fp32 -> fp16)."""
    removed = 0
    exact_up = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        src = node.inputs[0]
        if src is None or out.is_graph_output():
            continue
        to = ir.DataType(node.attributes["to"].value)
        target = None
        if src.dtype == to:
            target = src
        else:
            prev = src.producer()
            if (
                prev is not None
                and prev.op_type == "Cast"
                and prev.graph is graph
                and prev.inputs[0] is not None
                and prev.inputs[0].dtype == to
                and to in exact_up
                and src.dtype == ir.DataType.FLOAT
            ):
                target = prev.inputs[0]
        if target is None:
            continue
        out.replace_all_uses_with(target)
        graph.remove(node, safe=True)
        removed += 1
        prev = src.producer()
        if (
            prev is not None
            and prev.op_type == "Cast"
            and prev.graph is graph
            and not src.uses()
            and not src.is_graph_output()
        ):
            graph.remove(prev, safe=True)
    return removed
