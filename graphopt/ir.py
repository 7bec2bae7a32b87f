"""Loading, saving and summarising models, with the checks a user's file deserves.

onnx_ir is the in-memory graph. This module adds what a command-line tool needs around it:
clear errors for missing, truncated or non-ONNX files, external data that stays inside the
model's folder, opsets the runtime accepts, atomic writes, and a summary of what is inside.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo

from graphopt.errors import ExternalDataError, ModelError, UnsupportedModelError, UsageError

# ONNX Runtime guarantees ai.onnx opsets 7..26 (1.31 warns above that and refuses IR > 13).
MIN_OPSET = 7
MAX_OPSET = 26
MAX_IR_VERSION = 13
# Above this many bytes of tensor data a model is saved with external data (protobuf's 2 GB cap).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _iter_tensor_protos(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers and tensor attributes, subgraphs included."""

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for g in attr.graphs:
                    yield from from_graph(g)

    yield from from_graph(proto.graph)


def _check_external_data(proto: onnx.ModelProto, model_path: Path) -> None:
    """Refuse external data that is missing, out of bounds or outside the model's folder."""
    base = model_path.parent.resolve()
    for tensor in _iter_tensor_protos(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(tensor)
        location = info.location
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise ExternalDataError(
                f"external data of tensor '{tensor.name}' points outside the model's folder: "
                f"'{location}'",
                hint="graphopt only reads external data stored beside the model",
            )
        if not target.is_file():
            raise ExternalDataError(
                f"external data file '{location}' of tensor '{tensor.name}' is missing "
                f"(looked in {base})"
            )
        if info.length:
            end = (info.offset or 0) + info.length
            if end > target.stat().st_size:
                raise ExternalDataError(
                    f"external data file '{location}' is truncated: tensor '{tensor.name}' "
                    f"needs bytes up to {end}, the file has {target.stat().st_size}"
                )


def _check_opset(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse opsets newer than ONNX Runtime runs; older ones are taken by :func:`_lift_old`."""
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > MAX_OPSET:
            raise UnsupportedModelError(
                f"{path}: ai.onnx opset {opset.version} is not supported "
                f"(ONNX Runtime runs opsets up to {MAX_OPSET})",
                hint=f"convert it with onnx.version_converter.convert_version(model, {MAX_OPSET})",
            )


#: where load_model records how it took a model (``model.meta``; report and console show it)
LOADED_KEY = "graphopt.loaded"


def _ort_load_error(proto: onnx.ModelProto) -> str | None:
    """ONNX Runtime's first line when it cannot build a session for ``proto``, else None."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types
        text = str(exc).strip()
        missing = re.search(r"implementation for (\w+\(\d+\)) node with name '([^']*)'", text)
        if missing:
            node = f", node '{missing[2]}'" if missing[2] else ""
            return f"it has no kernel for {missing[1]}{node}"
        return text.split(" : ")[-1].splitlines()[0] if text else type(exc).__name__
    return None


def _lift_old(proto: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, str]:
    """A model below ai.onnx opset 7 as ONNX Runtime runs it, and how it was taken.

    ORT still has kernels for some old op versions, so such a model is kept as it is when
    ORT loads it; otherwise onnx's version converter lifts it to opset 7. When neither
    works the error names the op ORT lacks and what the converter said.
    """
    have = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    why = _ort_load_error(proto)
    if why is None:
        return proto, f"ai.onnx opset {have} kept: ONNX Runtime has kernels for all its ops"
    try:
        lifted = onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/its own
        raise UnsupportedModelError(
            f"{path}: ai.onnx opset {have} does not run on ONNX Runtime ({why}) and onnx's "
            f"version converter cannot lift it to opset {MIN_OPSET}: {_short(exc)}",
            hint="re-export the model at a newer opset",
        ) from exc
    still = _ort_load_error(lifted)
    if still is not None:
        raise UnsupportedModelError(
            f"{path}: ai.onnx opset {have} does not run on ONNX Runtime ({why}), nor after "
            f"onnx's version converter lifted it to opset {MIN_OPSET} ({still})",
            hint="re-export the model at a newer opset",
        )
    return lifted, (
        f"ai.onnx opset {have} lifted to {MIN_OPSET} by onnx's version converter at load "
        f"(ONNX Runtime refused it: {why}); the input itself cannot run, so verification "
        f"starts from the lifted model"
    )


def read_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and sanity-check a model file without loading its external data."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"expected an ONNX model file, got a directory: {p}")
    if not os.access(p, os.R_OK):
        raise ModelError(f"model file is not readable (permission denied): {p}")
    size = p.stat().st_size
    if size == 0:
        raise ModelError(f"model file is empty: {p}")
    try:
        proto = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{p} is not a valid ONNX model (truncated or not ONNX): {_short(exc)}"
        ) from exc
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror or exc}") from exc
    # protobuf accepts many non-ONNX byte strings as an almost empty message.
    if proto.ir_version <= 0 or not proto.graph.output or not proto.opset_import:
        raise ModelError(
            f"{p} is not a valid ONNX model (truncated or not ONNX): "
            "no IR version, graph outputs or opset imports"
        )
    _check_opset(proto, p)
    _check_external_data(proto, p)
    return proto


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


