"""The DATA contract: model inputs from a .npz file or ONNX test-data folders, or seeded random.

Every feature that needs inputs (verification, calibration, benchmarks) reads them here, so a
mismatch between the data and the model is reported once, clearly, naming the input.

* ``.npz``: keys are the model's input names (other keys, e.g. ``label``, are kept as extras).
  Each array has a leading sample axis: either ``[samples, *input_shape]``, or, for an input
  whose first dimension is the batch, ``[samples, *rest]`` is cut into batches.
* a folder of ``test_data_set_*/input_*.pb`` (or one such set): each set is one feed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from graphopt.errors import DataError, UsageError

Feed = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input: dtype and dims (int, symbolic name, or None)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = (
            "?" if self.dims is None else ",".join("?" if d is None else str(d) for d in self.dims)
        )
        return f"{self.name}: {self.dtype}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    specs = []
    for v in model.graph.inputs:
        if v.is_initializer():
            continue
        if v.dtype is None:
            raise DataError(f"input '{v.name}' has no element type; cannot build data for it")
        dims = None
        if v.shape is not None:
            dims = tuple(_dim(d) for d in v.shape)
        specs.append(InputSpec(v.name or "", v.dtype.numpy(), dims))
    return specs


def _dim(d: int | ir.SymbolicDim) -> int | str | None:
    """A fixed size, a symbolic name, or None for a dynamic dim without a name.

    Paddle (and some TensorFlow converters) write a dynamic dim as ``dim_value: -1``, and a
    ``dim_value: 0`` is as dynamic in practice: neither is a size an input can have. Paddle
    also names unrelated unknown dims ``?``: that is no name.
    """
    if isinstance(d, int):
        return d if d > 0 else None
    return d.value if d.value and d.value != "?" else None  # Paddle names every unknown "?"


def dim_key(spec: InputSpec, axis: int) -> str:
    """The name ``--dim`` uses for one input dim: its symbolic name, else ``input[axis]``."""
    assert spec.dims is not None
    d = spec.dims[axis]
    return d if isinstance(d, str) else f"{spec.name}[{axis}]"


@dataclasses.dataclass
class Samples:
    """Feeds ready for ONNX Runtime, plus where they came from and any extra arrays."""

    feeds: list[Feed]
    source: str
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.feeds)

    def head(self, n: int) -> Samples:
        return Samples(self.feeds[:n], self.source, self.extras)

    def spread(self, n: int) -> Samples:
        """``n`` feeds evenly spaced from the first to the last (all when there are fewer).

        Verification takes these rather than the first ``n``: DATA is often ordered (by
        class, by clip, or as the consecutive calls of a streaming model), and its first
        feeds can all be alike.
        """
        if n >= len(self.feeds):
            return Samples(list(self.feeds), self.source, self.extras)
        picks = sorted({round(i * (len(self.feeds) - 1) / max(n - 1, 1)) for i in range(n)})
        return self.subset(picks)  # labels stay with their feeds (task-metric budgets)

    def subset(self, indices: Sequence[int], source: str | None = None) -> Samples:
        """The feeds at ``indices``, with the rows of each extra array that belong to them.

        An extra (``label``) holding one row per sample of every feed (n feeds of batch b:
        n * b rows, or n) is cut with its feeds; any other (a charset) is kept whole."""
        n = len(self.feeds)
        batches = {1} | {
            int(np.shape(a)[0]) for a in (self.feeds[0].values() if n else ()) if np.ndim(a)
        }
        extras: dict[str, np.ndarray] = {}
        for key, arr in self.extras.items():
            arr = np.asarray(arr)
            per = arr.shape[0] // n if n and arr.ndim else 0
            if per and arr.shape[0] == n * per and per in batches:
                extras[key] = np.concatenate([arr[i * per : (i + 1) * per] for i in indices])
            else:
                extras[key] = arr
        return Samples([self.feeds[i] for i in indices], source or self.source, extras)


def parse_dims(items: list[str] | tuple[str, ...]) -> dict[str, int]:
    """``["batch=8", "sequence=128"]`` -> dict; errors name the bad item."""
    out = {}
    for item in items:
        m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*", item)
        if not m or int(m.group(2)) < 1:
            raise UsageError(f"--dim expects NAME=POSITIVE_INT, got '{item}'")
        out[m.group(1)] = int(m.group(2))
    return out


def _check_dims(spec: InputSpec, shape: tuple[int, ...], what: str) -> None:
    if spec.dims is None:
        return
    if len(shape) != len(spec.dims):
        raise DataError(
            f"input '{spec.name}': {what} has rank {len(shape)}, the model expects "
            f"rank {len(spec.dims)} ({spec.describe()})"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.dims, strict=True)):
        if isinstance(want, int) and got != want:
            raise DataError(
                f"input '{spec.name}': {what} has size {got} on axis {axis}, the model "
                f"expects {want} ({spec.describe()})"
            )


def _check_dtype(spec: InputSpec, arr: np.ndarray) -> None:
    if arr.dtype != spec.dtype:
        raise DataError(
            f"input '{spec.name}': data has dtype {arr.dtype}, the model expects {spec.dtype}",
            hint=f"convert it, e.g. arr.astype(np.{spec.dtype})",
        )


def _split_array(spec: InputSpec, arr: np.ndarray, batch: int) -> list[np.ndarray] | np.ndarray:
    """Cut one input's array into per-feed arrays following the leading sample axis.

    A 0-d array for a 0-d input (a sample rate, a threshold) is one value for every feed and
    is returned as is. Parts are always ndarrays: indexing a 1-d array gives a numpy scalar,
    which ONNX Runtime refuses.
    """
    _check_dtype(spec, arr)
    if arr.ndim == 0 and spec.dims == ():
        return arr
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise DataError(f"input '{spec.name}': no samples (the leading sample axis is empty)")
    if spec.dims is None:
        return [np.asarray(arr[i]) for i in range(arr.shape[0])]
    rank = len(spec.dims)
    if arr.ndim == rank + 1:
        parts = [np.asarray(arr[i]) for i in range(arr.shape[0])]
        for p in parts[:1]:
            _check_dims(spec, p.shape, "each sample")
        return parts
    if arr.ndim == rank and rank > 0:
        first = spec.dims[0]
        size = first if isinstance(first, int) else batch
        if arr.shape[0] % size:
            why = "the model's first dimension" if isinstance(first, int) else "--batch"
            raise DataError(
                f"input '{spec.name}': {arr.shape[0]} samples do not split into batches of "
                f"{size} ({why})"
            )
        parts = [arr[i : i + size] for i in range(0, arr.shape[0], size)]
        _check_dims(spec, parts[0].shape, "each batch")
        return parts
    raise DataError(
        f"input '{spec.name}': data has rank {arr.ndim}, expected {rank + 1} "
        f"(samples x {spec.describe()}) or {rank} (samples on the batch axis)"
    )


def from_arrays(
    model: ir.Model, arrays: Mapping[str, np.ndarray], *, source: str, batch: int = 1
) -> Samples:
    """Feeds from named arrays that follow the DATA contract."""
    if batch < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise DataError(
            f"{source}: missing model input{'s' if len(missing) > 1 else ''} "
            + ", ".join(f"'{m}'" for m in missing)
            + f" (found keys: {', '.join(sorted(arrays)) or 'none'})"
        )
    per_input = {s.name: _split_array(s, np.asarray(arrays[s.name]), batch) for s in specs}
    counts = {name: len(p) for name, p in per_input.items() if isinstance(p, list)}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{source}: inputs have different sample counts: "
            + ", ".join(f"{k}={v}" for k, v in counts.items())
        )
    n = next(iter(counts.values()), 1 if per_input else 0)
    if n == 0:
        raise DataError(f"{source}: no samples")
    feeds = [
        {name: p[i] if isinstance(p, list) else p for name, p in per_input.items()}
        for i in range(n)
    ]
    extras = {k: np.asarray(v) for k, v in arrays.items() if k not in per_input}
    return Samples(feeds, source, extras)


def _numeric_key(p: Path) -> tuple[int, str]:
    """Sort ``x_2`` before ``x_10``."""
    m = re.search(r"(\d+)$", p.stem)
    return (int(m.group(1)) if m else -1, p.name)


def _tensor_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("input_*.pb"), key=_numeric_key)


def _read_tensor(path: Path) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise DataError(f"{path} is not a serialized ONNX TensorProto: {exc}") from exc
    return tensor


def _container(t: ir.TypeProtocol | None) -> str:
    if isinstance(t, ir.SequenceType):
        return "sequence"
    if isinstance(t, ir.OptionalType):
        return "optional"
    return "tensor"


def _read_container(path: Path, kind: str) -> object:
    """A sequence (list of arrays) or optional value of an ONNX test data set."""
    proto = onnx.SequenceProto() if kind == "sequence" else onnx.OptionalProto()
    try:
        proto.ParseFromString(path.read_bytes())
        if kind == "sequence":
            return onnx.numpy_helper.to_list(proto)
        return onnx.numpy_helper.to_optional(proto)
    except Exception as exc:
        raise DataError(f"{path} is not a serialized ONNX {kind} value: {exc}") from exc


def from_test_data_dir(model: ir.Model, folder: Path) -> Samples:
    """Feeds from ONNX ``test_data_set_*`` folders (each set is one feed)."""
    sets = sorted((p for p in folder.glob("test_data_set_*") if p.is_dir()), key=_numeric_key)
    if not sets and _tensor_files(folder):
        sets = [folder]
    if not sets:
        raise DataError(f"{folder}: no test_data_set_* folders and no input_*.pb files")
    specs = input_specs(model)
    containers = {v.name: _container(v.type) for v in model.graph.inputs if not v.is_initializer()}
    feeds = []
    for s in sets:
        files = _tensor_files(s)
        if len(files) != len(specs):
            raise DataError(f"{s}: {len(files)} input files, the model has {len(specs)} inputs")
        feed: Feed = {}
        by_name = {spec.name: spec for spec in specs}
        for i, f in enumerate(files):
            kind = containers.get(specs[i].name, "tensor")
            if kind != "tensor":  # sequences, optionals and maps are taken as they are
                feed[specs[i].name] = _read_container(f, kind)
                continue
            t = _read_tensor(f)
            spec = by_name.get(t.name) or specs[i]
            arr = onnx.numpy_helper.to_array(t)
            _check_dtype(spec, arr)
            _check_dims(spec, arr.shape, f"{f.name}")
            feed[spec.name] = arr
        feeds.append(feed)
    return Samples(feeds, str(folder))


def load_data(model: ir.Model, path: str | os.PathLike[str], *, batch: int = 1) -> Samples:
    """Read DATA for ``model`` from a .npz file or a test-data folder."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    if p.is_dir():
        return from_test_data_dir(model, p)
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p} is not a readable .npz file: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        raise DataError(f"{p} holds a single array; DATA needs an .npz keyed by input names")
    with loaded as npz:
        arrays = {k: npz[k] for k in npz.files}
    return from_arrays(model, arrays, source=str(p), batch=batch)


