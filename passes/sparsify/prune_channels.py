"""prune-channels: remove whole output channels of Conv and neurons of Gemm/MatMul.

Unlike ``sparsify``, which zeroes weights that ONNX Runtime still multiplies, this shrinks the
tensors: a Conv with 30% fewer output channels, and every layer that reads them with 30% fewer
input rows, does 30% less work. :mod:`graphopt.passes.sparsify.channels` finds which channels
are tied together (through BatchNormalization, residual Adds, Concat, depthwise Convs, Pad,
pooling, Flatten/Reshape into a Gemm, per-channel Mul/Add constants) and which cannot be
removed safely; this pass scores the channels of each safe group, keeps the best ones, and
rewrites every affected tensor consistently.

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

Per group, ``round(C * (1 - ratio))`` channels stay (rounded to a multiple of ``round_to``,
which keeps SIMD-friendly sizes, and at least ``min_channels``). With ``scope=global`` one
threshold over all groups' normalised scores decides, capped at ``max_ratio`` per group.
Producers record in their metadata (``pkg.graphopt.channels``) which original channels they
kept, so a second run with the same options changes nothing and ``reconstruct`` can match the
pruned layers to the original model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify import channels as ch

from graphopt import runtime
from graphopt.calib.collect import stream_tensors
from graphopt.core.pass_base import GraphoptPass, Tolerance, compare_arrays
from graphopt.core.registry import option, register_pass
from graphopt.data import random_feeds
from graphopt.errors import DataError
from graphopt.ir import attr_value, const_array, fill_types, not_constant
from graphopt.runtime import Snapshot

#: relative damping of the input second moment (``second-order``), as in OBS/SparseGPT
DAMPING = 0.01
#: rows of one feed used for second moments (a random subset of positions)
_MAX_ROWS = 8192
#: values per channel kept for the entropy histogram
_ENTROPY_SAMPLES = 4096
#: model metadata recording the ratio a global-scope run reached (idempotence)
_GLOBAL_KEY = "pkg.graphopt.prune-channels.global"
#: features above which second-order falls back to its diagonal approximation
_MAX_DENSE_FEATURES = 8192
#: the layers whose output channels the pass removes
_LAYERS = ("Conv", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class PruneChannelsOptions:
    ratio: float = option(0.3, "fraction of each group's channels removed, 0..1")
    criterion: Literal["magnitude", "activation", "second-order", "entropy"] = option(
        "magnitude", "channel importance (all but magnitude need DATA)"
    )
    scope: Literal["layer", "global"] = option(
        "layer", "layer: the same ratio in every group; global: one threshold over all"
    )
    round_to: int = option(8, "kept channel counts are multiples of this (groups >= 2x it)")
    min_channels: int = option(8, "never keep fewer channels than this in a group")
    max_ratio: float = option(0.9, "scope=global: at most this fraction removed per group")
    exclude: list[str] = option([], "producer node names whose channels are kept")
    heads: bool = option(True, "also remove whole attention heads (Q/K/V split into heads)")
    check: bool = option(
        True, "prove the rewrite on two inputs: pruned == original with the channels silenced"
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio < 1.0):
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.criterion not in ("magnitude", "activation", "second-order", "entropy"):
            raise ValueError(
                "criterion must be magnitude, activation, second-order or entropy, "
                f"got {self.criterion!r}"
            )
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be layer or global, got {self.scope!r}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise ValueError(f"min_channels must be >= 1, got {self.min_channels}")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in (0, 1), got {self.max_ratio}")
        if self.scope == "global" and self.ratio > self.max_ratio:
            raise ValueError(f"ratio {self.ratio} is above max_ratio {self.max_ratio}")


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


def _known(d: Any) -> int:
    """A dim's size; a symbolic or unknown one (Paddle's -1 too) counts as 1."""
    return d if isinstance(d, int) and d >= 0 else 1


def layer_macs(model: ir.Model) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul per sample (symbolic dims count as 1)."""

    def numel(v: ir.Value | None) -> int | None:
        if v is None or v.shape is None:
            return None
        return int(np.prod([_known(d) for d in v.shape], dtype=np.int64))

    total = 0
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        out = numel(node.outputs[0])
        if out is None or w is None or w.shape is None:
            continue
        wd = [_known(d) for d in w.shape]
        if node.op_type == "Conv":
            total += out * int(np.prod(wd[1:]))
        elif node.op_type == "Gemm":
            total += out * (wd[1] if attr_value(node, "transB", 0) else wd[0])
        elif len(wd) >= 2:
            total += out * wd[-2]
    return total