#: metadata key holding the map-typed output tail cut off at load (see detach_map_outputs)
DETACHED_KEY = "pkg.graphopt.detached_map_outputs"


def _has_map(t: onnx.TypeProto) -> bool:
    if t.HasField("map_type"):
        return True
    if t.HasField("sequence_type"):
        return _has_map(t.sequence_type.elem_type)
    if t.HasField("optional_type"):
        return _has_map(t.optional_type.elem_type)
    return False


def detach_map_outputs(proto: onnx.ModelProto, path: Path) -> None:
    """Cut map-typed outputs (scikit-learn's ZipMap) off the graph, in place, and keep them in
    the metadata so :func:`save_model` puts them back.

    onnx_ir has no map type, but ZipMap only re-labels a probability tensor as a list of
    {class: probability} dicts: everything a pass can improve lies before it. The graph
    output becomes ZipMap's input tensor meanwhile (verification compares those
    probabilities), and the saved model has the original outputs again.
    """
    graph = proto.graph
    if not any(_has_map(o.type) for o in graph.output) and not any(
        _has_map(v.type) for v in graph.value_info
    ):
        if any(_has_map(i.type) for i in graph.input):
            raise UnsupportedModelError(
                f"{path}: map-typed inputs (e.g. DictVectorizer) are not supported: graphopt's "
                "IR (onnx_ir) has no map type",
                hint="convert the model so that it takes a tensor input",
            )
        return
    producers = {o: n for n in graph.node for o in n.output}
    tail = onnx.GraphProto()
    kept_outputs = []
    for index, out in enumerate(graph.output):
        if not _has_map(out.type):
            kept_outputs.append(out)
            continue
        node = producers.get(out.name)
        if (
            node is None
            or len(node.output) != 1
            or any(_has_map(v.type) for v in graph.input if v.name in node.input)
        ):
            raise UnsupportedModelError(
                f"{path}: output '{out.name}' is map-typed and not made by a single node from "
                "tensors; graphopt's IR (onnx_ir) has no map type",
                hint="convert the model without map outputs (skl2onnx: options zipmap=False)",
            )
        tail.node.append(node)
        tail.output.append(out)
        tail.doc_string += f"{index} {node.input[0]}\n"
        kept_outputs.append(onnx.helper.make_empty_tensor_value_info(node.input[0]))
    cut = {o for n in tail.node for o in n.output}  # protobuf wrappers have no stable id()
    remaining = [n for n in graph.node if not cut.intersection(n.output)]
    del graph.node[:]
    graph.node.extend(remaining)
    del graph.output[:]
    graph.output.extend(kept_outputs)
    values = [v for v in graph.value_info if not _has_map(v.type)]
    del graph.value_info[:]
    graph.value_info.extend(values)
    import base64

    proto.metadata_props.add(
        key=DETACHED_KEY, value=base64.b64encode(tail.SerializeToString()).decode("ascii")
    )


