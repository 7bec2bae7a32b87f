"""Calibration statistics for post-training int8 quantization (the ``qdq-insert`` pass).

Why it is built this way:

* **One augmented run.** The tensors to calibrate are added as extra outputs of a copy of the
  model and every feed goes through a single ONNX Runtime CPU session (graph optimizations off,
  so the named tensors exist), instead of one session or one run per tensor.
* **Streamed, memory flat in the number of samples.** Each feed's activations update a
  :class:`TensorStats` (count, min, max, exact zeros, a fixed-size histogram that grows its
  range exactly) and are dropped at once; ONNX Runtime's own calibrators keep every output of
  every sample until the end. Memory is one feed's activations plus ``bins`` counters per
  tensor, whether there are 32 samples or 10,000.
* **Shared through a cache.** Statistics, not ranges, are stored: minmax, percentile, entropy
  (KL, as TensorRT) and MSE ranges, symmetric or not, are all computed from the same
  histogram, so several passes, or reruns with other methods, reuse one collection via
  :func:`load_or_collect` (keyed by content hashes of model and data, and the bin count).

Typical use::

    stats = load_or_collect(model, samples, cache_dir)
    ranges = compute_ranges(stats, "entropy", symmetric=True)
"""

from __future__ import annotations

from graphopt.calib.cache import (
    cache_key,
    data_hash,
    load_or_collect,
    load_stats,
    model_hash,
    save_stats,
)
from graphopt.calib.collect import collect_stats, default_tensors
from graphopt.calib.stats import METHODS, TensorStats, compute_range, compute_ranges

__all__ = [
    "METHODS",
    "TensorStats",
    "cache_key",
    "collect_stats",
    "compute_range",
    "compute_ranges",
    "data_hash",
    "default_tensors",
    "load_or_collect",
    "load_stats",
    "model_hash",
    "save_stats",
]
