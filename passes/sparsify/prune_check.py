"""The proof that a channel rewrite is exact, run by ``prune-channels`` on every run.

Removing channels must give what the original model gives with those channels silenced (the
sinks' matching weight rows zeroed). The rewrite snapshots that silenced model; the check
runs both on two inputs and compares the graph outputs and the outputs of every layer that
reads removed channels (a saturated sigmoid head agrees at the outputs whatever the layers
before it compute, so the outputs alone can prove nothing there). A mismatch means the
channel analysis missed a tie: the pass then finds the groups whose rewrite cannot be proven
and leaves them whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.channel_layout import Analysis

from graphopt import runtime
from graphopt.accuracy.tolerance import compare_arrays
from graphopt.core.pass_base import PassContext, Tolerance
from graphopt.inputs.data import random_feeds
from graphopt.runtime import Snapshot

#: how far a probed layer output may move, relative to its largest magnitude: the rounding
#: of a sum over fewer terms (measured up to 5e-6 on PP-OCR, YOLOX), not another computation
_PROBE_MAX_REL = 1e-3


@dataclasses.dataclass(frozen=True)
class Probe:
    """A layer's output the check compares: the silenced original's, at ``index`` along
    ``axis`` where the layer's own channels were pruned too (None: all of it)."""

    node: str
    op: str
    axis: int = 0
    index: np.ndarray | None = None


def probes(
    model: ir.Model, analysis: Analysis, kept: dict[int, np.ndarray]
) -> list[tuple[ir.Value, Probe]]:
    """The outputs of the sinks that lose input channels (not already graph outputs)."""
    full = analysis.complete({s: np.asarray(k, np.int64) for s, k in kept.items()})
    pruned = {s for s, k in full.items() if len(k) < analysis.spaces[s].size}
    outputs = set(model.graph.outputs)
    out: dict[ir.Value, Probe] = {}
    for sink in analysis.sinks:
        value = sink.node.outputs[0]
        if value in outputs or value in out or not pruned & set(sink.layout.spaces()):
            continue
        probe = Probe(sink.node.name or "", sink.node.op_type)
        layout = analysis.layouts.get(value)
        if layout is not None and pruned & set(layout.spaces()):
            probe = dataclasses.replace(probe, axis=layout.axis, index=layout.kept_indices(full))
        out[value] = probe
    return list(out.items())


@contextlib.contextmanager
def extra_outputs(model: ir.Model, values: list[ir.Value]) -> Iterator[None]:
    """``values`` as graph outputs for as long as the block runs."""
    n = len(model.graph.outputs)
    model.graph.outputs.extend(values)
    try:
        yield
    finally:
        while len(model.graph.outputs) > n:
            model.graph.outputs.pop()


def check_rewrite(
    model: ir.Model,
    silenced: Snapshot,
    probed: list[tuple[ir.Value, Probe]],
    context: PassContext,
) -> dict[str, float]:
    """Run the pruned model and the silenced original on the same two inputs; they must
    agree to float rounding, or the rewrite is wrong (a bug: the run stops here).

    Compared: the graph outputs, and the outputs of the layers that read the removed
    channels (``probed``). Returns the worst differences seen.
    """
    samples = context.data
    if samples is not None and len(samples.feeds):
        feeds = samples.feeds[:2]
    else:
        feeds = random_feeds(model, count=2, seed=context.seed, dims=context.dims).feeds
    outputs = [v.name for v in model.graph.outputs]
    names = outputs + [v.name for v, _ in probed]
    want_sess = runtime.make_session(silenced, optimize=False)
    with extra_outputs(model, [v for v, _ in probed]):
        got_sess = runtime.make_session(model, optimize=False)
    worst = {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "layers_compared": len(probed)}
    worst["layers_max_rel"] = 0.0
    tol = Tolerance(max_abs=1e-4, max_rel=1e-3, min_cosine=0.9999)
    for i, feed in enumerate(feeds):
        want = runtime.run_checked(want_sess, names, feed, f"the check's feed {i}")
        got = runtime.run_checked(got_sess, names, feed, f"the check's feed {i}")
        for name, g, w in zip(outputs, got, want):
            ok, m = tol.check(g, w)
            worst["max_abs"] = max(worst["max_abs"], m["max_abs"])
            worst["max_rel"] = max(worst["max_rel"], m["max_rel"])
            worst["cosine"] = min(worst["cosine"], m["cosine"])
            if not ok:
                raise RuntimeError(_mismatch(f"output '{name}'", m))
        for (value, probe), g, w in zip(probed, got[len(outputs) :], want[len(outputs) :]):
            w = np.asarray(w)
            if probe.index is not None and w.ndim > probe.axis:
                w = np.take(w, probe.index, axis=probe.axis)
            ok, m = _agree(np.asarray(g), w)
            worst["layers_max_rel"] = max(worst["layers_max_rel"], m["max_rel"])
            if not ok:
                where = f"'{value.name}', the output of {probe.op} '{probe.node}'"
                raise RuntimeError(_mismatch(where, m))
    silenced.close()
    return worst


def _agree(got: np.ndarray, want: np.ndarray) -> tuple[bool, dict[str, float]]:
    """A probed layer output: equal to rounding relative to its largest magnitude."""
    m = compare_arrays(got, want)
    eps = float(np.finfo(want.dtype).eps) if np.issubdtype(want.dtype, np.floating) else 0.0
    limit = max(_PROBE_MAX_REL, 8 * eps)
    return got.shape == want.shape and m["max_rel"] <= limit, m


def _mismatch(where: str, m: dict[str, float]) -> str:
    return (
        "the pruned model does not compute what the original computes with the removed "
        f"channels silenced (at {where}: {m})"
    )
