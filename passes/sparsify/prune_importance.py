"""How important each channel of a prunable group is, and how many and which channels stay.

Importance of channel ``c`` of a group, summed over the group's producers or sinks (each
normalised by its mean so that layers of different scale count alike):

* ``magnitude``: the L2 norm of each producer's output filter ``c`` (needs no DATA);
* ``activation``: for each sink, ``sqrt(sum_f E[x_f^2] * ||W[:, f]||^2)`` over the input
  features ``f`` of channel ``c``: how much the sink's output moves when the channel goes;
* ``second-order``: the Optimal Brain Surgeon cost of removing channel ``c`` from each sink
  while the remaining weights compensate: ``tr(W_F^T [H^-1]_FF^-1 W_F)`` with ``H`` the
  (damped) second moment of the sink's input features (for a Conv, of its input channels,
  with kernel taps treated as independent). It sees correlated channels: one that others can
  stand in for is cheap, which is what ``reconstruct`` then exploits;
* ``entropy``: the entropy of the channel's values over DATA (64-bin histogram); nearly
  constant channels carry no information.

Kept here apart from the pass so that the criteria, the input statistics they need and the
kept-count arithmetic read (and test) on their own.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.channel_layout import Analysis, Layout, Sink

from graphopt.calib.collect import stream_tensors
from graphopt.errors import DataError
from graphopt.inputs.data import Samples
from graphopt.ir import attr_value, const_array

#: relative damping of the input second moment (``second-order``), as in OBS/SparseGPT
DAMPING = 0.01
#: rows of one feed used for second moments (a random subset of positions)
_MAX_ROWS = 8192
#: values per channel kept for the entropy histogram
_ENTROPY_SAMPLES = 4096
#: features above which second-order falls back to its diagonal approximation
_MAX_DENSE_FEATURES = 8192


# ------------------------------------------------------------------------------ how many stay


def keep_count(original: int, ratio: float, round_to: int, min_channels: int) -> int:
    """Channels a group of ``original`` keeps at ``ratio``."""
    n = original * (1.0 - ratio)
    if round_to > 1 and original >= 2 * round_to:
        n = math.floor(n / round_to + 0.5) * round_to
    else:
        n = math.floor(n + 0.5)
    return int(min(original, max(n, min(min_channels, original), 1)))


def global_counts(
    scores: list[np.ndarray],
    originals: list[int],
    ratio: float,
    *,
    max_ratio: float,
    round_to: int,
    min_channels: int,
) -> list[int]:
    """Channels each group keeps when one threshold over all normalised scores decides.

    ``ratio`` of all original channels go, lowest scores first; no group loses more than
    ``max_ratio`` of its original channels or goes under ``min_channels``; kept counts are
    then rounded to multiples of ``round_to`` like :func:`keep_count`.
    """
    current = [len(s) for s in scores]
    need = round(ratio * sum(originals)) - sum(o - c for o, c in zip(originals, current))
    floor = [
        min(cur, max(min_channels, math.ceil(orig * (1 - max_ratio))))
        for orig, cur in zip(originals, current)
    ]
    order = sorted(((float(v), k) for k, s in enumerate(scores) for v in s), key=lambda t: t[0])
    removed = [0] * len(scores)
    for _, k in order:
        if need <= 0:
            break
        if current[k] - removed[k] > floor[k]:
            removed[k] += 1
            need -= 1
    out = []
    for k, cur in enumerate(current):
        n = cur - removed[k]
        if removed[k] and round_to > 1 and originals[k] >= 2 * round_to:
            n = max(floor[k], math.floor(n / round_to + 0.5) * round_to)
        out.append(min(cur, n))
    return out


def top(score: np.ndarray, n: int, unit: int) -> np.ndarray:
    """Sorted indices of the ``n`` best channels, taken ``unit`` at a time."""
    if unit == 1:
        return np.sort(np.argsort(-score, kind="stable")[:n])
    heads = np.sort(np.argsort(-score.reshape(-1, unit).sum(axis=1), kind="stable")[: n // unit])
    return (heads[:, None] * unit + np.arange(unit)[None, :]).ravel()


def normalised(v: np.ndarray) -> np.ndarray:
    m = float(np.mean(v))
    return v / m if m > 0 else v


# ------------------------------------------------------------------------------ importance


def score_groups(
    model: ir.Model,
    analysis: Analysis,
    groups: list[list[int]],
    criterion: str,
    samples: Samples | None,
    seed: int,
) -> list[np.ndarray]:
    """Per group, the importance of each of its channels (higher: keep)."""
    roots = [analysis.find(g[0]) for g in groups]
    if criterion == "magnitude":
        out = []
        for g in groups:
            total = np.zeros(analysis.spaces[g[0]].size)
            for s in g:
                total += normalised(space_norms(analysis, s))
            out.append(total)
        return out
    sinks = [
        s for s in analysis.sinks if any(analysis.find(sp) in roots for sp in s.layout.spaces())
    ]
    stats = _input_stats(model, sinks, criterion, samples, seed)
    out = []
    for g, root in zip(groups, roots):
        size = analysis.spaces[g[0]].size
        total = np.zeros(size)
        for sink in sinks:
            offs = _segments_of(sink.layout, root, analysis)
            if not offs:
                continue
            per_block = _sink_scores(sink, stats[sink.node.inputs[0].name], criterion)  # type: ignore[union-attr]
            for off in offs:
                total += normalised(per_block[off : off + size])
        if not total.any():  # no sink measured this group: fall back to magnitude
            for s in g:
                total += normalised(space_norms(analysis, s))
        out.append(total)
    return out


def filter_norms(node: ir.Node) -> np.ndarray:
    """L2 norm of each output filter (Conv) or neuron (Gemm/MatMul) of a producer."""
    w = const_array(node.inputs[1])
    assert w is not None
    w = w.astype(np.float64)
    if node.op_type == "Conv":
        return np.sqrt(np.square(w).reshape(w.shape[0], -1).sum(axis=1))
    if node.op_type == "Gemm" and attr_value(node, "transB", 0):
        return np.sqrt(np.square(w).sum(axis=1))
    return np.sqrt(np.square(w).sum(axis=0))


def space_norms(analysis: Analysis, s: int) -> np.ndarray:
    """Filter norms of the producer's channels that space ``s`` covers."""
    space = analysis.spaces[s]
    norms = filter_norms(space.producer)
    return norms[space.offset : space.offset + space.size]


