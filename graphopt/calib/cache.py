"""A file cache of calibration statistics, so passes and reruns share one collection run.

Collecting statistics runs the whole model over every sample; a pipeline that calibrates in
several passes, or a rerun with other range methods, should not pay that again. The cache is
one ``.npz`` (a JSON header plus one histogram per tensor), keyed by content hashes of the
model (structure, attributes and initializer bytes) and of the feed arrays, and by the bin
count. ``graphopt.ir.fingerprint`` cannot serve as the key: it hashes object ids, which
change between processes.

The tensor list is not part of the key but recorded: a request for tensors the cache already
holds (or for the default set, when the default set was collected) is a hit; otherwise only
the request is collected and the file is rewritten with the union. Writes are atomic (temp
file beside the target, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.calib import collect as _collect
from graphopt.calib.stats import DEFAULT_BINS, TensorStats
from graphopt.errors import DataError, GraphoptError
from graphopt.inputs.data import Samples

CACHE_FORMAT = "graphopt.calib-cache/2"


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=20)


def _put(h: Any, *parts: Any) -> None:
    h.update(repr(parts).encode())
    h.update(b"\x00")


def _hash_tensor(h: Any, t: Any) -> None:
    _put(h, "tensor", str(t.dtype), tuple(t.shape.numpy()) if t.shape is not None else None)
    h.update(t.tobytes())


def _hash_attr(h: Any, attr: Any) -> None:
    if attr.is_ref():
        _put(h, "attr-ref", attr.name, attr.ref_attr_name)
        return
    kind = attr.type
    _put(h, "attr", attr.name, str(kind))
    if kind == ir.AttributeType.TENSOR:
        _hash_tensor(h, attr.value)
    elif kind == ir.AttributeType.TENSORS:
        for t in attr.value:
            _hash_tensor(h, t)
    elif kind == ir.AttributeType.GRAPH:
        _hash_graph(h, attr.value)
    elif kind == ir.AttributeType.GRAPHS:
        for g in attr.value:
            _hash_graph(h, g)
    else:
        _put(h, str(attr.value))


def _value(v: ir.Value | None) -> Any:
    return None if v is None else (v.name, str(v.type), str(v.shape))


def _hash_nodes(h: Any, nodes: Any) -> None:
    for node in nodes:
        _put(
            h,
            "node",
            node.domain,
            node.op_type,
            node.overload,
            [None if v is None else v.name for v in node.inputs],
            [v.name for v in node.outputs],
        )
        for key in sorted(node.attributes):
            _hash_attr(h, node.attributes[key])


def _hash_graph(h: Any, graph: ir.Graph) -> None:
    _put(h, "graph", [_value(v) for v in graph.inputs], [_value(v) for v in graph.outputs])
    for name in sorted(graph.initializers):
        v = graph.initializers[name]
        _put(h, "init", name)
        if v.const_value is not None:
            _hash_tensor(h, v.const_value)
    _hash_nodes(h, graph)


def model_hash(model: ir.Model) -> str:
    """Content hash of a model, stable across processes: structure, types, attributes and
    initializer bytes (external data is read; names of values matter, object ids do not)."""
    h = _hasher()
    _put(h, "opsets", sorted(model.opset_imports.items()))
    _hash_graph(h, model.graph)
    for key in sorted(model.functions, key=repr):
        f = model.functions[key]
        _put(h, "function", key, [v.name for v in f.inputs], [v.name for v in f.outputs])
        _put(h, "function-attrs", sorted(f.attributes))
        _hash_nodes(h, f)
    return h.hexdigest()


def data_hash(samples: Samples) -> str:
    """Content hash of the feeds: names, dtypes, shapes and bytes, in order."""
    h = _hasher()
    _put(h, "feeds", len(samples.feeds))
    for feed in samples.feeds:
        for name in sorted(feed):
            arr = np.asarray(feed[name])
            _put(h, name, arr.dtype.str, arr.shape)
            if arr.dtype == object:
                _put(h, arr.tolist())
            else:
                h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return h.hexdigest()


def cache_key(model: ir.Model, samples: Samples, *, bins: int = DEFAULT_BINS) -> str:
    """The cache key: model content, feed content and histogram bins."""
    h = _hasher()
    _put(h, CACHE_FORMAT, model_hash(model), data_hash(samples), int(bins))
    return h.hexdigest()


def cache_file(cache: str | os.PathLike[str], key: str) -> Path:
    """``cache`` itself, or, when it is an existing folder, a file in it named by the key."""
    p = Path(cache)
    return p / f"calib-{key[:24]}.npz" if p.is_dir() else p


def save_stats(
    path: str | os.PathLike[str],
    stats: dict[str, TensorStats],
    *,
    key: str,
    default_set: bool = False,
) -> Path:
    """Write ``stats`` atomically to an .npz; ``default_set`` records that they are the
    model's whole default tensor set."""
    dest = Path(path)
    names = list(stats)
    header: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "key": key,
        "default_set": bool(default_set),
        "tensors": [],
    }
    arrays: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        d = stats[name].to_dict()
        arrays[f"hist_{i}"] = d.pop("hist")
        header["tensors"].append({"name": name, **d})
    arrays["header"] = np.array(json.dumps(header))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise GraphoptError(
            f"cannot write calibration cache {dest}: {exc.strerror or exc}"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise GraphoptError(
                f"cannot write calibration cache {dest}: {exc.strerror or exc}"
            ) from exc
        raise
    return dest


def read_cache(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, TensorStats]]:
    """(header, stats) of a cache file; DataError when it is unreadable or inconsistent."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"][()]))
            if header.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}, expected {CACHE_FORMAT}")
            stats = {}
            for i, entry in enumerate(header["tensors"]):
                d = dict(entry)
                name = d.pop("name")
                stats[name] = TensorStats.from_dict({**d, "hist": npz[f"hist_{i}"]})
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise DataError(f"{p} is not a readable calibration cache: {exc}") from exc
    return header, stats


def load_stats(
    path: str | os.PathLike[str], *, key: str | None = None
) -> dict[str, TensorStats] | None:
    """The cached stats, or None when the file is missing or was made for another key."""
    p = Path(path)
    if not p.is_file():
        return None
    header, stats = read_cache(p)
    if key is not None and header.get("key") != key:
        return None
    return stats


def load_or_collect(
    model: ir.Model,
    samples: Samples,
    cache: str | os.PathLike[str] | None,
    tensors: Sequence[str] | None = None,
    *,
    bins: int = DEFAULT_BINS,
    progress: bool = True,
    unread: dict[str, str] | None = None,
    histogram: bool = True,
    rows: Collection[str] | None = None,
) -> dict[str, TensorStats]:
    """Stats for ``tensors`` (default: every float activation) from the cache when it holds
    them for this model, data and bin count; otherwise collect and update the cache
    (``unread``, ``histogram``, ``rows``: see :func:`graphopt.calib.collect.collect_stats`;
    with a cache, full statistics are always collected so any method can reuse them).

    ``cache`` is a file path, an existing folder (the file is named by the key), or None (no
    cache). An unreadable cache file is treated as a miss and replaced.
    """
    if cache is None:
        return _collect.collect_stats(
            model,
            samples,
            tensors,
            bins=bins,
            progress=progress,
            unread=unread,
            histogram=histogram,
            rows=rows,
        )
    names, explicit = _collect.resolve_tensors(model, tensors)
    key = cache_key(model, samples, bins=bins)
    path = cache_file(cache, key)
    cached: dict[str, TensorStats] = {}
    default_set = False
    if path.is_file():
        try:
            header, stats = read_cache(path)
        except DataError:
            header, stats = {}, {}
        if header.get("key") == key:
            cached, default_set = stats, bool(header.get("default_set"))
            if explicit and all(n in cached for n in names):
                return {n: cached[n] for n in names}
            if not explicit and default_set:
                return {n: cached[n] for n in names if n in cached}
    fresh = _collect.collect_stats(
        model, samples, names if explicit else None, bins=bins, progress=progress, unread=unread
    )
    save_stats(path, {**cached, **fresh}, key=key, default_set=default_set or not explicit)
    return fresh
