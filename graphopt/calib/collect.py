"""Collect :class:`TensorStats` for a model's tensors in one augmented ONNX Runtime run.

The named tensors are added as extra graph outputs of a *copy* of the model (the caller's
onnx_ir model is never touched), one CPU session is built with graph optimizations disabled
(so every named tensor still exists), and the feeds are run one by one. Each feed's outputs
update the statistics as they arrive and are dropped, so memory stays flat in the number of
samples: one feed's activations plus ``bins`` counters per tensor.
"""

from __future__ import annotations

import contextlib
import difflib
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import ir as gir
from graphopt import runtime
from graphopt.calib.expose import Exposed, body_values, expose, merge_iterations
from graphopt.calib.stats import DEFAULT_BINS, TensorStats
from graphopt.errors import DataError, RuntimeFailure
from graphopt.inputs.data import Samples

FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
_ORT_FLOAT_TYPES = frozenset(
    {"tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"}
)


def default_tensors(model: ir.Model) -> list[str]:
    """Every float graph input and node output of the main graph, in graph order.

    Values whose type the model does not record are included; the session's output types
    decide (non-float ones are then skipped). Constant outputs are weights, not activations.
    """
    names: list[str] = []
    for v in model.graph.inputs:
        if not v.is_initializer() and v.name and (v.dtype is None or v.dtype in FLOAT_TYPES):
            names.append(v.name)
    for node in model.graph:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            continue
        for v in node.outputs:
            if v.name and (v.dtype is None or v.dtype in FLOAT_TYPES):
                names.append(v.name)
    return list(dict.fromkeys(names))


def _main_graph_values(model: ir.Model) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for v in model.graph.inputs:
        if v.name:
            values[v.name] = v
    for name, v in model.graph.initializers.items():
        values[name] = v
    for node in model.graph:
        for v in node.outputs:
            if v.name:
                values[v.name] = v
    return values


def resolve_tensors(model: ir.Model, tensors: Sequence[str] | None) -> tuple[list[str], bool]:
    """The tensor names to collect and whether they were asked for explicitly.

    Tensors inside If/Loop/Scan bodies are read through their control-flow nodes
    (:mod:`graphopt.calib.expose`). Unknown names and non-float tensors are
    :class:`DataError`\\ s that name the tensor.
    """
    if tensors is None:
        return default_tensors(model), False
    if isinstance(tensors, str):
        tensors = [tensors]
    values = {**body_values(model), **_main_graph_values(model)}
    names = list(dict.fromkeys(tensors))
    for name in names:
        v = values.get(name)
        if v is None:
            close = difflib.get_close_matches(name, list(values), n=1)
            raise DataError(
                f"unknown tensor '{name}': no graph input, initializer or node output has "
                "that name" + (f" (did you mean '{close[0]}'?)" if close else "")
            )
        if v.dtype is not None and v.dtype not in FLOAT_TYPES:
            raise DataError(
                f"tensor '{name}' has type {v.dtype.name.lower()}; only float tensors can be "
                "calibrated"
            )
    if not names:
        raise DataError("no tensors to calibrate (the tensor list is empty)")
    return names, True


def _check_samples(model: ir.Model, samples: Samples) -> None:
    if samples is None or len(samples.feeds) == 0:
        raise DataError("no samples to calibrate on (the DATA has no feeds)")
    wanted = [v.name for v in model.graph.inputs if not v.is_initializer()]
    for i, feed in enumerate(samples.feeds):
        missing = [n for n in wanted if n not in feed]
        if missing:
            raise DataError(
                f"feed {i} of {samples.source} lacks model input "
                + ", ".join(f"'{m}'" for m in missing)
            )


def _add_outputs(
    proto: onnx.ModelProto, names: Sequence[str], model: ir.Model
) -> tuple[Exposed, dict[str, str]]:
    """Append the tensors as graph outputs (typed where the model knows the type); body
    tensors are lifted (:func:`expose`). Returns those lifted and those that could not be."""
    values = _main_graph_values(model)
    inner = body_values(model)
    lift = [n for n in names if n not in values and n in inner]
    types = {n: int(inner[n].dtype) for n in lift if inner[n].dtype is not None}
    exposed, failed = expose(proto, lift, types) if lift else (Exposed(), {})
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name in present or (name in inner and name not in values):
            continue
        v = values.get(name)
        if v is not None and v.dtype is not None:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, int(v.dtype), None))
        else:  # ONNX Runtime infers the type of an untyped output
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
        present.add(name)
    return exposed, failed


