"""Similarity measures between a model's outputs, each under its own name.

"cosine" means three different things in graphopt, each right for its use; they live here so
verification, budgets and benchmarks say which one they mean:

* :func:`cosine_flat`: one number for two whole arrays (verify-each's check per output);
* :func:`cosine_sample_mean`: the mean over samples of each sample's flat cosine (budgets:
  one bad sample counts as much as it weighs among the samples);
* :func:`cosine_rows`: one cosine per row (axis 0) of a batched output, of which benchmarks
  report the mean and the minimum.

All treat two all-zero vectors as identical (1.0) and one all-zero vector as unrelated (0.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cosine_flat(got: np.ndarray, want: np.ndarray) -> float:
    """Cosine similarity of the two arrays flattened (NaN where a value is NaN)."""
    x = np.asarray(got, np.float64).ravel()
    y = np.asarray(want, np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0 and ny == 0:
        return 1.0
    if nx == 0 or ny == 0:
        return 0.0
    return float(x @ y / (nx * ny))


def cosine_sample_mean(
    reference: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]], output: int
) -> float:
    """Mean over samples of :func:`cosine_flat` of output ``output`` (lists per sample)."""
    return float(
        np.mean([cosine_flat(g[output], r[output]) for r, g in zip(reference, got, strict=True)])
    )


def cosine_rows(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """One cosine per row (axis 0) of two same-shaped arrays; a 0-d array is one row."""
    a = np.asarray(want, np.float64)
    b = np.asarray(got, np.float64)
    rows_a = a.reshape(a.shape[0], -1) if a.ndim >= 1 and a.shape[0] else a.reshape(1, -1)
    rows_b = b.reshape(rows_a.shape)
    na, nb = np.linalg.norm(rows_a, axis=1), np.linalg.norm(rows_b, axis=1)
    dot = np.einsum("ij,ij->i", rows_a, rows_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            (na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, dot / (na * nb))
        )
