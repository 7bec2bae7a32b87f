"""Accuracy in benchmarks: every model's outputs against the reference's on the same inputs,
and task metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphopt.accuracy.metrics import cosine_rows
from graphopt.errors import UsageError

TOPK = (1, 5)


def _stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One output over all feeds: joined on the first axis, else flattened and joined."""
    parts = [np.asarray(p) for p in parts]
    if all(p.ndim >= 1 for p in parts) and len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts, axis=0)
    return np.concatenate([p.reshape(-1) for p in parts])


def _topk_agreement(ref: np.ndarray, got: np.ndarray, k: int) -> float:
    """Mean over rows of |top-k(ref) ∩ top-k(got)| / k (k=1: argmax agreement)."""
    if k == 1:
        return float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    tr = np.argpartition(-ref, k - 1, axis=-1)[:, :k]
    tg = np.argpartition(-got, k - 1, axis=-1)[:, :k]
    hits = [len(set(a) & set(b)) for a, b in zip(tr.tolist(), tg.tolist(), strict=True)]
    return float(np.mean(hits)) / k


def compare_output(name: str, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "shape": list(ref.shape)}
    if ref.dtype == object or got.dtype == object:
        out["error"] = "non-numeric output, not compared"
        return out
    if ref.shape != got.shape:
        out["error"] = f"shape {list(got.shape)} differs from the reference's {list(ref.shape)}"
        return out
    a, b = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(a - b)
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(a).max(initial=0.0))
    out["max_abs"] = max_abs
    out["max_rel"] = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    cos = cosine_rows(b, a)
    out["cosine"] = float(cos.mean()) if cos.size else 1.0
    out["cosine_min"] = float(cos.min()) if cos.size else 1.0
    if ref.ndim == 2 and np.issubdtype(ref.dtype, np.floating) and ref.shape[1] >= 5:
        for k in TOPK:
            out[f"top{k}_agreement"] = _topk_agreement(a, b, k)
    return out


def compare(
    names: Sequence[str], ref: list[list[np.ndarray]], got: list[list[np.ndarray]]
) -> dict[str, Any]:
    """Per output and worst over outputs: max_abs, max_rel, cosine, top-k agreement."""
    per_output = [
        compare_output(name, _stack([f[i] for f in ref]), _stack([f[i] for f in got]))
        for i, name in enumerate(names)
    ]
    summary: dict[str, Any] = {"outputs": per_output}
    numeric = [o for o in per_output if "error" not in o]
    if numeric:
        summary["max_abs"] = max(o["max_abs"] for o in numeric)
        summary["max_rel"] = max(o["max_rel"] for o in numeric)
        summary["cosine"] = min(o["cosine"] for o in numeric)
        summary["cosine_min"] = min(o["cosine_min"] for o in numeric)
        for k in TOPK:
            vals = [o[f"top{k}_agreement"] for o in numeric if f"top{k}_agreement" in o]
            if vals:
                summary[f"top{k}_agreement"] = min(vals)
    errs = [f"{o['name']}: {o['error']}" for o in per_output if "error" in o]
    if errs:
        summary["errors"] = errs
    return summary


def task_metric(
    metric: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]], samples: Any
) -> float:
    from graphopt.accuracy.budget import _BUILTIN, Budget

    budget = Budget(metric, _BUILTIN.get(metric, ">="), 0.0)
    try:
        return budget.measure(ref, got, samples)
    except ValueError as exc:
        raise UsageError(f"--metric: {exc}") from None