def reattach_map_outputs(proto: onnx.ModelProto) -> None:
    """Put back, in place, what :func:`detach_map_outputs` cut off."""
    import base64

    entries = [p for p in proto.metadata_props if p.key == DETACHED_KEY]
    if not entries:
        return
    tail = onnx.GraphProto()
    tail.ParseFromString(base64.b64decode(entries[0].value))
    kept = [p for p in proto.metadata_props if p.key != DETACHED_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    outputs = list(proto.graph.output)
    for line, node, out in zip(tail.doc_string.splitlines(), tail.node, tail.output, strict=True):
        index = int(line.split()[0])
        outputs[index] = out
        proto.graph.node.append(node)
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Load a model into onnx_ir after checking it; external data stays memory-mapped."""
    p = Path(path)
    proto = read_proto(p)
    loaded = ""
    if any(o.domain in ("", "ai.onnx") and o.version < MIN_OPSET for o in proto.opset_import):
        proto, loaded = _lift_old(proto, p)
    detach_map_outputs(proto, p)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx_ir raises assorted errors on malformed graphs
        raise ModelError(f"{p} could not be read as an ONNX graph: {_short(exc)}") from exc
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    if loaded:
        model.meta[LOADED_KEY] = loaded
    return model


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 1 MiB blocks (reports record the input model's)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def nodes_in_subgraphs(model: ir.Model, op_types: frozenset[str] | set[str]) -> int:
    """How many nodes of ``op_types`` sit inside If/Loop/Scan bodies (passes that work on
    the main graph say so when they leave those alone)."""
    return sum(1 for n in iter_nodes(model) if n.graph is not model.graph and n.op_type in op_types)


def attr_value(node: ir.Node, name: str, default: object) -> object:
    """An attribute's value, or ``default`` where the node does not set it."""
    a = node.attributes.get(name)
    return default if a is None else a.value


class Pristine:
    """A frozen copy of a model that trial copies are made from.

    The structure is kept as a proto without tensor data; every copy gets the same tensor
    objects back (read-only views where a tensor holds an array), so a copy costs no weight
    bytes, and the snapshot store (:mod:`graphopt.runtime.snapshot`), which knows tensors by
    identity, writes a weight once for all of a budget search's trials instead of once per
    trial (PP-OCR det: ~100 trials). A copy's passes replace tensors, never write into them.
    """

    def __init__(self, model: ir.Model) -> None:
        self.tensors: dict[tuple[int, str], ir.TensorProtocol] = {}
        placeholders: dict[ir.Value, ir.TensorProtocol] = {}
        for g, graph in enumerate(iter_graphs(model)):
            for name, value in graph.initializers.items():
                t = value.const_value
                if t is None or t.dtype == ir.DataType.STRING:
                    continue
                self.tensors[g, name] = _read_only(t)
                placeholders[value] = ir.ExternalTensor(
                    "pristine", 0, t.nbytes, t.dtype, shape=t.shape, name=name
                )
        self.proto = serialize_with(model, placeholders)

    def copy(self) -> ir.Model:
        model = ir.serde.deserialize_model(self.proto)
        for g, graph in enumerate(iter_graphs(model)):
            for name, value in graph.initializers.items():
                t = self.tensors.get((g, name))
                if t is not None:
                    value.const_value = t
        return model


def serialize_with(model: ir.Model, tensors: dict[ir.Value, ir.TensorProtocol]) -> onnx.ModelProto:
    """The model's proto with some initializers' tensors replaced (external references,
    placeholders); the model is left as it was (``ir.save`` does the same swap)."""
    saved = [(value, value.const_value) for value in tensors]
    try:
        for value, tensor in tensors.items():
            value.const_value = tensor
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in saved:
            value.const_value = tensor


def _read_only(t: ir.TensorProtocol) -> ir.TensorProtocol:
    """``t``, or where it holds a writable array, a tensor over a read-only view of it (the
    caller's array keeps its flags; a write through a copy fails instead of corrupting every
    trial)."""
    if isinstance(t, ir.Tensor) and isinstance(t.raw, np.ndarray) and t.raw.flags.writeable:
        view = t.raw.view()
        view.flags.writeable = False
        return ir.Tensor(view, dtype=t.dtype, name=t.name, doc_string=t.doc_string)
    return t


def has_external_tensors(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for t in iter_initializer_tensors(model))


_SMALL_TENSOR_BYTES = 1024  # at most this stays inside the .onnx file when saving externally


def inline_small_external_tensors(model: ir.Model) -> None:
    """Copy external tensors of at most ``_SMALL_TENSOR_BYTES`` into memory, in place.

    Shape inference reads small constants (axes, shapes) only from memory; and ``ir.save``
    would load them itself and close their memory maps, which raises
    ``BufferError`` while a pass still holds an array read from one (exporters such as
    torch's dynamo write even 1 KB biases externally). Copying leaves the maps open.
    """
    for graph in iter_graphs(model):
        for value in graph.initializers.values():
            t = value.const_value
            if isinstance(t, ir.ExternalTensor) and t.nbytes <= _SMALL_TENSOR_BYTES:
                value.const_value = ir.Tensor(t.numpy().copy(), name=t.name, dtype=t.dtype)


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    source: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write atomically: into a temp folder beside the target, then rename into place.

    External data is used when asked, when the model already had it, or when its tensors
    pass protobuf's 2 GB limit. ``source`` is the input model's path: writing over it is
    refused so an input is never modified. Returns the files written.
    """
    out = Path(path)
    if source is not None and out.resolve() == Path(source).resolve():
        raise UsageError(
            f"output path is the input model ({out}); graphopt never modifies its input",
            hint="choose another -o path",
        )
    if out.is_dir():
        raise UsageError(f"output path is a directory: {out}")
    if not out.parent.exists():
        raise UsageError(f"output folder does not exist: {out.parent}")
    if external_data is None:
        external_data = has_external_tensors(model) or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = out.name + ".data"
    if external_data:
        inline_small_external_tensors(model)
    previous_ir = model.ir_version
    model.ir_version = min(model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    tmp = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=out.parent))
    try:
        tmp_model = tmp / out.name
        if DETACHED_KEY in model.metadata_props:  # map outputs go back on (small models)
            proto = ir.to_proto(model)
            reattach_map_outputs(proto)
            onnx.save_model(
                proto,
                str(tmp_model),
                save_as_external_data=bool(external_data),
                location=data_name,
                size_threshold=_SMALL_TENSOR_BYTES,
            )
        elif external_data:
            ir.save(
                model, tmp_model, external_data=data_name, size_threshold_bytes=_SMALL_TENSOR_BYTES
            )
        else:
            ir.save(model, tmp_model)
        written = []
        if (tmp / data_name).exists():
            os.replace(tmp / data_name, out.parent / data_name)
            written.append(out.parent / data_name)
        os.replace(tmp_model, out)
        written.insert(0, out)
        return written
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        model.ir_version = previous_ir
        shutil.rmtree(tmp, ignore_errors=True)


def serialize(model: ir.Model) -> bytes:
    """The model as bytes for ONNX Runtime (only for models without external data)."""
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    return proto.SerializeToString()


def fingerprint(model: ir.Model) -> str:
    """A cheap structural hash: nodes, attributes, types, shapes and tensor identities.

    Tensor contents are identified by object identity, not hashed, so large models stay
    cheap; a pass that swaps a tensor for an equal one counts as a change.
    """
    h = hashlib.blake2b(digest_size=16)

    def put(*parts: Any) -> None:
        h.update(repr(parts).encode())

    def value_key(v: ir.Value | None) -> Any:
        return None if v is None else (v.name, id(v))

    for graph in iter_graphs(model):
        put("graph", graph.name)
        for v in graph.inputs:
            put("in", value_key(v), str(v.type), str(v.shape))
        for v in graph.outputs:
            put("out", value_key(v), str(v.type), str(v.shape))
        for name, v in graph.initializers.items():
            put("init", name, id(v.const_value), value_key(v))
        for node in graph:
            put(node.domain, node.op_type, node.overload, [value_key(v) for v in node.inputs])
            put([(value_key(v), str(v.type), str(v.shape)) for v in node.outputs])
            for key, attr in node.attributes.items():
                if attr.is_ref():
                    put(key, "ref", attr.ref_attr_name)
                elif attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    put(key, "graph")
                elif attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
                    put(key, id(attr.value))
                elif attr.type in _LIST_ATTRS and len(attr.value) > 256:
                    put(key, _long_list_key(attr.value))
                else:
                    put(key, attr.value)
    put("opsets", sorted(model.opset_imports.items()))
    return h.hexdigest()


_LIST_ATTRS = (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS)


def _long_list_key(values: Any) -> tuple[Any, ...]:
    """A long list attribute by identity, length and 256 evenly spaced entries, like tensors
    (a tree ensemble's node lists hold millions of entries: hashing them whole took most of
    ``-p cleanup`` on a 70 MB LightGBM model, 66 of 101 s)."""
    step = max(1, len(values) // 256)
    return id(values), len(values), tuple(values[::step])


def _dtype_name(dtype: ir.DataType | None) -> str:
    return dtype.name.lower() if dtype is not None else "unknown"


def value_info(v: ir.Value) -> dict[str, Any]:
    dims = [] if v.shape is None else [d if isinstance(d, int) else str(d) for d in v.shape]
    return {
        "name": v.name,
        "dtype": _dtype_name(v.dtype),
        "shape": dims if v.shape is not None else None,
    }


def summarize(model: ir.Model, *, sparsity: bool = False) -> dict[str, Any]:
    """What is inside a model: ops, parameters, bytes and value counts by dtype, Q/DQ count.

    ``sparsity`` reads every float initializer, so it is off for per-pass instruments.
    """
    ops = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in iter_nodes(model)
    )
    init_bytes: collections.Counter[str] = collections.Counter()
    init_count: collections.Counter[str] = collections.Counter()
    params = 0
    zeros = 0
    float_params = 0
    external_files: collections.Counter[str] = collections.Counter()
    for t in iter_initializer_tensors(model):
        name = _dtype_name(t.dtype)
        init_bytes[name] += t.nbytes
        init_count[name] += 1
        params += t.size
        if isinstance(t, ir.ExternalTensor):
            external_files[str(t.location)] += t.nbytes
        if sparsity and t.dtype is not None and t.dtype.is_floating_point() and t.size:
            arr = t.numpy()
            zeros += int(np.count_nonzero(arr == 0))
            float_params += arr.size
    value_dtypes: collections.Counter[str] = collections.Counter()
    for graph in iter_graphs(model):
        for node in graph:
            for v in node.outputs:
                value_dtypes[_dtype_name(v.dtype)] += 1
    summary: dict[str, Any] = {
        "ir_version": model.ir_version,
        "opsets": {d or "ai.onnx": v for d, v in sorted(model.opset_imports.items())},
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "inputs": [value_info(v) for v in model.graph.inputs if not v.is_initializer()],
        "outputs": [value_info(v) for v in model.graph.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "initializers": sum(init_count.values()),
        "parameters": params,
        "initializer_bytes": sum(init_bytes.values()),
        "initializer_bytes_by_dtype": dict(init_bytes.most_common()),
        "value_dtypes": dict(value_dtypes.most_common()),
        "qdq_nodes": sum(ops.get(op, 0) for op in QDQ_OPS),
        "external_data": dict(external_files),
    }
    if sparsity:
        summary["sparsity"] = zeros / float_params if float_params else 0.0
    if model.meta.get(LOADED_KEY):
        summary["loaded"] = model.meta[LOADED_KEY]
    return summary