def _keep_only(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    """Make ``names`` the only graph outputs and drop the nodes they do not depend on."""
    del proto.graph.output[:]
    _add_outputs_proto(proto, names)
    needed = set(names)
    keep = []
    for node in reversed(proto.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs may read outer values
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    for n in g.node:
                        needed.update(i for i in n.input if i)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(keep))
    inits = [t for t in proto.graph.initializer if t.name in needed]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)


def _add_outputs_proto(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    for name in names:
        proto.graph.output.append(onnx.ValueInfoProto(name=name))


@contextlib.contextmanager
def augmented_session(
    model: ir.Model, names: Sequence[str], *, optimize: bool = False, only: bool = False
) -> Iterator[Any]:
    """A CPU session of a copy of ``model`` with ``names`` as outputs.

    Graph optimizations are off unless ``optimize`` (tensors named as outputs survive ORT's
    fusions either way, but with optimizations off every intermediate value is computed
    exactly as the graph says). ``only`` makes ``names`` the only outputs and drops the
    nodes they do not need, so a tensor early in the graph costs only the graph up to it.
    Tensors of If/Loop/Scan bodies are lifted out (:mod:`graphopt.calib.expose`) and
    returned under their own names, iterations folded into their first axis; the session's
    ``unread`` says which could not be lifted and why.

    The copy goes through a temporary folder: onnx_ir writes the weights to an external data
    file tensor by tensor, the small weightless proto gets the extra outputs, and ONNX Runtime
    loads the pair. Measured on a 430 MB encoder this peaks at the model plus the session
    (no proto copy and no serialized bytes in memory) and builds the session about 3x faster
    than going through an in-memory proto; it also works past protobuf's 2 GB limit.
    """
    tmp = Path(tempfile.mkdtemp(prefix="graphopt-calib-"))
    try:
        gir.save_model(model, tmp / "model.onnx", external_data=True)
        proto = onnx.load_model(str(tmp / "model.onnx"), load_external_data=False)
        inner = body_values(model).keys() - _main_graph_values(model).keys()
        exposed, unread = Exposed(), {}
        if only and not inner.intersection(names):
            _keep_only(proto, names)
        else:
            exposed, unread = _add_outputs(proto, names, model)
        onnx.save_model(proto, str(tmp / "augmented.onnx"))
        del proto
        sess = runtime.make_session(str(tmp / "augmented.onnx"), optimize=optimize)
        yield LiftedSession(sess, exposed, unread) if (exposed or unread) else sess
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class LiftedSession:
    """An ONNX Runtime session whose outputs include tensors lifted out of If/Loop/Scan
    bodies, under their own names (what callers of :func:`augmented_session` fetch)."""

    def __init__(self, sess: Any, exposed: Exposed, unread: dict[str, str]) -> None:
        self._sess = sess
        self._exposed = exposed
        self._outer = {name: out for name, (out, _) in exposed.items()}
        self._inner = {out: name for name, out in self._outer.items()}
        #: body tensors that could not be lifted: name -> why
        self.unread = unread

    def get_inputs(self) -> Any:
        return self._sess.get_inputs()

    def get_outputs(self) -> list[Any]:
        return [
            SimpleNamespace(name=self._inner.get(o.name, o.name), type=o.type, shape=o.shape)
            for o in self._sess.get_outputs()
        ]

    def _names(self, names: Sequence[str] | None) -> list[str]:
        names = [o.name for o in self.get_outputs()] if names is None else names
        return [self._outer.get(n, n) for n in names]

    def run(self, names: Sequence[str] | None, feed: dict[str, Any], *args: Any) -> list[Any]:
        wanted = [o.name for o in self.get_outputs()] if names is None else list(names)
        got = self._sess.run(self._names(wanted), feed, *args)
        return [
            merge_iterations(np.asarray(a), self._exposed[n][1]) if n in self._exposed else a
            for n, a in zip(wanted, got, strict=True)
        ]

    def run_with_ort_values(self, names: Sequence[str] | None, feed: Any, *args: Any) -> Any:
        """:meth:`run` for ml_dtypes tensors (bfloat16 models): lifted ones merged alike."""
        wanted = [o.name for o in self.get_outputs()] if names is None else list(names)
        got = self._sess.run_with_ort_values(self._names(wanted), feed, *args)
        return [
            runtime.to_ortvalue(merge_iterations(runtime.from_ortvalue(v), self._exposed[n][1]))
            if n in self._exposed
            else v
            for n, v in zip(wanted, got, strict=True)
        ]


def _progress(enabled: bool, label: str = "calibrating") -> Any:
    """A transient bar on stderr; disabled (silent) when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


def stream_tensors(
    model: ir.Model,
    samples: Samples,
    names: Sequence[str],
    *,
    label: str = "calibrating",
    progress: bool = True,
    optimize: bool = False,
    only: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield, feed by feed, the named tensors (graph inputs or node outputs) of ``model``.

    One augmented CPU session serves every feed (see :func:`augmented_session` for
    ``optimize`` and ``only``); each feed's tensors are yielded as they come and dropped by
    the caller, so memory stays at one feed's worth.
    """
    _check_samples(model, samples)
    inputs = {v.name for v in model.graph.inputs}
    fetch = [n for n in dict.fromkeys(names) if n not in inputs]
    session = (
        augmented_session(model, fetch, optimize=optimize, only=only)
        if fetch
        else contextlib.nullcontext()
    )
    with session as sess, _progress(progress, label) as bar:
        task = bar.add_task(label, total=len(samples.feeds))
        for i, feed in enumerate(samples.feeds):
            out = runtime.run_checked(sess, fetch, feed, f"{label} feed {i}") if fetch else []
            got = dict(zip(fetch, (np.asarray(a) for a in out), strict=True))
            got.update({n: np.asarray(feed[n]) for n in names if n in inputs})
            yield got
            bar.advance(task)


def collect_stats(
    model: ir.Model,
    samples: Samples,
    tensors: list[str] | None = None,
    *,
    bins: int = DEFAULT_BINS,
    progress: bool = True,
    unread: dict[str, str] | None = None,
    histogram: bool = True,
    rows: Collection[str] | None = None,
) -> dict[str, TensorStats]:
    """Stream ``samples`` through one augmented session; return stats per tensor name.

    ``histogram=False`` keeps only counts, min and max (all ``minmax`` calibration reads);
    ``rows`` names the tensors whose per-row maxima are kept (default: all; Softmax inputs
    need them).

    ``tensors`` defaults to :func:`default_tensors` (every float activation and graph input).
    Tensors of If/Loop/Scan bodies are read through their control-flow nodes; those that
    cannot be (a body whose tensor changes shape between iterations, an op whose bodies
    cannot return values) get no stats, and ``unread`` (when given) says why, by name.
    A rich progress bar shows on stderr when ``progress`` and stderr is a terminal.
    """
    names, explicit = resolve_tensors(model, tensors)
    _check_samples(model, samples)
    TensorStats(bins)  # validate bins before the (expensive) session
    unread = {} if unread is None else unread

    def kinds(name: str) -> TensorStats:
        return TensorStats(bins, histogram=histogram, rows=rows is None or name in rows)

    try:
        return _collect(model, samples, names, explicit, progress, unread, kinds)
    except RuntimeFailure as exc:
        inner = [n for n in names if n in body_values(model)]
        if not inner:
            raise
        why = f"ONNX Runtime could not return it from its body ({exc})"
        unread.update(dict.fromkeys(inner, why))
        rest = [n for n in names if n not in unread]
        if not rest:
            return {}
        return _collect(model, samples, rest, explicit, progress, unread, kinds)


def _collect(
    model: ir.Model,
    samples: Samples,
    names: list[str],
    explicit: bool,
    progress: bool,
    unread: dict[str, str],
    new_stats: Callable[[str], TensorStats],
) -> dict[str, TensorStats]:
    with augmented_session(model, names) as sess:
        unread.update(getattr(sess, "unread", {}))
        types = {o.name: o.type for o in sess.get_outputs()}
        fetch = []
        for name in names:
            if name in unread:
                continue
            if types.get(name) in _ORT_FLOAT_TYPES:
                fetch.append(name)
            elif explicit:
                raise DataError(
                    f"tensor '{name}' has type {types.get(name)}; only float tensors can be "
                    "calibrated"
                )
        stats = {name: new_stats(name) for name in fetch}
        if not fetch:
            return stats
        with _progress(progress) as bar:
            task = bar.add_task("calibrating", total=len(samples.feeds))
            for i, feed in enumerate(samples.feeds):
                outputs = runtime.run_checked(sess, fetch, feed, f"calibration feed {i}")
                for k, name in enumerate(fetch):
                    stats[name].update(np.asarray(outputs[k]))
                    outputs[k] = None  # free each activation as soon as it is counted
                del outputs
                bar.advance(task)
    return stats
