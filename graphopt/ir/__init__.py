"""onnx_ir helpers: loading a user's file with the checks it deserves, walking and querying
graphs, copies and atomic saving, and a summary of what a model holds.

onnx_ir is the in-memory graph; this package adds what a command-line tool needs around it:
clear errors for missing, truncated or non-ONNX files, external data that stays inside the
model's folder, opsets the runtime accepts, atomic writes. Everything is importable from here
(``from graphopt import ir as gir; gir.load_model``).
"""

from graphopt.ir.graph import (
    CLEANUP_FIRST,
    ai_onnx_opset,
    attr_value,
    const_array,
    defining_graph,
    fill_types,
    float_weight,
    graph_protos,
    iter_graphs,
    iter_initializer_tensors,
    iter_nodes,
    iter_scopes,
    nodes_in_subgraphs,
    not_constant,
    shape_through_qdq,
    tensor_bytes,
)
from graphopt.ir.load import (
    DETACHED_KEY,
    EXTERNAL_DATA_THRESHOLD,
    LOADED_KEY,
    MAX_IR_VERSION,
    MAX_OPSET,
    MIN_OPSET,
    QDQ_OPS,
    detach_map_outputs,
    file_sha256,
    iter_tensor_protos,
    load_model,
    read_proto,
    reattach_map_outputs,
)
from graphopt.ir.save import (
    Pristine,
    has_external_tensors,
    inline_small_external_tensors,
    save_model,
    serialize,
    serialize_with,
)
from graphopt.ir.summary import (
    fingerprint,
    summarize,
    value_info,
)

__all__ = [
    "CLEANUP_FIRST",
    "DETACHED_KEY",
    "EXTERNAL_DATA_THRESHOLD",
    "LOADED_KEY",
    "MAX_IR_VERSION",
    "MAX_OPSET",
    "MIN_OPSET",
    "QDQ_OPS",
    "Pristine",
    "ai_onnx_opset",
    "attr_value",
    "const_array",
    "defining_graph",
    "detach_map_outputs",
    "file_sha256",
    "fill_types",
    "fingerprint",
    "float_weight",
    "graph_protos",
    "has_external_tensors",
    "inline_small_external_tensors",
    "iter_graphs",
    "iter_initializer_tensors",
    "iter_nodes",
    "iter_scopes",
    "iter_tensor_protos",
    "load_model",
    "nodes_in_subgraphs",
    "not_constant",
    "read_proto",
    "reattach_map_outputs",
    "save_model",
    "serialize",
    "serialize_with",
    "shape_through_qdq",
    "summarize",
    "tensor_bytes",
    "value_info",
]
