"""Streaming per-tensor statistics and the clipping ranges int8 calibration derives from them.

A :class:`TensorStats` holds a count, the running min and max, the count of exact zeros and a
fixed-size histogram over a symmetric range ``[-R, R]``. Its memory does not depend on how many
samples were seen, so calibration can stream hundreds of feeds through a large model.

The histogram is exact under streaming: ``R`` is always the smallest power of two strictly
above the largest ``|x|`` seen, the bin count is a power of two (so bin width and value-to-bin
scale are powers of two and every bin index is computed without rounding), 0 is the central bin
edge, and growing ``R`` doubles it and sums adjacent bin pairs. Every edge of a coarser
histogram is an edge of the finer one, so the histogram of data fed in chunks, or merged from
several workers, equals the histogram of the same data fed at once, bit for bit.

Per row of the last axis it also keeps the smallest row maximum and the row length: a Softmax
over that axis is shift-invariant per row, so its input's useful range is set by its rows'
maxima, not by the global minimum (which attention masks push to -3.4e38).

Clipping ranges (``minmax``, ``percentile``, ``entropy``, ``mse``) are computed from the
histogram alone; each threshold search is vectorized over all candidates because a model has
hundreds of tensors to calibrate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphopt.calib.search import expected_mse, kl_divergences, last_argmin
from graphopt.errors import DataError, UsageError

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.99
# Elements per slice in update(): bounds the temporaries for very large tensors.
_CHUNK = 1 << 22
_FORMAT = 2


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _pow2_above(x: float) -> float:
    """The smallest power of two strictly greater than ``x`` (``x`` > 0)."""
    mantissa, exponent = math.frexp(x)  # x = m * 2**e with 0.5 <= m < 1, so 2**e > x
    del mantissa
    return math.ldexp(1.0, exponent)


def _grow(hist: np.ndarray, factor_log2: int) -> np.ndarray:
    """Re-bin ``hist`` for a range ``2**factor_log2`` times wider (exact: sums bin groups)."""
    if factor_log2 <= 0:
        return hist
    n = hist.size
    half = n // 2
    shift = min(factor_log2, 62)
    offsets = np.arange(n, dtype=np.int64) - half
    new_index = (offsets >> shift) + half  # arithmetic shift: floor division by 2**shift
    return np.bincount(new_index, weights=hist, minlength=n).astype(np.int64)


class TensorStats:
    """Count, min, max, exact zeros and a growing symmetric histogram of one tensor's values.

    ``update`` streams arrays in; NaN and infinities are counted (``nan_count``,
    ``inf_count``) and otherwise ignored. Memory is ``bins`` int64 counters whatever the number
    of samples.
    """

    def __init__(
        self, bins: int = DEFAULT_BINS, *, histogram: bool = True, rows: bool = True
    ) -> None:
        if not _is_pow2(bins) or bins < 16:
            raise UsageError(f"histogram bins must be a power of two >= 16, got {bins}")
        self.bins = bins
        # Without a histogram only count, NaN/inf counts, min and max are kept (``minmax``
        # needs nothing more): four passes over each activation fewer, half of YOLOv8's
        # calibration at 1024x1024. Without rows, no per-row maxima (only Softmax inputs
        # need them).
        self.histogram = histogram
        self.rows = rows
        self.count = 0
        self.nan_count = 0
        self.inf_count = 0
        self.zero_count = 0
        self.min = math.inf
        self.max = -math.inf
        # Half-range R of the histogram; 0 until a non-zero finite value was seen (exact
        # zeros are already in their bin, bins // 2, whatever R becomes).
        self.half_range = 0.0
        self.hist = np.zeros(bins, dtype=np.int64)
        # Rows along the last axis: the smallest maximum of a row that is not constant (a
        # constant row, e.g. fully masked, has a uniform softmax whatever its value), and
        # the longest row seen.
        self.row_max_min = math.inf
        self.row_len = 0

    # ----------------------------------------------------------------------------- streaming

    @property
    def bin_width(self) -> float:
        return 2.0 * self.half_range / self.bins

    @property
    def amax(self) -> float:
        """Largest finite ``|x|`` seen (0 when none)."""
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    def _ensure_range(self, amax: float) -> None:
        """Grow R (by doubling, exactly) until it is strictly above ``amax``."""
        if amax < self.half_range or amax == 0.0:
            return
        target = _pow2_above(amax)
        if self.half_range > 0.0:
            steps = round(math.log2(target / self.half_range))
            self.hist = _grow(self.hist, steps)
        self.half_range = target

    def update(self, array: Any) -> TensorStats:
        """Add every value of ``array`` (any shape, float or integer dtype); returns self."""
        x = np.asarray(array)
        if x.dtype.kind not in "fiub":
            if x.dtype.kind == "V" or x.dtype.name == "bfloat16":  # ml_dtypes float types
                x = x.astype(np.float32)
            else:
                raise TypeError(f"cannot collect statistics of dtype {x.dtype}")
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)
        elif x.dtype.itemsize < 4 or x.dtype == np.float16:
            x = x.astype(np.float32)
        flat = x.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            self._update_flat(flat[start : start + _CHUNK])
        if self.rows and x.ndim >= 1 and x.shape[-1] > 1:
            self._update_rows(x.reshape(-1, x.shape[-1]))
        return self

    def _update_rows(self, rows: np.ndarray) -> None:
        self.row_len = max(self.row_len, rows.shape[1])
        step = max(1, _CHUNK // rows.shape[1])
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]
            with np.errstate(invalid="ignore"):
                hi, lo = part.max(axis=1), part.min(axis=1)
            live = np.isfinite(hi) & (hi > lo)  # NaN rows and constant rows say nothing
            if live.any():
                self.row_max_min = min(self.row_max_min, float(hi[live].min()))

    def _update_flat(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        lo, hi = x.min(), x.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            nan = int(np.count_nonzero(np.isnan(x)))
            finite = np.isfinite(x)
            kept = int(np.count_nonzero(finite))
            self.nan_count += nan
            self.inf_count += x.size - kept - nan
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = x.min(), x.max()
        lo, hi = float(lo), float(hi)
        self.count += x.size
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        if not self.histogram:
            return
        self.zero_count += int(x.size - np.count_nonzero(x))
        self._ensure_range(max(-lo, hi))
        if self.half_range == 0.0:  # all zeros so far
            self.hist[self.bins // 2] += x.size
            return
        scale = self.bins / (2.0 * self.half_range)  # a power of two: x * scale is exact
        # float32 products are exact when 1 <= scale (no underflow) and scale fits float32.
        fits32 = x.dtype == np.float32 and 1.0 <= scale <= 2.0**100
        work = np.float32 if fits32 else np.float64
        y = np.multiply(x, work(scale), dtype=work)
        np.floor(y, out=y)
        idx = y.astype(np.intp)
        idx += self.bins // 2
        self.hist += np.bincount(idx, minlength=self.bins)

    def merge(self, other: TensorStats) -> TensorStats:
        """Add ``other``'s statistics into this one (exact); returns self."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge statistics with {other.bins} and {self.bins} bins")
        if other.histogram != self.histogram:
            raise ValueError("cannot merge statistics with and without a histogram")
        if other.half_range > self.half_range:
            self._ensure_range(other.half_range / 2.0)  # == other.half_range afterwards
        hist = other.hist
        if 0.0 < other.half_range < self.half_range:
            hist = _grow(hist, round(math.log2(self.half_range / other.half_range)))
        self.hist = self.hist + hist
        self.count += other.count
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count
        self.zero_count += other.zero_count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.row_max_min = min(self.row_max_min, other.row_max_min)
        self.row_len = max(self.row_len, other.row_len)
        return self

    def copy(self) -> TensorStats:
        if not self.histogram:
            out = TensorStats(self.bins, histogram=False, rows=self.rows)
            out.__dict__.update({k: v for k, v in self.__dict__.items() if k != "hist"})
            return out
        return TensorStats.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        return all(np.array_equal(a[k], b[k]) if k == "hist" else a[k] == b[k] for k in a)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"TensorStats(count={self.count}, min={self.min:.6g}, max={self.max:.6g}, "
            f"R={self.half_range:g}, bins={self.bins}, nan={self.nan_count}, "
            f"inf={self.inf_count})"
        )

    # ----------------------------------------------------------------------------- caching

    def to_dict(self) -> dict[str, Any]:
        """Plain values plus the histogram array, for a cache file (JSON + npz)."""
        if not self.histogram:
            raise ValueError("statistics collected without a histogram are not cached")
        return {
            "format": _FORMAT,
            "bins": self.bins,
            "count": self.count,
            "nan_count": self.nan_count,
            "inf_count": self.inf_count,
            "zero_count": self.zero_count,
            "min": self.min,
            "max": self.max,
            "half_range": self.half_range,
            "row_max_min": self.row_max_min,
            "row_len": self.row_len,
            "hist": self.hist.copy(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorStats:
        """Inverse of :meth:`to_dict`; raises ValueError on inconsistent content."""
        if d.get("format") != _FORMAT:
            raise ValueError(f"unknown TensorStats format {d.get('format')!r}")
        s = cls(int(d["bins"]))
        hist = np.asarray(d["hist"])
        r = float(d["half_range"])
        if hist.shape != (s.bins,) or hist.dtype.kind not in "iu" or (hist < 0).any():
            raise ValueError("histogram does not match its bin count")
        if r != 0.0 and not (r > 0 and math.frexp(r)[0] == 0.5):
            raise ValueError(f"histogram half-range {r} is not a power of two")
        s.hist = hist.astype(np.int64)
        s.half_range = r
        s.count = int(d["count"])
        s.nan_count = int(d["nan_count"])
        s.inf_count = int(d["inf_count"])
        s.zero_count = int(d["zero_count"])
        s.min = float(d["min"])
        s.max = float(d["max"])
        s.row_max_min = float(d["row_max_min"])
        s.row_len = int(d["row_len"])
        if int(s.hist.sum()) != s.count:
            raise ValueError("histogram total does not match the count")
        return s

    # ------------------------------------------------------------------------------ ranges

    def _check_nonempty(self) -> None:
        if self.count == 0:
            raise DataError(
                "no finite values were collected for this tensor "
                f"({self.nan_count} NaN, {self.inf_count} inf)"
            )

    def _check_histogram(self) -> None:
        if not self.histogram:
            raise UsageError(
                "these statistics were collected without a histogram (minmax calibration); "
                "percentile, entropy and mse need one",
                hint="collect with histogram=True",
            )

    def _edge(self, index: int | np.ndarray) -> Any:
        """Value of histogram edge ``index`` (edge bins // 2 is 0)."""
        return (np.asarray(index) - self.bins // 2) * self.bin_width

    def _data_bins(self) -> tuple[int, int]:
        """[first, last + 1) bins holding data."""
        nz = np.flatnonzero(self.hist)
        return int(nz[0]), int(nz[-1]) + 1

    def minmax(self, *, symmetric: bool = False) -> tuple[float, float]:
        """The observed range; symmetric gives ``(-amax, amax)``."""
        self._check_nonempty()
        if symmetric:
            return -self.amax, self.amax
        return self.min, self.max

    def _folded(self, *, drop_zeros: bool = False) -> np.ndarray:
        """Histogram of ``|x|``: bins // 2 bins of the same width over [0, R)."""
        half = self.bins // 2
        h = self.hist.astype(np.float64)
        if drop_zeros:
            h[half] -= self.zero_count
        return h[half:] + h[:half][::-1]

    def _inverse_cdf(self, hist: np.ndarray, origin: float, target: float) -> float:
        """Value below which ``target`` counts lie, linear inside a bin."""
        cum = np.cumsum(hist)
        j = int(np.searchsorted(cum, target, side="left"))
        j = min(j, hist.size - 1)
        before = cum[j] - hist[j]
        frac = (target - before) / hist[j] if hist[j] > 0 else 1.0
        return origin + (j + min(max(frac, 0.0), 1.0)) * self.bin_width

    def percentile(
        self, percentile: float = DEFAULT_PERCENTILE, *, symmetric: bool = False
    ) -> tuple[float, float]:
        """Clip the ``(100 - percentile)`` % most extreme values: two-sided (half in each
        tail) or, symmetric, the largest ``|x|``. Interpolated inside a bin, clamped to data."""
        self._check_nonempty()
        self._check_histogram()
        if not 0.0 < percentile <= 100.0:
            raise UsageError(f"percentile must be in (0, 100], got {percentile}")
        if self.half_range == 0.0 or percentile == 100.0:
            return self.minmax(symmetric=symmetric)
        if symmetric:
            t = self._inverse_cdf(self._folded(), 0.0, self.count * percentile / 100.0)
            t = min(t, self.amax)
            return -t, t
        tail = self.count * (100.0 - percentile) / 200.0
        hist = self.hist.astype(np.float64)
        lo = self._inverse_cdf(hist, -self.half_range, tail)
        hi = self._inverse_cdf(hist, -self.half_range, self.count - tail)
        return max(lo, self.min), min(hi, self.max)

    def _asymmetric_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate windows [a, b) (bin indices) for asymmetric targets: the symmetric window
        ``[-t, t]`` cut to the data's range, always containing 0 (it must be representable)."""
        half = self.bins // 2
        first, end = self._data_bins()
        lo_bound, hi_bound = min(first, half), max(end, half)
        k = np.arange(1, max(half - lo_bound, hi_bound - half) + 1)
        a = np.maximum(half - k, lo_bound)
        b = np.minimum(half + k, hi_bound)
        return a, b

    def _window_range(self, a: int, b: int) -> tuple[float, float]:
        first, end = self._data_bins()
        lo = self.min if a <= first else float(self._edge(a))
        hi = self.max if b >= end else float(self._edge(b))
        return min(lo, 0.0), max(hi, 0.0)

    def entropy(
        self, num_levels: int | None = None, *, symmetric: bool = True
    ) -> tuple[float, float]:
        """The threshold minimizing KL(P || Q) between the clipped distribution and its
        ``num_levels``-level quantization (TensorRT's entropy calibration).

        Symmetric: over ``|x|`` with 128 levels by default, returns ``(-t, t)``. Asymmetric:
        over windows ``[max(min, -t), min(max, t)]`` (always holding 0) with 255 levels.
        Exact zeros are left out: int8 represents 0 exactly, and a ReLU's spike of zeros would
        otherwise pull the threshold down.
        """
        self._check_nonempty()
        self._check_histogram()
        levels = num_levels or (128 if symmetric else 255)
        if levels < 2:
            raise UsageError(f"num_levels must be at least 2, got {levels}")
        if self.half_range == 0.0:
            return 0.0, 0.0
        if symmetric:
            h = self._folded(drop_zeros=True)
            end = int(np.flatnonzero(self._folded())[-1]) + 1
            ends = np.arange(levels, end + 1)
            if ends.size == 0 or h.sum() <= 0:
                return self.minmax(symmetric=True)
            kl = kl_divergences(h, np.zeros_like(ends), ends, levels)
            best = last_argmin(kl)
            t = min(float(ends[best]) * self.bin_width, self.amax)
            return -t, t
        h = self.hist.astype(np.float64)
        h[self.bins // 2] -= self.zero_count
        a, b = self._asymmetric_windows()
        keep = (b - a) >= levels
        if not keep.any() or h.sum() <= 0:
            return self.minmax()
        a, b = a[keep], b[keep]
        best = last_argmin(kl_divergences(h, a, b, levels))
        return self._window_range(int(a[best]), int(b[best]))

    def mse(self, num_levels: int | None = None, *, symmetric: bool = True) -> tuple[float, float]:
        """The range minimizing the expected squared int8 quantization error, estimated from
        the histogram: rounding noise ``step²/12`` for values inside the range (exact zeros
        cost nothing), and the squared clipping distance for values outside (uniform inside
        their bin). Symmetric: ``[-t, t]`` on 255 levels (-127..127). Asymmetric: windows
        ``[max(min, -t), min(max, t)]`` on 256 levels."""
        self._check_nonempty()
        self._check_histogram()
        levels = num_levels or (255 if symmetric else 256)
        if levels < 2:
            raise UsageError(f"num_levels must be at least 2, got {levels}")
        if self.half_range == 0.0:
            return 0.0, 0.0
        half = self.bins // 2
        if symmetric:
            first, end = self._data_bins()
            k = np.arange(1, max(half - first, end - half) + 1)
            a, b = half - k, half + k
        else:
            a, b = self._asymmetric_windows()
        err = expected_mse(self.hist.astype(np.float64), a, b, levels, self.zero_count)
        best = int(np.argmin(err))
        if symmetric:
            t = min(float(b[best] - half) * self.bin_width, self.amax)
            return -t, t
        return self._window_range(int(a[best]), int(b[best]))


def compute_range(
    stats: TensorStats,
    method: str,
    *,
    symmetric: bool,
    num_levels: int | None = None,
    percentile: float = DEFAULT_PERCENTILE,
) -> tuple[float, float]:
    """The (lo, hi) range to quantize a tensor to, by ``method`` (one of :data:`METHODS`).

    The result always contains 0 (int8 must represent it exactly) and is ``(-t, t)`` when
    ``symmetric``. ``num_levels`` defaults per method: entropy 128 (symmetric, over |x|) or 255;
    mse 255 (symmetric, -127..127) or 256. ``percentile`` is used by the percentile method.
    """
    if method == "minmax":
        lo, hi = stats.minmax(symmetric=symmetric)
    elif method == "percentile":
        lo, hi = stats.percentile(percentile, symmetric=symmetric)
    elif method == "entropy":
        lo, hi = stats.entropy(num_levels, symmetric=symmetric)
    elif method == "mse":
        lo, hi = stats.mse(num_levels, symmetric=symmetric)
    else:
        raise UsageError(
            f"unknown calibration method '{method}' (choose from {', '.join(METHODS)})"
        )
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        t = max(-lo, hi)
        return -t, t
    return lo, hi


def compute_ranges(
    stats: dict[str, TensorStats], method: str, **options: Any
) -> dict[str, tuple[float, float]]:
    """:func:`compute_range` for every tensor; errors name the tensor."""
    out = {}
    for name, s in stats.items():
        try:
            out[name] = compute_range(s, method, **options)
        except DataError as exc:
            raise DataError(f"tensor '{name}': {exc.message}", hint=exc.hint) from exc
    return out
