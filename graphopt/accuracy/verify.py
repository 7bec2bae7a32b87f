"""Numerical verification: reference outputs from ONNX Runtime and comparison with tolerances.

References come from the CPU EP with every graph optimization off, so what is compared is the
model as written, not what ONNX Runtime's own fusions made of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphopt import runtime
from graphopt.accuracy.tolerance import Tolerance, compare_arrays
from graphopt.errors import RuntimeFailure
from graphopt.inputs.data import Feed


class Outputs:
    """Outputs of one model over a list of feeds, by output name."""

    def __init__(self, names: list[str], per_feed: list[list[np.ndarray]]) -> None:
        self.names = names
        self.per_feed = per_feed

    def joined(self, index: int) -> np.ndarray:
        """One output over all feeds, flattened and concatenated."""
        arrays = [feed[index] for feed in self.per_feed]
        if len(arrays) == 1:
            return arrays[0]
        if any(a.dtype == object for a in arrays):
            return np.concatenate([a.ravel() for a in arrays]).astype(object)
        return np.concatenate([a.ravel() for a in arrays])


def run_reference(model: Any, feeds: Sequence[Feed]) -> Outputs:
    """Run ``model`` (ir.Model, Snapshot or path) on the CPU EP without optimizations."""
    sess = runtime.make_session(model, ep="cpu", optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return Outputs(names, runtime.run_feeds(sess, feeds))


#: how many times the model's own rounding noise a reassociating rewrite may move an output
NOISE_FACTOR = 4.0


def noise_floor(model: Any, feeds: Sequence[Feed], reference: Outputs) -> dict[str, float]:
    """Per output, how far ONNX Runtime's own graph optimizations (BatchNorm folding, fused
    kernels: rounding-level rewrites) move it from the unoptimized reference.

    An ill-conditioned model amplifies rounding: on PP-OCRv4's recognizer one feed's softmax
    moves by 1.6e-4 between ORT's optimization levels, so BatchNorm folding, which does the
    same arithmetic reordering, cannot be held to 1e-5 there.
    """
    try:
        sess = runtime.make_session(model, ep="cpu", optimize=True)
        optimized = Outputs(reference.names, runtime.run_feeds(sess, feeds))
    except RuntimeFailure:  # ORT's optimizer fails on this model: no widening
        return {}
    floor = {}
    for i, name in enumerate(reference.names):
        g, w = optimized.joined(i), reference.joined(i)
        ok = g.shape == w.shape and g.dtype == w.dtype and g.dtype != object
        if ok and w.dtype.kind in "fcV":
            with np.errstate(invalid="ignore", over="ignore"):
                d = np.abs(g.astype(np.float64) - w.astype(np.float64))
            d = d[np.isfinite(d)]
            floor[name] = float(d.max()) if d.size else 0.0
    return floor


def compare(
    got: Outputs,
    want: Outputs,
    tolerance: Tolerance | None = None,
    noise: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-output metrics, and with a tolerance whether each output (and all) passed.

    ``noise`` (:func:`noise_floor`) widens a reassociation tolerance (finite, non-zero
    ``max_abs``) to :data:`NOISE_FACTOR` times the output's own noise; exact and lossy
    tolerances are used as declared."""
    result: dict[str, Any] = {"outputs": {}}
    passed = True
    if got.names != want.names:
        missing = [n for n in want.names if n not in got.names]
        result["passed"] = False
        result["error"] = f"outputs changed: missing {missing}, now {got.names}"
        return result
    for i, name in enumerate(want.names):
        ok = True
        metrics: dict[str, Any] = {}
        for g_feed, w_feed in zip(got.per_feed, want.per_feed, strict=True):
            g, w = g_feed[i], w_feed[i]
            if g.shape != w.shape or g.dtype != w.dtype:
                metrics = {
                    "max_abs": math.inf,
                    "max_rel": math.inf,
                    "cosine": math.nan,
                    "error": f"shape/dtype {g.dtype}{list(g.shape)} != {w.dtype}{list(w.shape)}",
                }
                ok = False
                break
        if ok:
            g_all, w_all = got.joined(i), want.joined(i)
            if tolerance is None:
                metrics = compare_arrays(g_all, w_all)
            else:
                tol = tolerance
                floor = NOISE_FACTOR * (noise or {}).get(name, 0.0)
                if 0 < tolerance.max_abs < floor and not tolerance.lossy:
                    tol = dataclasses.replace(tolerance, max_abs=floor)
                ok, metrics = tol.check(g_all, w_all)
                if tol is not tolerance:
                    metrics["noise_floor"] = floor / NOISE_FACTOR
        if tolerance is not None:
            metrics["passed"] = ok
            passed = passed and ok
        result["outputs"][name] = _clean(metrics)
    if tolerance is not None:
        result["passed"] = passed
        result["tolerance"] = tolerance.to_dict()
    return result


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe floats (inf/nan become strings)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = str(v)
        else:
            out[k] = v
    return out


def worst(result: dict[str, Any]) -> dict[str, float]:
    """The worst max_abs / max_rel / cosine over all outputs of a comparison."""
    max_abs = max_rel = 0.0
    cosine = 1.0
    for m in result.get("outputs", {}).values():
        max_abs = max(max_abs, _f(m.get("max_abs", 0.0)))
        max_rel = max(max_rel, _f(m.get("max_rel", 0.0)))
        c = _f(m.get("cosine", 1.0))
        if not math.isnan(c):
            cosine = min(cosine, c)
    return {"max_abs": max_abs, "max_rel": max_rel, "cosine": cosine}


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
