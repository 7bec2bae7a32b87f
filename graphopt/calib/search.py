"""The threshold searches behind the entropy and MSE calibration ranges, vectorized over every
candidate window of a histogram (a model has hundreds of tensors to calibrate)."""

from __future__ import annotations

import math

import numpy as np

# ONNX Runtime's smoothing floor (in counts) for a quantized bin that lost all its mass.
KL_EPS = 1e-4


def last_argmin(values: np.ndarray) -> int:
    """Index of the minimum, the last one on ties (the larger threshold clips less)."""
    return int(values.size - 1 - np.argmin(values[::-1]))


def _xlogx(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def kl_divergences(
    hist: np.ndarray, starts: np.ndarray, ends: np.ndarray, levels: int, eps: float = KL_EPS
) -> np.ndarray:
    """KL(P || Q) for every candidate window ``[starts[k], ends[k])`` of ``hist`` at once.

    P is the window with the mass outside it added to its first and last bin (what clipping
    does). Q quantizes the window's own counts into ``levels`` equal groups of bins (bin ``j``
    of a window of ``m`` bins goes to group ``j * levels // m``, as TensorRT's linspace does)
    and spreads each group's mass evenly over the bins where P is non-zero. A bin where P has
    mass and Q none (a clipped tail landing in an empty group) gets ``eps`` counts, like ONNX
    Runtime's smoothing, instead of an infinite divergence.

    Vectorized with prefix sums: O(len(hist) + candidates * levels), no Python loop.
    """
    h = np.asarray(hist, dtype=np.float64)
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    m = e - s
    total = h.sum()
    cum = np.concatenate(([0.0], np.cumsum(h)))
    cum_nz = np.concatenate(([0], np.cumsum(h > 0)))
    cum_xlogx = np.concatenate(([0.0], np.cumsum(_xlogx(h))))
    left = cum[s]  # mass below the window
    right = total - cum[e]  # mass above it
    inside = total - left - right

    # Group boundaries: group c covers window offsets [ceil(c*m/L), ceil((c+1)*m/L)).
    c = np.arange(levels + 1, dtype=np.int64)
    bounds = s[:, None] + (c[None, :] * m[:, None] + levels - 1) // levels
    group_sum = np.diff(cum[bounds], axis=1)
    group_nz = np.diff(cum_nz[bounds], axis=1).astype(np.float64)
    # P's first and last bin also hold the clipped tails; a zero bin that received a tail
    # becomes non-zero in P and so takes a share of its group in Q.
    h_first, h_last = h[s], h[e - 1]
    tail_first = np.where(m > 1, left, left + right)
    tail_last = np.where(m > 1, right, 0.0)
    group_nz[:, 0] += (h_first == 0) & (tail_first > 0)
    group_nz[:, -1] += (h_last == 0) & (tail_last > 0)
    group_tail = np.zeros_like(group_sum)
    group_tail[:, 0] += tail_first
    group_tail[:, -1] += tail_last

    # sum_j p_j log p_j: interior bins from the prefix sums, end bins with their tails.
    p_first = h_first + tail_first
    p_last = np.where(m > 1, h_last + tail_last, 0.0)
    interior = cum_xlogx[np.maximum(e - 1, s)] - cum_xlogx[np.minimum(s + 1, e)]
    interior = np.where(m > 2, interior, 0.0)
    sum_plogp = interior + _xlogx(p_first) + _xlogx(p_last)

    # sum_j p_j log q_j: a group's q is group_sum / group_nz on each of its non-zero P bins,
    # and the P mass on those bins is the group's counts plus any tail it holds.
    mass = group_sum + group_tail
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.where(
            group_sum > 0, np.log(group_sum / np.maximum(group_nz, 1.0)), math.log(eps)
        )
    sum_plogq = np.where(mass > 0, mass * log_q, 0.0).sum(axis=1)
    floored = ((group_sum == 0) & (group_tail > 0)).sum(axis=1)
    q_total = inside + eps * floored
    with np.errstate(divide="ignore"):
        kl = (sum_plogp - sum_plogq) / total - math.log(total) + np.log(q_total)
    return np.where(q_total > 0, kl, np.inf)


def expected_mse(
    hist: np.ndarray, starts: np.ndarray, ends: np.ndarray, levels: int, zeros: int
) -> np.ndarray:
    """Expected squared error (in bin-width² units, times the count) for each window."""
    n = hist.size
    j = np.arange(n, dtype=np.float64)
    cum0 = np.concatenate(([0.0], np.cumsum(hist)))
    cum1 = np.concatenate(([0.0], np.cumsum(hist * j)))
    cum2 = np.concatenate(([0.0], np.cumsum(hist * j * j)))
    a = np.asarray(starts, dtype=np.int64)
    b = np.asarray(ends, dtype=np.int64)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    # Right tail, bins j >= b: distance from the edge b is (j - b + u) bins, u ~ U[0, 1):
    # E[(d + u)^2] = d^2 + d + 1/3 with d = j - b.
    m0, m1, m2 = cum0[n] - cum0[b], cum1[n] - cum1[b], cum2[n] - cum2[b]
    right = (m2 - 2 * bf * m1 + bf * bf * m0) + (m1 - bf * m0) + m0 / 3.0
    # Left tail, bins j < a: distance (a - j - u) bins: E = d^2 - d + 1/3 with d = a - j.
    l0, l1, l2 = cum0[a], cum1[a], cum2[a]
    d2 = af * af * l0 - 2 * af * l1 + l2
    d1 = af * l0 - l1
    left = d2 - d1 + l0 / 3.0
    inside = cum0[b] - cum0[a] - zeros
    step = (bf - af) / (levels - 1)
    return left + right + np.maximum(inside, 0.0) * step * step / 12.0
