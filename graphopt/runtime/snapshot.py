"""Models frozen for ONNX Runtime, their weights written once per process.

One ``optimize`` builds dozens of sessions of nearly the same model: verification after
every pass, the fusion check, calibration, probes, each timing. Serializing every weight
into every snapshot cost 0.4 s per session on MiniLM (86 MB) and 1.5 s on a BERT-base
encoder, a fifth of a ``cpu-int8`` run. Here a tensor's bytes go into a process-wide
weights file the first time a snapshot needs them; a snapshot is then a small ``.onnx``
beside that file that names them as external data, and ONNX Runtime loads it in a sixth of
the time. Tensors are treated as immutable, as ``gir.fingerprint`` does (the passes replace a
tensor, never write into one); a sample of each tensor's elements is compared on reuse, so a
tensor rewritten in place is stored again rather than read stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import ir as gir

_SMALL_MODEL_BYTES = 1_500_000_000  # inline snapshots stay under protobuf's 2 GB limit
_EXTERNAL_MIN_BYTES = 16 * 1024  # smaller tensors serialize inline (cheap, and one read each)
_ALIGN = 4096  # page-aligned offsets let ONNX Runtime map the data instead of copying it
_SAMPLE = 64  # elements of each stored tensor compared on reuse


def _remove_file(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child never deletes its parent's files
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_dir(path: Path, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


_PREFIX = "graphopt-weights-"


def _sweep_stale(tmp: Path) -> None:
    """Remove weights folders of processes that died without cleaning up (killed runs)."""
    for folder in tmp.glob(f"{_PREFIX}*-*"):
        pid = folder.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, or not ours to signal
            continue


class _Segment:
    """One append-only weights file; deleted once neither the store nor a snapshot uses it."""

    def __init__(self, folder: Path, index: int) -> None:
        self.path = folder / f"weights-{index}.bin"
        self.name = self.path.name
        self.size = 0
        self.live = 0  # bytes of tensors still alive that point here
        self._fh = open(self.path, "wb")  # closed by the finalizer
        weakref.finalize(self, _remove_file, self.path, os.getpid())
        weakref.finalize(self, self._fh.close)

    def append(self, tensor: ir.TensorProtocol) -> int:
        offset = -(-self.size // _ALIGN) * _ALIGN
        if offset > self.size:
            self._fh.write(b"\0" * (offset - self.size))
        flat = _contiguous(tensor)
        self._fh.write(flat.view(np.uint8) if flat is not None else tensor.tobytes())
        self._fh.flush()
        self.size = offset + tensor.nbytes
        return offset


@dataclasses.dataclass
class _Entry:
    segment: _Segment
    offset: int
    nbytes: int
    sample: bytes | None


def _contiguous(tensor: ir.TensorProtocol) -> np.ndarray | None:
    """The tensor's array, flat, without a copy, where it holds a plain contiguous one."""
    if not isinstance(tensor, ir.Tensor) or not isinstance(tensor.raw, np.ndarray):
        return None
    arr = tensor.raw
    if arr.nbytes != tensor.nbytes or not arr.flags.c_contiguous:
        return None
    return arr.reshape(-1)


