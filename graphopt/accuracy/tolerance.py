"""Tolerances: how far a rewrite may move a model's outputs, and how two outputs compare.

Every pass declares one (exact for cleanups, reassociation for float refolding, cosine-only
for lossy passes); verify-each checks it, and the pass base re-exports it for the passes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_dtypes
import numpy as np

from graphopt.accuracy.metrics import cosine_flat


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a pass may move the model's outputs, checked by verify-each.

    An output passes when every element satisfies |got - want| <= max_abs + max_rel * |want|
    (numpy's allclose) and the cosine similarity of the flattened outputs is at least
    ``min_cosine``. Integer and boolean outputs must match exactly unless ``exact_ints`` is off.
    """

    max_abs: float = 0.0
    max_rel: float = 0.0
    min_cosine: float = 1.0
    exact_ints: bool = True

    @classmethod
    def exact(cls) -> Tolerance:
        """For rewrites that keep every arithmetic operation (dead code, identities, sort)."""
        return cls(max_abs=0.0, max_rel=0.0, min_cosine=1.0 - 1e-12)

    @classmethod
    def reassociation(cls) -> Tolerance:
        """For rewrites that reorder float arithmetic (constant folding, BatchNorm folding)."""
        return cls(max_abs=1e-5, max_rel=1e-4, min_cosine=0.99999)

    @property
    def lossy(self) -> bool:
        """A pass that may change outputs by design (checked by cosine only)."""
        return math.isinf(self.max_abs) or math.isinf(self.max_rel)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, got: np.ndarray, want: np.ndarray) -> tuple[bool, dict[str, float]]:
        """Compare one output; returns (passed, metrics)."""
        m = compare_arrays(got, want)
        if got.shape != want.shape or got.dtype != want.dtype:
            return False, m
        floating = is_float(want.dtype)
        if not floating and want.dtype != object and self.exact_ints:
            return bool(np.array_equal(got, want)), m
        if want.dtype == object:
            return bool(np.array_equal(got, want)), m
        g = got.astype(np.float64)
        w = want.astype(np.float64)
        max_abs, max_rel = self.max_abs, self.max_rel
        eps = float(ml_dtypes.finfo(want.dtype).eps) if floating else 0.0
        if (max_abs or max_rel) and eps > np.finfo(np.float32).eps:
            # A non-exact tolerance is stated for float32 arithmetic; in float16/bfloat16 a
            # reordered sum is off by a few ulps of the values involved, so floor it there.
            scale = float(np.nanmax(np.abs(w[np.isfinite(w)]))) if np.isfinite(w).any() else 0.0
            max_rel = max(max_rel, 8 * eps)
            max_abs = max(max_abs, 8 * eps * scale)
        if math.isinf(max_abs) or math.isinf(max_rel):  # lossy passes: cosine only,
            close = np.isfinite(g) | ~np.isfinite(w)  # but no new NaN or infinity
        else:
            close = np.isclose(g, w, atol=max_abs, rtol=max_rel, equal_nan=True)
        cosine_ok = math.isnan(m["cosine"]) or m["cosine"] >= self.min_cosine
        if not cosine_ok and not math.isinf(max_abs):
            # An output whose every value lies within max_abs of zero (a sigmoid map on a
            # blank input) has no direction to keep: its cosine is rounding noise.
            finite = w[np.isfinite(w)]
            cosine_ok = not finite.size or float(np.max(np.abs(finite))) <= max_abs
        return bool(close.all()) and cosine_ok, m


def is_float(dtype: np.dtype) -> bool:
    """numpy's floats and ml_dtypes' (bfloat16, float8, float4), which numpy files as 'V'."""
    return np.issubdtype(dtype, np.floating) or dtype.name.startswith(("bfloat", "float"))


def compare_arrays(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """max_abs, max_rel (to the largest reference magnitude) and cosine of two outputs."""
    if got.shape != want.shape:
        return {"max_abs": math.inf, "max_rel": math.inf, "cosine": math.nan, "shape_ok": False}
    if want.dtype == object or got.dtype == object:
        same = bool(np.array_equal(got, want))
        return {
            "max_abs": 0.0 if same else math.inf,
            "max_rel": 0.0 if same else math.inf,
            "cosine": 1.0 if same else 0.0,
        }
    g = got.astype(np.float64).ravel()
    w = want.astype(np.float64).ravel()
    both_nan = np.isnan(g) & np.isnan(w)
    g = np.where(both_nan, 0.0, g)
    w = np.where(both_nan, 0.0, w)
    if g.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0}
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - w)
        both_inf = np.isinf(g) & np.isinf(w) & (np.sign(g) == np.sign(w))
        diff = np.where(both_inf, 0.0, diff)
        max_abs = float(np.nanmax(diff)) if diff.size else 0.0
        if np.isnan(diff).any():
            max_abs = math.inf
        finite = np.isfinite(w)
        scale = float(np.max(np.abs(w[finite]))) if finite.any() else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        both_finite = finite & np.isfinite(g)
        cosine = cosine_flat(g[both_finite], w[both_finite])
    return {"max_abs": max_abs, "max_rel": max_rel, "cosine": cosine}