def _features(sink: ch.Sink, x: np.ndarray) -> np.ndarray:
    """The sink's input as [rows, features] (pixel-level channels for a Conv)."""
    op = sink.node.op_type
    if op in ("Conv", "ConvTranspose"):
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    if op == "Gemm" and attr_value(sink.node, "transA", 0):
        return x.T
    return x.reshape(-1, x.shape[-1])


def _weight_rows(sink: ch.Sink) -> np.ndarray:
    """The sink's weight as [features, everything else] (rows match :func:`_features`)."""
    w = const_array(sink.node.inputs[1])
    assert w is not None
    w = np.moveaxis(w.astype(np.float64), sink.weight_axis, 0)
    return w.reshape(w.shape[0], -1)


def _per_block(values: np.ndarray, layout: ch.Layout) -> np.ndarray:
    """Sum a per-feature quantity into the layout's channels ([block])."""
    return values.reshape(layout.outer, layout.block, layout.inner).sum(axis=(0, 2))


def _segments_of(layout: ch.Layout, root: int, analysis: ch.Analysis) -> list[int]:
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


@register_pass
class PruneChannelsPass(GraphoptPass):
    name = "prune-channels"
    Options = PruneChannelsOptions
    # Structured pruning is not meant to keep the outputs on its own: it removes whole
    # feature maps, and ``reconstruct`` then refits the layers that read them. Measured cosine
    # to the unpruned model before reconstruct (after it: 0.99+): demo CNN at the default 0.3,
    # random-normal inputs, 0.57; CREPE at 0.5 on real frames 0.23 (0.99 after reconstruct).
    # So verify-each holds it to running with the same output names, shapes and dtypes only;
    # the rewrite itself is proven exact by the pass on every run (``check``: pruned ==
    # original with the removed channels silenced, on two inputs, at the outputs and at every
    # layer that reads the removed channels) and by the tests.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=-1.0)
    summary = "remove whole Conv channels / Gemm-MatMul neurons and shrink what reads them"
    constant_weights = True

    def run(self, model: ir.Model) -> bool:
        o = self.options
        fill_types(model)  # ranks decide which axis is the channel: exports often lack them
        analysis = ch.analyze(model.graph, ch.symbolic_shapes(model))
        macs_before = layer_macs(model)
        report: list[dict[str, Any]] = []
        candidates: list[tuple[list[int], int, dict[str, Any]]] = []  # group, original, entry
        for group in analysis.groups():
            producers = list(dict.fromkeys(analysis.spaces[s].producer for s in group))
            size = analysis.spaces[group[0]].size
            entry: dict[str, Any] = {
                "producers": list(dict.fromkeys(analysis.spaces[s].label for s in group)),
                "channels": size,
            }
            reason = analysis.group_unsafe(group)
            if reason is None and any(p.name in o.exclude for p in producers if p.name):
                reason = "excluded"
            if reason is None and not o.heads and analysis.group_unit(group) > 1:
                reason = "attention heads (heads=false)"
            if reason is not None:
                entry["left_alone"] = reason
            else:
                entry["original"] = max(_original(analysis, s) for s in group)
                candidates.append((group, entry["original"], entry))
            report.append(entry)
        self.details = {"criterion": o.criterion, "ratio": o.ratio, "scope": o.scope}
        self.details["groups"] = report
        self.details["groups_left_alone"] = sum(1 for e in report if "left_alone" in e)
        self.details["macs"] = {"before": macs_before, "after": macs_before}
        plan = self._plan(model, analysis, candidates)
        if not plan:
            return self._unchanged(model, report, len(candidates))
        kept: dict[int, np.ndarray] = {}
        for group, idx in plan:
            for s in group:
                kept[s] = idx
            self.count("groups_pruned")
        reference: list[Snapshot] = []
        probes = _probes(model, analysis, kept) if o.check else []

        def hook() -> None:
            with _extra_outputs(model, [v for v, _ in probes]):
                reference.append(Snapshot.of(model))

        stats = ch.apply(model.graph, analysis, kept, silenced=hook if o.check else None)
        for k, v in stats.items():
            self.count(k, v)
        if reference:
            self.details["check"] = self._check(model, reference[0], probes)
        for group, _, entry in candidates:
            entry["kept"] = len(kept[group[0]]) if group[0] in kept else entry["channels"]
        if o.scope == "global":
            model.metadata_props[_GLOBAL_KEY] = json.dumps({"ratio": o.ratio})
        self.details["macs"]["after"] = layer_macs(model)
        return True

    def _unchanged(self, model: ir.Model, report: list[dict[str, Any]], prunable: int) -> bool:
        """Decline, saying why no channel goes."""
        o = self.options
        if prunable:
            return self.decline(
                f"no channel goes at ratio={o.ratio}: the {prunable} groups that can lose "
                f"channels keep them all (round_to={o.round_to}, min_channels={o.min_channels}"
                ", or an earlier run removed them)"
            )
        if report:
            reasons: dict[str, int] = {}
            for entry in report:
                reasons[entry["left_alone"]] = reasons.get(entry["left_alone"], 0) + 1
            shown = "; ".join(f"{n}x {why}" for why, n in list(reasons.items())[:3])
            more = f"; {len(reasons) - 3} more reasons" if len(reasons) > 3 else ""
            return self.decline(f"every channel group is left alone: {shown}{more}")
        for node in model.graph:
            w = node.inputs[1] if node.op_type in _LAYERS and len(node.inputs) > 1 else None
            if w is not None and const_array(w) is None:
                if (why := not_constant(w)) != "weight_computed":
                    self.count(f"skipped:{why}")
        return self.decline_no_target(
            "Conv (group=1), Gemm or MatMul with a constant weight", model, _LAYERS
        )

    def _check(
        self, model: ir.Model, silenced: Snapshot, probes: list[tuple[ir.Value, _Probe]]
    ) -> dict[str, float]:
        """Run the pruned model and the silenced original on the same two inputs; they must
        agree to float rounding, or the rewrite is wrong (a bug: the run stops here).

        Compared: the graph outputs, and the outputs of the layers that read the removed
        channels (``probes``): a sigmoid map saturated on every input (a text detector on a
        blank page, or after pruning) agrees at its outputs whatever the layers before it
        compute, so the outputs alone can prove nothing there.
        """
        samples = self.context.data
        if samples is not None and len(samples.feeds):
            feeds = samples.feeds[:2]
        else:
            feeds = random_feeds(
                model, count=2, seed=self.context.seed, dims=self.context.dims
            ).feeds
        outputs = [v.name for v in model.graph.outputs]
        names = outputs + [v.name for v, _ in probes]
        want_sess = runtime.make_session(silenced, optimize=False)
        with _extra_outputs(model, [v for v, _ in probes]):
            got_sess = runtime.make_session(model, optimize=False)
        worst = {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "layers_compared": len(probes)}
        worst["layers_max_rel"] = 0.0
        tol = Tolerance(max_abs=1e-4, max_rel=1e-3, min_cosine=0.9999)
        for i, feed in enumerate(feeds):
            want = runtime.run_checked(want_sess, names, feed, f"the check's feed {i}")
            got = runtime.run_checked(got_sess, names, feed, f"the check's feed {i}")
            for name, g, w in zip(outputs, got, want):
                ok, m = tol.check(g, w)
                worst["max_abs"] = max(worst["max_abs"], m["max_abs"])
                worst["max_rel"] = max(worst["max_rel"], m["max_rel"])
                worst["cosine"] = min(worst["cosine"], m["cosine"])
                if not ok:
                    raise RuntimeError(_mismatch(f"output '{name}'", m))
            for (value, probe), g, w in zip(probes, got[len(outputs) :], want[len(outputs) :]):
                w = np.asarray(w)
                if probe.index is not None and w.ndim > probe.axis:
                    w = np.take(w, probe.index, axis=probe.axis)
                ok, m = _agree(np.asarray(g), w)
                worst["layers_max_rel"] = max(worst["layers_max_rel"], m["max_rel"])
                if not ok:
                    where = f"'{value.name}', the output of {probe.op} '{probe.node}'"
                    raise RuntimeError(_mismatch(where, m))
        silenced.close()
        return worst

    # ----------------------------------------------------------------- which channels
    def _plan(
        self,
        model: ir.Model,
        analysis: ch.Analysis,
        candidates: list[tuple[list[int], int, dict[str, Any]]],
    ) -> list[tuple[list[int], np.ndarray]]:
        """(group, kept indices) for every group that loses channels."""
        o = self.options
        if not candidates:
            return []
        current = [analysis.spaces[g[0]].size for g, _, _ in candidates]
        units = [analysis.group_unit(g) for g, _, _ in candidates]
        # groups that go in whole units (attention heads) are decided unit by unit, per group
        per_group = [k for k, u in enumerate(units) if o.scope == "layer" or u > 1]
        counts = {}
        for k in per_group:
            u, (_, orig, _) = units[k], candidates[k]
            if u > 1:
                counts[k] = u * keep_count(orig // u, o.ratio, 1, 1)
            else:
                counts[k] = keep_count(orig, o.ratio, o.round_to, o.min_channels)
            counts[k] = min(current[k], counts[k])
        rest = [k for k in range(len(candidates)) if k not in counts]
        done = json.loads(model.metadata_props.get(_GLOBAL_KEY, "{}")).get("ratio", 0.0)
        if rest and done >= o.ratio:  # a global run reached this ratio already
            counts.update((k, current[k]) for k in rest)
            rest = []
        keys = [k for k in counts if counts[k] < current[k]] + rest
        if not keys:
            return []
        groups = [candidates[k][0] for k in keys]
        ranked = dict(zip(keys, self._scores(model, analysis, groups)))
        if rest:
            chosen = global_counts(
                [_normalised(ranked[k]) for k in rest],
                [candidates[k][1] for k in rest],
                o.ratio,
                max_ratio=o.max_ratio,
                round_to=o.round_to,
                min_channels=o.min_channels,
            )
            counts.update(zip(rest, chosen))
        todo = [k for k in keys if counts[k] < current[k]]
        return [(candidates[k][0], _top(ranked[k], counts[k], units[k])) for k in todo]

    # ----------------------------------------------------------------- importance
    def _scores(
        self, model: ir.Model, analysis: ch.Analysis, groups: list[list[int]]
    ) -> list[np.ndarray]:
        crit = self.options.criterion
        roots = [analysis.find(g[0]) for g in groups]
        if crit == "magnitude":
            out = []
            for g in groups:
                total = np.zeros(analysis.spaces[g[0]].size)
                for s in g:
                    total += _normalised(_space_norms(analysis, s))
                out.append(total)
            return out
        sinks = [
            s for s in analysis.sinks if any(analysis.find(sp) in roots for sp in s.layout.spaces())
        ]
        stats = self._input_stats(model, sinks)
        out = []
        for g, root in zip(groups, roots):
            size = analysis.spaces[g[0]].size
            total = np.zeros(size)
            for sink in sinks:
                offs = _segments_of(sink.layout, root, analysis)
                if not offs:
                    continue
                per_block = self._sink_scores(sink, stats[sink.node.inputs[0].name])  # type: ignore[union-attr]
                for off in offs:
                    total += _normalised(per_block[off : off + size])
            if not total.any():  # no sink measured this group: fall back to magnitude
                for s in g:
                    total += _normalised(_space_norms(analysis, s))
            out.append(total)
        return out

    @staticmethod
    def _filter_norms(node: ir.Node) -> np.ndarray:
        w = const_array(node.inputs[1])
        assert w is not None
        w = w.astype(np.float64)
        if node.op_type == "Conv":
            return np.sqrt(np.square(w).reshape(w.shape[0], -1).sum(axis=1))
        if node.op_type == "Gemm" and attr_value(node, "transB", 0):
            return np.sqrt(np.square(w).sum(axis=1))
        return np.sqrt(np.square(w).sum(axis=0))

    def _input_stats(self, model: ir.Model, sinks: list[ch.Sink]) -> dict[str, _InputStats]:
        crit = self.options.criterion
        samples = self.context.data
        if samples is None or len(samples.feeds) == 0:
            raise DataError(f"prune-channels{{criterion={crit}}} needs calibration data (DATA)")
        by_name: dict[str, ch.Sink] = {}
        for s in sinks:
            x = s.node.inputs[0]
            assert x is not None
            by_name.setdefault(x.name, s)
        stats = {name: _InputStats() for name in by_name}
        rng = np.random.default_rng(self.context.seed)
        for got in stream_tensors(model, samples, list(by_name), label="pruning: measuring"):
            for name, sink in by_name.items():
                f = _features(sink, got[name]).astype(np.float64)
                st = stats[name]
                st.rows += f.shape[0]
                sq = np.square(f).sum(axis=0)
                st.sumsq = sq if st.sumsq is None else st.sumsq + sq
                if crit == "second-order" and f.shape[1] <= _MAX_DENSE_FEATURES:
                    sub = (
                        f
                        if f.shape[0] <= _MAX_ROWS
                        else f[rng.choice(f.shape[0], _MAX_ROWS, replace=False)]
                    )
                    m = sub.T @ sub * (f.shape[0] / sub.shape[0])
                    st.second = m if st.second is None else st.second + m
                if crit == "entropy":
                    take = min(f.shape[0], max(1, _ENTROPY_SAMPLES // len(samples.feeds) + 1))
                    st.samples.append(
                        f[rng.choice(f.shape[0], take, replace=False)].astype(np.float32)
                    )
        return stats

    def _sink_scores(self, sink: ch.Sink, st: _InputStats) -> np.ndarray:
        """Per-channel (layout block) importance at one sink."""
        crit = self.options.criterion
        lay = sink.layout
        assert st.sumsq is not None
        w = _weight_rows(sink)  # [features, rest]
        if crit == "entropy":
            values = np.concatenate(st.samples)  # [n, features]
            per_feature = values.reshape(values.shape[0], lay.outer, lay.block, lay.inner)
            per_chan = np.moveaxis(per_feature, 2, 0).reshape(lay.block, -1)
            return np.array([_entropy(v) for v in per_chan])
        w2 = np.square(w).sum(axis=1)  # per feature
        if crit == "activation" or st.second is None:
            ex2 = st.sumsq / max(st.rows, 1)
            per_feature = ex2 * w2
            if crit == "activation":
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


def _space_norms(analysis: ch.Analysis, s: int) -> np.ndarray:
    """Filter norms of the producer's channels that space ``s`` covers."""
    space = analysis.spaces[s]
    norms = PruneChannelsPass._filter_norms(space.producer)
    return norms[space.offset : space.offset + space.size]


def _original(analysis: ch.Analysis, s: int) -> int:
    """Channels space ``s`` had before any pruning (recorded by earlier runs)."""
    space = analysis.spaces[s]
    if space.split is not None:  # a Split's part: the Split records its original sizes
        node, i = space.split
        rec = node.metadata_props.get(ch.CHANNELS_KEY)
        return int(json.loads(rec)["original"][i]) if rec else space.size
    rec = space.producer.metadata_props.get(ch.CHANNELS_KEY)
    return int(json.loads(rec)["original"]) if rec else space.size


def _top(score: np.ndarray, n: int, unit: int) -> np.ndarray:
    """Sorted indices of the ``n`` best channels, taken ``unit`` at a time."""
    if unit == 1:
        return np.sort(np.argsort(-score, kind="stable")[:n])
    heads = np.sort(np.argsort(-score.reshape(-1, unit).sum(axis=1), kind="stable")[: n // unit])
    return (heads[:, None] * unit + np.arange(unit)[None, :]).ravel()


def _normalised(v: np.ndarray) -> np.ndarray:
    m = float(np.mean(v))
    return v / m if m > 0 else v


def _entropy(values: np.ndarray, bins: int = 64) -> float:
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return 0.0
    hist, _ = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())


@dataclasses.dataclass(frozen=True)
class _Probe:
    """A layer's output the check compares: the silenced original's, at ``index`` along
    ``axis`` where the layer's own channels were pruned too (None: all of it)."""

    node: str
    op: str
    axis: int = 0
    index: np.ndarray | None = None


#: how far a probed layer output may move, relative to its largest magnitude: the rounding
#: of a sum over fewer terms (measured up to 5e-6 on PP-OCR, YOLOX), not another computation
_PROBE_MAX_REL = 1e-3


def _probes(
    model: ir.Model, analysis: ch.Analysis, kept: dict[int, np.ndarray]
) -> list[tuple[ir.Value, _Probe]]:
    """The outputs of the sinks that lose input channels (not already graph outputs)."""
    full = analysis.complete({s: np.asarray(k, np.int64) for s, k in kept.items()})
    pruned = {s for s, k in full.items() if len(k) < analysis.spaces[s].size}
    outputs = set(model.graph.outputs)
    out: dict[ir.Value, _Probe] = {}
    for sink in analysis.sinks:
        value = sink.node.outputs[0]
        if value in outputs or value in out or not pruned & set(sink.layout.spaces()):
            continue
        probe = _Probe(sink.node.name or "", sink.node.op_type)
        layout = analysis.layouts.get(value)
        if layout is not None and pruned & set(layout.spaces()):
            probe = dataclasses.replace(probe, axis=layout.axis, index=layout.kept_indices(full))
        out[value] = probe
    return list(out.items())


@contextlib.contextmanager
def _extra_outputs(model: ir.Model, values: list[ir.Value]) -> Iterator[None]:
    """``values`` as graph outputs for as long as the block runs."""
    n = len(model.graph.outputs)
    model.graph.outputs.extend(values)
    try:
        yield
    finally:
        while len(model.graph.outputs) > n:
            model.graph.outputs.pop()


def _agree(got: np.ndarray, want: np.ndarray) -> tuple[bool, dict[str, float]]:
    """A probed layer output: equal to rounding relative to its largest magnitude."""
    m = compare_arrays(got, want)
    eps = float(np.finfo(want.dtype).eps) if np.issubdtype(want.dtype, np.floating) else 0.0
    limit = max(_PROBE_MAX_REL, 8 * eps)
    return got.shape == want.shape and m["max_rel"] <= limit, m


def _mismatch(where: str, m: dict[str, float]) -> str:
    return (
        "the pruned model does not compute what the original computes with the removed "
        f"channels silenced (at {where}: {m}); this is a graphopt bug"
    )
