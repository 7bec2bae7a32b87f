"""Read tensors inside If/Loop/Scan bodies: lift them to outputs of the main graph.

ONNX Runtime returns only main-graph outputs, so a tensor of a body is carried out through
the control-flow node that holds it, one scope at a time, in a *copy* of the model proto:

* **Loop / Scan**: an ``Identity`` of the tensor becomes a new scan output of the body, so
  the node returns it stacked over the iterations (one more leading axis per level);
* **If**: the branch holding the tensor returns it as a new output, the other branch an
  empty tensor of the same type, so the If returns it when that branch ran and nothing
  otherwise.

:func:`merge_iterations` folds the stacked iteration axes into the tensor's first axis, so a
caller sees the values as the body's node did (its channel and row axes where they were),
all iterations together: the values that reached it on DATA.

A Loop whose body tensor changes shape between iterations cannot stack it; ONNX Runtime then
fails at run time, and :mod:`graphopt.calib.collect` calibrates without the bodies' tensors
and says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import ir as gir

#: the control-flow ops whose bodies' tensors can be lifted
LIFTABLE = frozenset({"If", "Loop", "Scan"})


def body_values(model: ir.Model) -> dict[str, ir.Value]:
    """Every named tensor of an If/Loop/Scan body (node outputs and body inputs), by name."""
    values: dict[str, ir.Value] = {}
    for graph in gir.iter_graphs(model):
        if graph is model.graph:
            continue
        for v in graph.inputs:
            if v.name:
                values[v.name] = v
        for node in graph:
            for v in node.outputs:
                if v.name:
                    values[v.name] = v
    return values


@dataclasses.dataclass
class _Scope:
    graph: onnx.GraphProto
    owner: onnx.NodeProto | None = None  # the control-flow node that holds the graph
    attr: str = ""
    parent: _Scope | None = None


class Exposed(dict[str, tuple[str, int]]):
    """Body tensor name -> (the main-graph output that carries it, Loop/Scan levels crossed)."""


def expose(
    proto: onnx.ModelProto, names: Sequence[str], types: dict[str, int]
) -> tuple[Exposed, dict[str, str]]:
    """Lift the body tensors ``names`` (element types by name in ``types``) to main-graph
    outputs of ``proto``, in place. Returns what was lifted and, for the others, why not."""
    scopes: dict[str, _Scope] = {}
    taken: set[str] = set()

    def walk(scope: _Scope) -> None:
        g = scope.graph
        taken.update(v.name for v in (*g.input, *g.output, *g.initializer))
        for node in g.node:
            taken.update(node.output)
            if scope.owner is not None:
                scopes.update((o, scope) for o in node.output if o)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(_Scope(a.g, node, a.name, scope))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g2 in a.graphs:
                        walk(_Scope(g2, node, a.name, scope))
        if scope.owner is not None:
            scopes.update((v.name, scope) for v in g.input if v.name)

    walk(_Scope(proto.graph))

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    exposed, failed = Exposed(), {}
    for name in dict.fromkeys(names):
        scope = scopes.get(name)
        elem = types.get(name)
        if scope is None:
            failed[name] = "not a tensor of an If/Loop/Scan body"
            continue
        if not elem:
            failed[name] = "its element type is unknown"
            continue
        why = _unliftable(scope)
        if why:
            failed[name] = why
            continue
        exposed[name] = _lift(name, scope, elem, fresh)
        proto.graph.output.append(onnx.helper.make_tensor_value_info(exposed[name][0], elem, None))
    return exposed, failed


def _unliftable(scope: _Scope) -> str:
    while scope.owner is not None:
        node = scope.owner
        if node.domain not in ("", "ai.onnx") or node.op_type not in LIFTABLE:
            return f"it sits in a {node.op_type} body, which cannot return it"
        scope = scope.parent  # type: ignore[assignment]
    return ""


def _lift(name: str, scope: _Scope, elem: int, fresh: Callable[[str], str]) -> tuple[str, int]:
    """Carry ``name`` out of each enclosing body up to the main graph."""
    levels = 0
    while scope.owner is not None:
        g, node = scope.graph, scope.owner
        inner = fresh(f"{name}_lifted")
        g.node.append(onnx.helper.make_node("Identity", [name], [inner]))
        g.output.append(onnx.helper.make_tensor_value_info(inner, elem, None))
        outer = fresh(f"{name}_lifted")
        if node.op_type == "If":
            other = next(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH
                         and a.name != scope.attr)  # fmt: skip
            empty = fresh(f"{name}_not_taken")
            tensor = onnx.helper.make_tensor(empty, elem, [0], [])
            other.node.append(onnx.helper.make_node("Constant", [], [empty], value=tensor))
            other.output.append(onnx.helper.make_tensor_value_info(empty, elem, None))
            node.output.append(outer)
        else:  # Loop: outputs = body outputs minus cond; Scan: = body outputs
            want = len(g.output) - (2 if node.op_type == "Loop" else 1)
            while len(node.output) < want:
                node.output.append("")  # unused outputs before the new scan output
            node.output.append(outer)
            for a in node.attribute:
                if a.name in ("scan_output_axes", "scan_output_directions"):
                    a.ints.append(0)
            levels += 1
        name, scope = outer, scope.parent  # type: ignore[assignment]
    return name, levels


def merge_iterations(array: np.ndarray, levels: int) -> np.ndarray:
    """A lifted tensor as its body saw it: ``levels`` stacked iteration axes folded into the
    first axis (an empty array where the body never ran or its If branch was not taken)."""
    if levels == 0 or array.size == 0:
        return array
    rest = array.shape[levels + 1 :]
    return array.reshape((-1, *rest))
