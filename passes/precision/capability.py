"""What a lower float precision may touch: the op schema's type constraints and ORT's kernels.

Two questions, asked per node by ``assign-precision``:

* **Which ports may change type** (:func:`convertible_ports`). Read from the op schema
  (``onnx.defs.get_schema``): the ports bound to one type variable change together, and only
  when that variable admits the lower type and every port bound to it is float32 now. A port
  typed by a literal (Resize ``scales`` is ``tensor(float)``), a variable without float16
  (``Range``'s ``T``, index inputs such as ``Gather``'s ``Tind``) or an integer tensor (a
  ``Shape`` output) stays as it is. Output-only variables are set by an attribute
  (``Cast.to``, ``ConstantOfShape.value``, ``EyeLike.dtype``, ...): they change only for ops
  listed in :data:`ATTRIBUTE_TYPED`, whose attribute the pass rewrites.
* **Whether the execution provider has a kernel** (:func:`has_kernel`). A one-node model
  with the lower type on the converted ports is loaded into a session of that EP. A missing
  kernel shows in two ways: the session fails with NOT_IMPLEMENTED (bfloat16 on the CPU EP),
  or, for float16 on the CPU EP, ONNX Runtime quietly wraps the node in Casts to float32 and
  back (its insert-cast transformer), which is read back from the optimized model. Results
  are cached in-process per ORT version, EP, domain, op, opset and port types.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import onnx
import onnx_ir as ir

#: ops whose float output type comes from an attribute, and that attribute
ATTRIBUTE_TYPED: dict[str, str] = {
    "Cast": "to",
    "Constant": "value",
    "ConstantOfShape": "value",
    "EyeLike": "dtype",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "Bernoulli": "dtype",
}
_TYPE_STR = {ir.DataType.FLOAT16: "tensor(float16)", ir.DataType.BFLOAT16: "tensor(bfloat16)"}
_MISSING = ("could not find an implementation", "not_implemented", "not implemented")


def _schema(op_type: str, domain: str, opset: int) -> Any:
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


def _formal(params: Sequence[Any], k: int) -> Any:
    """The formal parameter actual port ``k`` binds to (a variadic last one takes the rest)."""
    if k < len(params):
        return params[k]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def convertible_ports(
    node: ir.Node, opset: int, target: ir.DataType
) -> tuple[list[bool], list[bool], str]:
    """(inputs, outputs) that become ``target`` when the node runs in it, or a reason why not.

    The masks are all False and the reason says why when nothing may change.
    """
    n_in, n_out = len(node.inputs), len(node.outputs)
    none = [False] * n_in, [False] * n_out
    schema = _schema(node.op_type, node.domain, opset)
    if schema is None:
        return none[0], none[1], f"no schema for {node.domain or 'ai.onnx'}::{node.op_type}"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: dict[str, list[tuple[str, int, ir.Value]]] = {}
    in_vars = set()
    for side, values, params in (
        ("in", node.inputs, schema.inputs),
        ("out", node.outputs, schema.outputs),
    ):
        for k, v in enumerate(values):
            p = _formal(params, k)
            if p is None or v is None:
                continue
            bound.setdefault(p.type_str, []).append((side, k, v))
            if side == "in":
                in_vars.add(p.type_str)
    ins, outs = list(none[0]), list(none[1])
    want = _TYPE_STR[target]
    why = "no float32 port"
    for var, ports in bound.items():
        if not any(v.dtype == ir.DataType.FLOAT for _, _, v in ports):
            continue
        if any(v.dtype not in (ir.DataType.FLOAT, None) for _, _, v in ports):
            why = f"type variable {var} mixes float32 with other types"
            continue
        if want not in allowed.get(var, {var}):
            why = f"{node.op_type} has no {want} for {var}"
            continue
        if var not in in_vars and node.op_type not in ATTRIBUTE_TYPED:
            why = f"{node.op_type} sets {var} by an attribute"
            continue
        for side, k, v in ports:
            if v.dtype == ir.DataType.FLOAT:
                (ins if side == "in" else outs)[k] = True
    if any(ins) or any(outs):
        return ins, outs, ""
    return ins, outs, why


@functools.cache
def is_function_op(op_type: str, domain: str = "", opset: int = 100) -> bool:
    """Whether ONNX defines ``op_type`` by a function body (ORT may expand it into others)."""
    schema = _schema(op_type, domain, opset)
    return schema is not None and bool(schema.has_function or schema.has_context_dependent_function)


def _ort() -> Any:
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


@functools.cache
def _probe(
    ort_version: str,
    provider: str,
    domain: str,
    op_type: str,
    opset: int,
    in_types: tuple[int, ...],
    out_types: tuple[int, ...],
    attributes: bytes,
    opsets: tuple[tuple[str, int], ...],
) -> tuple[bool | None, str]:
    """(True/False/None for unknown, message) for one signature; see :func:`has_kernel`."""
    del ort_version  # part of the cache key only
    rt = _ort()
    names_in = [f"i{k}" if t else "" for k, t in enumerate(in_types)]
    names_out = [f"o{k}" for k in range(len(out_types))]
    proto = onnx.NodeProto()
    proto.ParseFromString(attributes)
    node = onnx.helper.make_node(op_type, names_in, names_out, domain=domain, name="probe")
    node.attribute.extend(proto.attribute)
    inputs = [
        onnx.helper.make_tensor_value_info(n, t, None) for n, t in zip(names_in, in_types) if n
    ]
    outputs = [
        onnx.helper.make_tensor_value_info(n, t, None) for n, t in zip(names_out, out_types) if t
    ]
    if not outputs:
        return None, "no typed output"
    graph = onnx.helper.make_graph([node], "probe", inputs, outputs)
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets],
        ir_version=8,
    )
    if provider != "CPUExecutionProvider":
        from graphopt import runtime

        runtime.load_gpu_libraries()  # else the CUDA EP may not load and CPU answers instead
    so = rt.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="graphopt-probe-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so.optimized_model_filepath = path
        try:
            rt.InferenceSession(model.SerializeToString(), so, providers=[provider])
        except Exception as exc:  # onnxruntime raises its own exception types
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            if any(m in text.lower() for m in _MISSING):
                return False, text
            return None, text
        try:
            optimized = onnx.load(path)
        except Exception:  # no file: nothing was rewritten
            return True, ""
    casts = sum(n.op_type == "Cast" for n in optimized.graph.node) - (op_type == "Cast")
    if casts > 0:
        return False, f"ONNX Runtime inserts {casts} Cast(s) around it (no kernel)"
    return True, ""


def has_kernel(
    node: ir.Node,
    in_types: Sequence[ir.DataType | None],
    out_types: Sequence[ir.DataType | None],
    opsets: dict[str, int],
    provider: str = "CPUExecutionProvider",
) -> tuple[bool | None, str]:
    """Whether ``provider`` runs ``node`` with these port types: True, False or None (unknown).

    Unknown means the one-node probe failed for another reason than a missing kernel (an
    attribute or input the op needs to see as a constant, say); the caller decides.
    """
    gap = _runtime_gap(node, provider)
    if gap:
        return False, gap
    rt = _ort()
    attrs = onnx.NodeProto()
    for attr in node.attributes.values():
        if isinstance(attr, ir.Attr) and attr.type != ir.AttributeType.GRAPH:
            attrs.attribute.append(ir.serde.serialize_attribute(attr))
    default = opsets.get("", opsets.get("ai.onnx", 17))
    wanted = {"": default}
    if node.domain not in ("", "ai.onnx") and node.domain in opsets:
        wanted[node.domain] = opsets[node.domain]
    imports = tuple(sorted(wanted.items()))
    return _probe(
        rt.__version__,
        provider,
        node.domain,
        node.op_type,
        wanted.get(node.domain or "", default),
        tuple(int(t) if t is not None else 0 for t in in_types),
        tuple(int(t) if t is not None else 0 for t in out_types),
        attrs.SerializeToString(deterministic=True),
        imports,
    )


def _runtime_gap(node: ir.Node, provider: str) -> str:
    """Kernels a session accepts but that fail when run (found by the node-suite sweep)."""
    if provider != "CPUExecutionProvider" or node.op_type not in ("ScatterND", "ScatterElements"):
        return ""
    reduction = node.attributes.get("reduction")
    if reduction is not None and reduction.value not in ("none", b"none"):
        return f"ORT's CPU {node.op_type} has no fp16/bf16 reduction={reduction.value} at run time"
    return ""


def probe_cache_info() -> Any:
    """functools cache statistics of the kernel probe (hits, misses)."""
    return _probe.cache_info()