def _features(sink: Sink, x: np.ndarray) -> np.ndarray:
    """The sink's input as [rows, features] (pixel-level channels for a Conv)."""
    op = sink.node.op_type
    if op in ("Conv", "ConvTranspose"):
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    if op == "Gemm" and attr_value(sink.node, "transA", 0):
        return x.T
    return x.reshape(-1, x.shape[-1])


def _weight_rows(sink: Sink) -> np.ndarray:
    """The sink's weight as [features, everything else] (rows match :func:`_features`)."""
    w = const_array(sink.node.inputs[1])
    assert w is not None
    w = np.moveaxis(w.astype(np.float64), sink.weight_axis, 0)
    return w.reshape(w.shape[0], -1)


def _per_block(values: np.ndarray, layout: Layout) -> np.ndarray:
    """Sum a per-feature quantity into the layout's channels ([block])."""
    return values.reshape(layout.outer, layout.block, layout.inner).sum(axis=(0, 2))


def _segments_of(layout: Layout, root: int, analysis: Analysis) -> list[int]:
    """Offsets (within the block) of the segments whose space belongs to group ``root``."""
    offs, off = [], 0
    for space, size in layout.segments:
        if analysis.find(space) == root:
            offs.append(off)
        off += size
    return offs


@dataclasses.dataclass
class _InputStats:
    rows: int = 0
    sumsq: np.ndarray | None = None  # per feature
    second: np.ndarray | None = None  # features x features
    samples: list[np.ndarray] = dataclasses.field(default_factory=list)  # entropy


def _input_stats(
    model: ir.Model, sinks: list[Sink], criterion: str, samples: Samples | None, seed: int
) -> dict[str, _InputStats]:
    """One calibration run: the statistics of each sink's input the criterion needs."""
    if samples is None or len(samples.feeds) == 0:
        raise DataError(f"prune-channels{{criterion={criterion}}} needs calibration data (DATA)")
    by_name: dict[str, Sink] = {}
    for s in sinks:
        x = s.node.inputs[0]
        assert x is not None
        by_name.setdefault(x.name, s)
    stats = {name: _InputStats() for name in by_name}
    rng = np.random.default_rng(seed)
    for got in stream_tensors(model, samples, list(by_name), label="pruning: measuring"):
        for name, sink in by_name.items():
            f = _features(sink, got[name]).astype(np.float64)
            st = stats[name]
            st.rows += f.shape[0]
            sq = np.square(f).sum(axis=0)
            st.sumsq = sq if st.sumsq is None else st.sumsq + sq
            if criterion == "second-order" and f.shape[1] <= _MAX_DENSE_FEATURES:
                sub = (
                    f
                    if f.shape[0] <= _MAX_ROWS
                    else f[rng.choice(f.shape[0], _MAX_ROWS, replace=False)]
                )
                m = sub.T @ sub * (f.shape[0] / sub.shape[0])
                st.second = m if st.second is None else st.second + m
            if criterion == "entropy":
                take = min(f.shape[0], max(1, _ENTROPY_SAMPLES // len(samples.feeds) + 1))
                st.samples.append(f[rng.choice(f.shape[0], take, replace=False)].astype(np.float32))
    return stats


def _sink_scores(sink: Sink, st: _InputStats, criterion: str) -> np.ndarray:
    """Per-channel (layout block) importance at one sink."""
    lay = sink.layout
    assert st.sumsq is not None
    w = _weight_rows(sink)  # [features, rest]
    if criterion == "entropy":
        values = np.concatenate(st.samples)  # [n, features]
        per_feature = values.reshape(values.shape[0], lay.outer, lay.block, lay.inner)
        per_chan = np.moveaxis(per_feature, 2, 0).reshape(lay.block, -1)
        return np.array([_entropy(v) for v in per_chan])
    w2 = np.square(w).sum(axis=1)  # per feature
    if criterion == "activation" or st.second is None:
        ex2 = st.sumsq / max(st.rows, 1)
        per_feature = ex2 * w2
        if criterion == "activation":
            return np.sqrt(_per_block(per_feature, lay))
        damped = ex2 + DAMPING * float(ex2.mean())
        return _per_block(w2 * damped, lay)
    h = st.second / max(st.rows, 1)
    h = h + DAMPING * float(np.mean(np.diag(h))) * np.eye(h.shape[0])
    hinv = np.linalg.inv(h)
    if lay.outer * lay.inner == 1:
        return w2 / np.diag(hinv)
    feats = np.arange(lay.length).reshape(lay.outer, lay.block, lay.inner)
    out = np.empty(lay.block)
    for c in range(lay.block):
        f = feats[:, c, :].ravel()
        block = hinv[np.ix_(f, f)]
        wf = w[f]
        out[c] = float(np.trace(wf.T @ np.linalg.solve(block, wf)))
    return out


def _entropy(values: np.ndarray, bins: int = 64) -> float:
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return 0.0
    hist, _ = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())
