"""Numerical verification: reference outputs from ONNX Runtime and comparison with tolerances.

References come from the CPU EP with every graph optimization off, so what is compared is the
model as written, not what ONNX Runtime's own fusions made of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphopt import runtime
from graphopt.core.pass_base import Tolerance, compare_arrays
from graphopt.data import Feed


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


def compare(got: Outputs, want: Outputs, tolerance: Tolerance | None = None) -> dict[str, Any]:
    """Per-output metrics, and with a tolerance whether each output (and all) passed."""
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
                ok, metrics = tolerance.check(g_all, w_all)
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