def _sample(tensor: ir.TensorProtocol) -> bytes | None:
    """Evenly spaced whole elements (a byte sample of floats would see only mantissas)."""
    flat = _contiguous(tensor)
    if flat is None:
        return None
    step = max(1, flat.size // _SAMPLE)
    return flat[::step][:_SAMPLE].tobytes()


class WeightStore:
    """Tensor bytes by tensor identity, in files under one temp folder of this process.

    A file is replaced by a fresh one once most of it belongs to tensors that died (a tune
    loop makes many candidates), and is deleted when its last snapshot closes."""

    ROLL_BYTES = 256 * 1024 * 1024

    def __init__(self) -> None:
        self.pid = os.getpid()
        _sweep_stale(Path(tempfile.gettempdir()))
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{self.pid}-"))
        weakref.finalize(self, _remove_dir, self.folder, self.pid)
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        # ids of tensors that died, dropped before the next lookup (a finalizer may run
        # inside any allocation, so it only appends; an id is reused only after its death)
        self._dead: list[int] = []
        self._segments = 0
        self._segment = self._new_segment()
        self._snapshots = 0
        self.written = 0  # tensor bytes appended, over the store's life

    def _new_segment(self) -> _Segment:
        self._segments += 1
        return _Segment(self.folder, self._segments)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.segment.live -= entry.nbytes

    def _entry(self, tensor: ir.TensorProtocol) -> _Entry:
        key = id(tensor)
        entry = self._entries.get(key)
        sample = _sample(tensor)
        if entry is not None and entry.sample == sample and entry.nbytes == tensor.nbytes:
            return entry
        self._drop(key)  # written into in place: store it again
        segment = self._segment
        if segment.size > self.ROLL_BYTES and segment.live * 2 < segment.size:
            self._entries = {k: e for k, e in self._entries.items() if e.segment is not segment}
            segment = self._segment = self._new_segment()
        entry = _Entry(segment, segment.append(tensor), tensor.nbytes, sample)
        segment.live += tensor.nbytes
        self.written += tensor.nbytes
        self._entries[key] = entry
        weakref.finalize(tensor, self._dead.append, key)
        return entry

    def freeze(self, model: ir.Model) -> Snapshot:
        """A snapshot whose large tensors are external data in this store's files.

        A user's external tensor below the size limit is read into the proto instead: it
        names a file beside the user's model, and ONNX Runtime's shape inference must read
        small ones (a dynamo export's Unsqueeze axes) from the proto itself."""
        stored: list[tuple[ir.Value, ir.TensorProtocol]] = []
        inlined: list[tuple[ir.Value, ir.TensorProtocol]] = []
        for graph in gir.iter_graphs(model):
            for v in graph.initializers.values():
                t = v.const_value
                if t is None or t.dtype == ir.DataType.STRING:
                    continue
                if t.nbytes >= _EXTERNAL_MIN_BYTES:
                    stored.append((v, t))
                elif isinstance(t, ir.ExternalTensor):
                    inlined.append((v, t))
        with self._lock:
            while self._dead:
                self._drop(self._dead.pop())
            entries = [self._entry(t) for _, t in stored]
            self._snapshots += 1
            path = self.folder / f"snapshot-{self._snapshots}.onnx"
        replaced: dict[ir.Value, ir.TensorProtocol] = {
            value: ir.ExternalTensor(
                entry.segment.name,
                entry.offset,
                tensor.nbytes,
                tensor.dtype,
                shape=tensor.shape,
                name=value.name or tensor.name or "",
                base_dir=self.folder,
            )
            for (value, tensor), entry in zip(stored, entries, strict=True)
        }
        for value, tensor in inlined:
            replaced[value] = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=value.name)
        proto = gir.serialize_with(model, replaced)
        proto.ir_version = min(proto.ir_version or gir.MAX_IR_VERSION, gir.MAX_IR_VERSION)
        data = proto.SerializeToString()
        path.write_bytes(data)
        size = len(data) + sum(t.nbytes for _, t in stored)
        segments = list({id(e.segment): e.segment for e in entries}.values())
        return Snapshot(path=path, _own_file=True, _segments=segments, _size=size)


_STORE: WeightStore | None = None
_STORE_LOCK = threading.Lock()


def store() -> WeightStore:
    """This process's store (a forked child makes its own)."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None or _STORE.pid != os.getpid():
            _STORE = WeightStore()
        return _STORE


@dataclasses.dataclass
class Snapshot:
    """A model frozen for ONNX Runtime: bytes when small, else an ``.onnx`` file whose
    weights are external data (in the process's weight store, or beside it)."""

    data: bytes | None = None
    path: Path | None = None
    _own_file: bool = False
    _segments: list[Any] = dataclasses.field(default_factory=list)
    _size: int | None = None

    @classmethod
    def of(cls, model: ir.Model) -> Snapshot:
        if not any(
            t.nbytes >= _EXTERNAL_MIN_BYTES or isinstance(t, ir.ExternalTensor)
            for t in gir.iter_initializer_tensors(model)
        ):
            return cls(data=gir.serialize(model))
        try:
            return store().freeze(model)
        except OSError:  # no room for the weights file: serialize as before
            if gir.tensor_bytes(model) >= _SMALL_MODEL_BYTES:
                raise
            return cls(data=gir.serialize(model))

    @property
    def source(self) -> bytes | str:
        """What ``onnxruntime.InferenceSession`` takes: the bytes or the file's path."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return str(self.path)

    @property
    def size(self) -> int:
        """Serialized size in bytes: the model file plus the weights it names."""
        if self.data is not None:
            return len(self.data)
        if self._size is not None:
            return self._size
        assert self.path is not None
        return sum(p.stat().st_size for p in self.path.parent.iterdir())

    def write(self, dest: Path) -> Path:
        """A self-contained copy at ``dest``; one past protobuf's limit keeps its weights in
        ``dest`` + ``.data``."""
        import onnx

        data = self.data
        if data is None and self.size < _SMALL_MODEL_BYTES:
            assert self.path is not None
            data = onnx.load(str(self.path)).SerializeToString()
        tmp = dest.with_name(dest.name + ".tmp")
        if data is not None:
            tmp.write_bytes(data)
        else:
            assert self.path is not None
            onnx.save_model(
                onnx.load(str(self.path)),
                str(tmp),
                save_as_external_data=True,
                location=dest.name + ".data",
            )
        os.replace(tmp, dest)
        return dest

    def close(self) -> None:
        if self._own_file and self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._own_file = False
        self._segments = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
