"""Reading a user's file with the checks it deserves: missing, truncated or non-ONNX files,
external data that stays inside the model's folder, opsets the runtime accepts (older ones
lifted), ONNX-ML map outputs detached for onnx_ir."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo

from graphopt.errors import ExternalDataError, ModelError, UnsupportedModelError

# ONNX Runtime guarantees ai.onnx opsets 7..26 (1.31 warns above that and refuses IR > 13).
MIN_OPSET = 7
MAX_OPSET = 26
MAX_IR_VERSION = 13
# Above this many bytes of tensor data a model is saved with external data (protobuf's 2 GB cap).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def iter_tensor_protos(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
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
    for tensor in iter_tensor_protos(proto):
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
