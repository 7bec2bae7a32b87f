"""Graph building shared by the passes of every family.

Fresh unique names, constant initializers with their type and shape filled in, and the
``com.microsoft`` opset import that ONNX Runtime's contrib operators need.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"
MS_OPSET = 1


class Namer:
    """Hands out names not yet used by any value of ``graph`` (nor by earlier calls)."""

    def __init__(self, graph: ir.Graph) -> None:
        self._taken = (
            set(graph.initializers)
            | {v.name for n in graph for v in n.outputs if v.name}
            | {v.name for v in graph.inputs if v.name}
            | {n.name for n in graph if n.name}
        )

    @classmethod
    def for_model(cls, model: ir.Model) -> Namer:
        """A namer that avoids every name of the model, subgraphs included (ONNX names are
        unique across scopes), for passes that write into If/Loop bodies."""
        from graphopt.ir import iter_graphs

        namer = cls(model.graph)
        for graph in iter_graphs(model):
            namer._taken |= cls(graph)._taken
        return namer

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer named ``name`` (already unique)."""
    array = np.ascontiguousarray(array).reshape(np.shape(array))  # keeps 0-d scalars 0-d
    # ir.Tensor directly: ir.tensor's type dispatch (Protocol isinstance checks) costs 10x the
    # tensor itself, and qdq-insert's budget search writes ~1000 constants per trial model
    tensor = (
        ir.tensor(array, name=name) if array.dtype.kind in "OSU" else ir.Tensor(array, name=name)
    )
    value = ir.Value(name=name, const_value=tensor)
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an initializer nothing reads any more (the float weight a pass replaced)."""
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)


def ensure_ms_opset(model: ir.Model) -> None:
    """Import ``com.microsoft`` version 1 where the model does not import it yet."""
    if MS_DOMAIN not in model.opset_imports:
        model.opset_imports[MS_DOMAIN] = MS_OPSET


def replace_node(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """Put ``new`` (one output) where ``old`` was; its output takes over the old one's uses."""
    ir.convenience.replace_nodes_and_values(
        graph, old, [old], [new], [old.outputs[0]], [new.outputs[0]]
    )
