"""SmoothQuant for qdq-insert: per-channel scales that move activation outliers into weights.

Kept apart from planning and emission: it needs its own pass over the calibration data
(per-channel statistics rather than per-tensor histograms) and an error model to decide,
input by input, whether smoothing pays. The Mul nodes it implies are written by
:mod:`.qdq_emit`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize.qdq_plan import QdqRun, plan

from graphopt import runtime
from graphopt.ir import const_array as _const


def int8_matmul_error(x_range: float, x_mean_sq: np.ndarray, w: np.ndarray, qmax: int) -> float:
    """Expected squared output error of int8 ``x @ w``: per-tensor x, per-column w.

    Rounding errors are uniform and independent: x's step d = range / 255 adds
    d^2/12 * ||w||^2 over the outputs, column j's weight step e_j = max|w_j| / qmax adds
    e_j^2/12 * sum_k E[x_k^2]. Comparing it before and after smoothing (same outputs in
    float) tells whether smoothing pays.
    """
    d = x_range / 255.0
    act = d * d / 12.0 * float(np.sum(w * w))
    e = np.abs(w).max(axis=0) / qmax
    return act + float(np.sum(e * e)) / 12.0 * float(np.sum(x_mean_sq))


@dataclasses.dataclass
class Smoothing:
    """The inputs worth smoothing, and what the pass records about the choice."""

    #: MatMul input name -> (scale per channel, exact range of x / scale)
    scales: dict[str, tuple[np.ndarray, tuple[float, float]]]
    #: details keys: smoothed_inputs, smoothing_not_worth_it, smoothing_error_gain
    record: dict[str, Any]


def smoothing_scales(
    run: QdqRun, model: ir.Model, samples: Any, alpha: float, min_gain: float
) -> Smoothing:
    """Per MatMul input x: s_k = max|x_k|^a / max|W_k|^(1-a) over the MatMuls reading x.

    x / s has flatter channels (easier per-tensor activation quantization), W * s takes
    the outliers into rows that per-channel weight quantization absorbs (SmoothQuant).
    Also returns the exact range of x / s, derived from per-channel min and max.

    An input is smoothed only where that cuts the estimated int8 output error (see
    :func:`int8_matmul_error`) by more than ``min_gain``: each Mul it costs is ~1% of a
    transformer's int8 latency, and channels without outliers gain little.
    """
    from graphopt.calib.collect import augmented_session

    every = plan(run, model.graph, set(run.exclude), prune=False)
    groups: dict[str, list[np.ndarray]] = {}
    for n in every.weighted:
        x = n.inputs[0]
        w = _const(n.inputs[1])
        if n.op_type == "MatMul" and x is not None and x.name and w is not None and w.ndim == 2:
            groups.setdefault(x.name, []).append(w)
    if not groups:
        return Smoothing({}, {})
    names = sorted(groups)
    lo: dict[str, Any] = {k: None for k in names}
    hi: dict[str, Any] = {k: None for k in names}
    sq: dict[str, Any] = {k: 0.0 for k in names}
    rows = dict.fromkeys(names, 0)
    with augmented_session(model, names) as sess:
        for i, feed in enumerate(samples.feeds):
            outs = runtime.run_checked(sess, names, feed, f"calibration feed {i}")
            for name, arr in zip(names, outs, strict=True):
                flat = np.asarray(arr, np.float64).reshape(-1, arr.shape[-1])
                mn, mx = flat.min(axis=0), flat.max(axis=0)
                lo[name] = mn if lo[name] is None else np.minimum(lo[name], mn)
                hi[name] = mx if hi[name] is None else np.maximum(hi[name], mx)
                sq[name] = sq[name] + np.einsum("ij,ij->j", flat, flat)
                rows[name] += flat.shape[0]
    out = {}
    gains: dict[str, float] = {}
    for name in names:
        ws = [w.astype(np.float64) for w in groups[name]]
        w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in ws]), axis=0)
        x_max = np.maximum(np.abs(lo[name]), np.abs(hi[name]))
        if w_max.shape != x_max.shape:
            continue
        scale = np.where(
            (x_max > 0) & (w_max > 0),
            x_max**alpha / np.maximum(w_max, 1e-12) ** (1 - alpha),
            1.0,
        )
        scale = np.clip(scale, 1e-4, 1e4)
        rng = (float(np.min(lo[name] / scale)), float(np.max(hi[name] / scale)))
        mean_sq = sq[name] / max(rows[name], 1)
        before = sum(
            int8_matmul_error(float(hi[name].max() - lo[name].min()), mean_sq, w, run.qmax)
            for w in ws
        )
        after = sum(
            int8_matmul_error(rng[1] - rng[0], mean_sq / scale**2, w * scale[:, None], run.qmax)
            for w in ws
        )
        gains[name] = before / after if after > 0 else 1.0
        if gains[name] > min_gain:
            out[name] = (scale.astype(np.float32), rng)
    record: dict[str, Any] = {
        "smoothed_inputs": len(out),
        "smoothing_not_worth_it": len(gains) - len(out),
    }
    if gains:
        record["smoothing_error_gain"] = {
            "min": round(min(gains.values()), 3),
            "median": round(float(np.median(list(gains.values()))), 3),
            "max": round(max(gains.values()), 3),
        }
    return Smoothing(out, record)
