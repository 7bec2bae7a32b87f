"""Walking and querying a model: its graphs and scopes, nodes, constants, attributes, and
why a weight is not a constant."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir


def ai_onnx_opset(model: ir.Model) -> int:
    """The model's ai.onnx opset version (1 where it imports none)."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def fill_types(model: ir.Model) -> int:
    """Fill in the element types (and shapes) ONNX shape inference knows and the model lacks.

    Exports without value_info leave intermediate types unknown, and passes that decide by
    type (what is float, what can be quantized) would see nothing. Large weights stay out
    of the serialized copy (onnx_ir's ``call_onnx_api``). Returns how many values got a type.
    """
    from onnx_ir.passes.common import _c_api_utils

    untyped = [v for n in iter_nodes(model) for v in n.outputs if v.dtype is None]
    if not untyped:
        return 0
    try:
        proto = _c_api_utils.call_onnx_api(onnx.shape_inference.infer_shapes, model)
    except Exception:  # inference fails on some custom ops: types stay unknown
        return 0
    known = {vi.name: vi for g in graph_protos(proto.graph) for vi in (*g.value_info, *g.output)}
    typed = 0
    for v in untyped:
        info = known.get(v.name or "")
        if info is None or not info.type.HasField("tensor_type"):
            continue
        elem = info.type.tensor_type.elem_type
        if elem:
            v.dtype = ir.DataType(elem)
            typed += 1
            if v.shape is None and info.type.tensor_type.HasField("shape"):
                v.shape = ir.serde.deserialize_type_proto_for_shape(info.type)
    return typed


def graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every If/Loop/Scan body in it."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                yield from graph_protos(g)


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of all initializer data in the main graph and subgraphs."""
    return sum(t.nbytes for t in iter_initializer_tensors(model))


def iter_initializer_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for graph in iter_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value


def iter_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph and every subgraph (If/Loop/Scan bodies)."""
    for graph, _ in iter_scopes(model):
        yield graph


def iter_scopes(model: ir.Model) -> Iterator[tuple[ir.Graph, str]]:
    """The main graph ("main") and every subgraph with where it sits, as a user reads it:
    ``"If_3/then_branch"`` (the owning node's name, else its op type, and the attribute)."""
    yield model.graph, "main"
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            owner = f"{node.name or node.op_type}/{attr.name}"
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.value, owner
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, g in enumerate(attr.value):
                    yield g, f"{owner}[{i}]"


def iter_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node, including those inside subgraphs."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)


def defining_graph(value: ir.Value) -> ir.Graph | None:
    """The graph that defines ``value``: its producer's, or the one it is an input or
    initializer of (a body node may read a value of an enclosing graph)."""
    producer = value.producer()
    return producer.graph if producer is not None else value.graph


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant data, or None if it is computed or a (overridable) graph input."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def shape_through_qdq(value: ir.Value | None) -> ir.Shape | None:
    """``value``'s shape, or that of the tensor the Q/DQ chain producing it quantizes: values
    that passes add after shape inference (qdq-insert's Q/DQ) carry none, but keep it."""
    while value is not None and value.shape is None:
        p = value.producer()
        if p is None or p.op_type not in ("QuantizeLinear", "DequantizeLinear") or not p.inputs:
            return None
        value = p.inputs[0]
    return value.shape if value is not None else None


#: the fix for weights a pass cannot see as constants
CLEANUP_FIRST = (
    "weights that are Constant nodes or listed as graph inputs become initializers in "
    "cleanup: run -p cleanup,<this pass>"
)


def not_constant(value: ir.Value) -> str:
    """Why a weight is no constant initializer, as a skip reason: an initializer listed among
    the graph inputs (old exporters), a Constant node's output (Paddle), or an activation."""
    if value.is_graph_input() and value.const_value is not None:
        return "weight_is_graph_input"
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        return "weight_is_constant_node"
    return "weight_not_constant"


def float_weight(a: ir.Value, w: ir.Value) -> tuple[np.ndarray | None, str]:
    """(the 2-D float32 constant weight ``w``, "") of a MatMul/Gemm that reads a float
    activation ``a``; (None, the skip reason) when it is not one: the weight passes' shared
    test of what they can quantize."""
    wa = const_array(w)
    if wa is None or not w.is_initializer():  # an outer scope's initializer too
        return None, not_constant(w)
    if wa.dtype != np.float32:
        return None, "weight_dtype"
    if wa.ndim != 2:
        return None, "weight_rank"
    if const_array(a) is not None or (a.dtype is not None and a.dtype != ir.DataType.FLOAT):
        return None, "activation_dtype"
    return wa, ""


def nodes_in_subgraphs(model: ir.Model, op_types: frozenset[str] | set[str]) -> int:
    """How many nodes of ``op_types`` sit inside If/Loop/Scan bodies (passes that work on
    the main graph say so when they leave those alone)."""
    return sum(1 for n in iter_nodes(model) if n.graph is not model.graph and n.op_type in op_types)


def attr_value(node: ir.Node, name: str, default: object) -> object:
    """An attribute's value, or ``default`` where the node does not set it."""
    a = node.attributes.get(name)
    return default if a is None else a.value