def from_feeds(model: ir.Model, feeds: Iterable[Mapping[str, Any]], *, source: str) -> Samples:
    """Samples from feed dicts (input name -> array), one feed per sample, each checked
    against the model's inputs like DATA. Extra keys are refused: they are a typo more often
    than not."""
    specs = {s.name: s for s in input_specs(model)}
    out: list[Feed] = []
    for i, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise DataError(
                f"{source}: feed {i} is a {type(feed).__name__}, not a dict of input name -> array"
            )
        missing = [n for n in specs if n not in feed]
        extra = [k for k in feed if k not in specs]
        if missing or extra:
            raise DataError(
                f"{source}: feed {i} "
                + (f"lacks input(s) {', '.join(map(repr, missing))}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"has unknown key(s) {', '.join(map(repr, extra))}" if extra else "")
                + f" (the model's inputs: {', '.join(specs)})"
            )
        checked: Feed = {}
        for name, spec in specs.items():
            arr = np.asarray(feed[name])
            _check_dtype(spec, arr)
            _check_dims(spec, tuple(arr.shape), f"feed {i}")
            checked[name] = arr
        out.append(checked)
    if not out:
        raise DataError(f"{source}: no samples")
    return Samples(out, source)


def _reader_feeds(reader: Any) -> Iterator[Mapping[str, Any]]:
    """The feeds of an ONNX Runtime ``CalibrationDataReader`` (``get_next()`` until None)."""
    while (feed := reader.get_next()) is not None:
        yield feed


def as_samples(model: ir.Model, data: Any, *, batch: int = 1) -> Samples | None:
    """DATA in any form the Python API takes: None, ``Samples``, a .npz or test-data folder
    path, a dict of arrays (the .npz contract), an ONNX Runtime ``CalibrationDataReader``, or
    any iterable of feed dicts."""
    if data is None or isinstance(data, Samples):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_data(model, data, batch=batch)
    if isinstance(data, Mapping):
        if all(isinstance(v, np.ndarray) for v in data.values()):
            return from_arrays(model, data, source="arrays given in Python", batch=batch)
        raise DataError("data given as a dict must map input names to numpy arrays")
    if hasattr(data, "get_next"):
        return from_feeds(model, _reader_feeds(data), source=type(data).__name__)
    if isinstance(data, Iterable):
        return from_feeds(model, data, source="feeds given in Python")
    raise UsageError(
        f"data: cannot use a {type(data).__name__}",
        hint="give a .npz path, a dict of arrays, or an iterable of {input name: array} feeds",
    )


def random_feeds(
    model: ir.Model,
    *,
    count: int = 2,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    int_high: int = 2,
) -> Samples:
    """Seeded random feeds from the input shapes; dynamic dims come from ``dims`` (else 1).

    Without DATA, :func:`graphopt.inputs.probe.choose` picks ``dims`` the model runs with.

    Floats are standard normal; integers are drawn from [0, int_high) so they are valid
    indices and masks for most models; booleans are fair coin flips.
    """
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    specs = input_specs(model)
    feeds = []
    for _ in range(count):
        feed: Feed = {}
        for spec in specs:
            shape = resolve_shape(spec, dims)
            feed[spec.name] = random_array(rng, spec.dtype, shape, int_high)
        feeds.append(feed)
    desc = ",".join(f"{k}={v}" for k, v in sorted(dims.items()))
    return Samples(feeds, f"random(seed={seed}{', ' + desc if desc else ''})")


def resolve_shape(spec: InputSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """The input's shape with every dynamic dim taken from ``dims`` (by its :func:`dim_key`,
    else ``*``, else 1)."""
    if spec.dims is None:
        raise DataError(
            f"input '{spec.name}' has no shape; give real inputs with --data DATA",
            hint="DATA is a .npz keyed by input names, or a folder of test_data_set_*",
        )
    return tuple(
        d if isinstance(d, int) else dims.get(dim_key(spec, axis), dims.get("*", 1))
        for axis, d in enumerate(spec.dims)
    )


def random_array(
    rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], high: int = 2
) -> np.ndarray:
    """Standard normal floats, integers in [0, high), fair booleans, 'a'/'b' strings."""
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, high, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V":
        return rng.standard_normal(shape).astype(np.float32).astype(dtype)
    if dtype.kind in "SUO":
        return np.array(rng.choice(["a", "b"], size=shape), dtype=object)
    raise DataError(f"cannot make random data of dtype {dtype}")
