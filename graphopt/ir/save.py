"""Copies, snapshots' serialization and atomic saving, with external data where needed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.errors import ModelError, UsageError
from graphopt.ir.graph import (
    iter_graphs,
    iter_initializer_tensors,
    tensor_bytes,
)
from graphopt.ir.load import (
    DETACHED_KEY,
    EXTERNAL_DATA_THRESHOLD,
    MAX_IR_VERSION,
    reattach_map_outputs,
)


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
