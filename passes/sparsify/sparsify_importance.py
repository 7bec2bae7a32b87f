"""How much each weight of ``sparsify``'s targets matters, and how much each layer does.

* ``magnitude``: |w|;
* ``activation``: |w| * ||x_j||, the L2 norm of the input channel ``j`` the weight multiplies
  over the calibration data (one ONNX Runtime run over DATA with the layers' inputs exposed
  as outputs);
* ``second-order``: the diagonal OBS saliency w^2 * (sum x_j^2 + damping * mean_j sum x_j^2).

:func:`sensitivity` measures each layer pruned alone against the dense model on DATA
(``skip_sensitive``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.sparsity_patterns import _Target

from graphopt import runtime
from graphopt.calib.collect import augmented_session
from graphopt.errors import DataError
from graphopt.inputs.data import Samples

#: relative damping added to the Hessian diagonal (``second-order``), as in OBS/SparseGPT
DAMPING = 0.01


def importance(
    model: ir.Model, targets: list[_Target], criterion: str, samples: Samples | None
) -> dict[int, np.ndarray]:
    """Per target (by ``id``), the importance of each weight (weight-shaped, float64)."""
    tables = [t for t in targets if t.node.op_type == "Gather"]
    out = {id(t): np.abs(t.array).astype(np.float64) for t in tables}
    layers = [t for t in targets if t.node.op_type != "Gather"]
    if criterion == "magnitude":
        out.update((id(t), np.abs(t.array).astype(np.float64)) for t in layers)
        return out
    sums = _channel_sums(model, layers, criterion, samples) if layers else {}
    for t in layers:
        ss = sums[id(t)]
        if criterion == "activation":
            out[id(t)] = np.abs(t.array) * t.channel_scale(np.sqrt(ss))
        else:
            damped = ss + DAMPING * (float(ss.mean()) if ss.size else 0.0)
            out[id(t)] = np.square(t.array.astype(np.float64)) * t.channel_scale(damped)
    return out


def _channel_sums(
    model: ir.Model, targets: list[_Target], criterion: str, samples: Samples | None
) -> dict[int, np.ndarray]:
    """Per-input-channel sum of squares of each target's activation over DATA."""
    if samples is None or len(samples.feeds) == 0:
        raise DataError(f"sparsify{{criterion={criterion}}} needs calibration data (DATA)")
    graph_inputs = {v.name for v in model.graph.inputs}
    names = []
    for t in targets:
        x = t.node.inputs[0]
        assert x is not None
        if x.name not in graph_inputs and x.name not in names:
            names.append(x.name)
    sums: dict[int, np.ndarray] = {}

    def update(feed: dict[str, Any], fetched: dict[str, np.ndarray]) -> None:
        for t in targets:
            x = t.node.inputs[0]
            assert x is not None
            act = feed[x.name] if x.name in graph_inputs else fetched[x.name]
            s = t.channel_sums(act)
            sums[id(t)] = s if id(t) not in sums else sums[id(t)] + s

    if not names:
        for feed in samples.feeds:
            update(feed, {})
        return sums
    with augmented_session(model, names) as sess:
        for i, feed in enumerate(samples.feeds):
            missing = [
                n for n in graph_inputs if n not in feed and n not in model.graph.initializers
            ]
            if missing:
                raise DataError(f"feed {i} of {samples.source} lacks input '{missing[0]}'")
            outs = runtime.run_checked(sess, names, feed, f"calibration feed {i}")
            update(feed, dict(zip(names, outs, strict=True)))
    return sums


def sensitivity(
    model: ir.Model,
    pending: list[_Target],
    new: dict[int, np.ndarray],
    samples: Samples | None,
) -> dict[str, float]:
    """Relative squared error of the outputs on DATA with each target pruned alone (one
    session each), by target name."""
    if samples is None or len(samples.feeds) == 0:
        raise DataError("sparsify{skip_sensitive} measures on calibration data (DATA)")
    feeds = samples.feeds

    def outputs() -> list[list[np.ndarray]]:
        return runtime.run_feeds(runtime.make_session(model), feeds)

    dense = outputs()
    errors = {}
    for t in pending:
        value = t.weight.const_value
        t.weight.const_value = ir.tensor(new[id(t)].astype(np.float32), name=t.weight.name)
        try:
            got = outputs()
        finally:
            t.weight.const_value = value
        num = sum(
            float(np.square(np.asarray(g, np.float64) - w).sum())
            for gs, ws in zip(got, dense)
            for g, w in zip(gs, ws)
        )
        den = sum(float(np.square(np.asarray(w, np.float64)).sum()) for ws in dense for w in ws)
        errors[t.name] = num / den if den > 0 else 0.0
    return errors
