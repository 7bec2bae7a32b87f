"""prune-channels: remove whole output channels of Conv and neurons of Gemm/MatMul.

Unlike ``sparsify``, which zeroes weights that ONNX Runtime still multiplies, this shrinks the
tensors: a Conv with 30% fewer output channels, and every layer that reads them with 30% fewer
input rows, does 30% less work. :mod:`.channel_analysis` finds which channels are tied
together (through BatchNormalization, residual Adds, Concat, depthwise Convs, Pad, pooling,
Flatten/Reshape into a Gemm, per-channel Mul/Add constants) and which cannot be removed
safely; this pass scores the channels of each safe group (:mod:`.prune_importance`: by
``magnitude``, ``activation``, ``second-order`` or ``entropy``), keeps the best ones, rewrites
every affected tensor consistently (:mod:`.channel_rewrite`) and proves the rewrite exact
(:mod:`.prune_check`).

Per group, ``round(C * (1 - ratio))`` channels stay (rounded to a multiple of ``round_to``,
which keeps SIMD-friendly sizes, and at least ``min_channels``). With ``scope=global`` one
threshold over all groups' normalised scores decides, capped at ``max_ratio`` per group.
Producers record in their metadata (``pkg.graphopt.channels``) which original channels they
kept, so a second run with the same options changes nothing and ``reconstruct`` can match the
pruned layers to the original model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.channel_analysis import analyze
from graphopt.passes.sparsify.channel_layout import CHANNELS_KEY, Analysis
from graphopt.passes.sparsify.channel_rewrite import apply
from graphopt.passes.sparsify.channel_shapes import symbolic_shapes
from graphopt.passes.sparsify.prune_check import check_rewrite, extra_outputs, probes
from graphopt.passes.sparsify.prune_importance import (
    global_counts,
    keep_count,
    normalised,
    score_groups,
    top,
)

from graphopt.core.ops import WEIGHTED
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import (
    Pristine,
    attr_value,
    const_array,
    fill_types,
    not_constant,
    shape_through_qdq,
)
from graphopt.runtime import Snapshot

#: model metadata recording the ratio a global-scope run reached (idempotence)
_GLOBAL_KEY = "pkg.graphopt.prune-channels.global"
#: producer metadata: why its group's rewrite could not be proven (left alone from then on)
UNPROVEN_KEY = "pkg.graphopt.prune-channels.unproven"


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


def _known(d: Any) -> int:
    """A dim's size; a symbolic or unknown one (Paddle's -1 too) counts as 1."""
    return d if isinstance(d, int) and d >= 0 else 1


#: ONNX Runtime's integer MatMul kernels that target passes write (weight at input 1)
_INTEGER_MATMULS = frozenset({"MatMulIntegerToFloat"})


def layer_macs(model: ir.Model) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul (and the integer MatMul kernels) per sample
    (symbolic dims count as 1)."""

    def numel(shape: ir.Shape | None) -> int | None:
        if shape is None:
            return None
        return int(np.prod([_known(d) for d in shape], dtype=np.int64))

    total = 0
    for node in model.graph:
        op = node.op_type
        if (op not in WEIGHTED and op not in _INTEGER_MATMULS) or len(node.inputs) < 2:
            continue
        w_shape = shape_through_qdq(node.inputs[1])
        if w_shape is None:
            continue
        wd = [_known(d) for d in w_shape]
        out = numel(node.outputs[0].shape)
        if op == "Conv":
            if out is not None:
                total += out * int(np.prod(wd[1:]))
        elif op == "Gemm":
            if out is not None:
                total += out * (wd[1] if attr_value(node, "transB", 0) else wd[0])
        elif len(wd) >= 2:
            a = numel(shape_through_qdq(node.inputs[0]))
            if out is not None:
                total += out * wd[-2]
            elif a is not None and len(wd) == 2:  # [..., K] x [K, N]: numel(A) * N
                total += a * wd[-1]
    return total


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
        shapes = symbolic_shapes(model)
        analysis = analyze(model.graph, shapes)
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
            unproven = next((p.metadata_props[UNPROVEN_KEY] for p in producers
                             if UNPROVEN_KEY in p.metadata_props), None)  # fmt: skip
            if reason is None and unproven is not None:
                reason = f"its rewrite could not be proven exact in an earlier run ({unproven})"
            if reason is None and any(p.name in o.exclude for p in producers if p.name):
                reason = "excluded"
            if reason is None and not o.heads and analysis.group_unit(group) > 1:
                reason = "attention heads (heads=false)"
            if reason is not None:
                entry["left_alone"] = reason
                self.findings.leave(", ".join(entry["producers"]), reason)
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
        pristine = Pristine(model) if o.check else None
        try:
            stats, check = self._rewrite(model, analysis, plan)
        except Exception as exc:  # a channel tie the analysis missed: see _drop_unproven
            if pristine is None:
                raise
            entries = {tuple(g): e for g, _, e in candidates}
            plan, stats, check = self._drop_unproven(model, pristine, shapes, plan, exc, entries)
            if not plan:
                return self.decline(
                    "no group's rewrite could be proven exact (each is left alone with the "
                    "reason in the report)"
                )
        kept = {s: idx for group, idx in plan for s in group}
        self.count("groups_pruned", len(plan))
        for k, v in stats.items():
            self.count(k, v)
        if check is not None:
            self.details["check"] = check
        for group, _, entry in candidates:
            entry["kept"] = len(kept[group[0]]) if group[0] in kept else entry["channels"]
        if o.scope == "global":
            model.metadata_props[_GLOBAL_KEY] = json.dumps({"ratio": o.ratio})
        self.details["macs"]["after"] = layer_macs(model)
        return True

    def _rewrite(
        self, model: ir.Model, analysis: Analysis, plan: list[tuple[list[int], np.ndarray]]
    ) -> tuple[dict[str, int], dict[str, float] | None]:
        """Remove the planned channels from ``model`` and prove it (``check``): the rewrite's
        counts and the proof's worst differences. Raises when the proof fails."""
        kept = {s: idx for group, idx in plan for s in group}
        reference: list[Snapshot] = []
        probed = probes(model, analysis, kept) if self.options.check else []

        def hook() -> None:
            with extra_outputs(model, [v for v, _ in probed]):
                reference.append(Snapshot.of(model))

        try:
            stats = apply(
                model.graph, analysis, kept, silenced=hook if self.options.check else None
            )
            check = check_rewrite(model, reference[0], probed, self.context) if reference else None
        finally:
            for snapshot in reference:
                snapshot.close()
        return stats, check

    def _drop_unproven(
        self,
        model: ir.Model,
        pristine: Pristine,
        shapes: Any,
        plan: list[tuple[list[int], np.ndarray]],
        first: Exception,
        entries: dict[tuple[int, ...], dict[str, Any]],
    ) -> tuple[list[tuple[list[int], np.ndarray]], dict[str, int], dict[str, float] | None]:
        """After a failed proof: find the groups whose rewrite cannot be proven (halving the
        plan on copies of the model), leave them alone with the reason, and prune the rest.

        A failed proof means the channel analysis missed a tie (an end-to-end detector head
        once did); the groups it cannot follow stay whole, the rest of the model is pruned.
        """

        def attempt(keys: list[int]) -> str | None:
            copy = pristine.copy()
            fill_types(copy)
            try:
                self._rewrite(copy, analyze(copy.graph, shapes), [plan[k] for k in keys])
            except Exception as exc:  # any failure of the rewrite or its proof
                return _first_line(exc)
            return None

        def unproven(keys: list[int], why: str) -> dict[int, str]:
            if len(keys) == 1:
                return {keys[0]: why}
            half = len(keys) // 2
            bad: dict[int, str] = {}
            for part in (keys[:half], keys[half:]):
                err = attempt(part)
                if err is not None:
                    bad.update(unproven(part, err))
            return bad or dict.fromkeys(keys, why)  # each half alone is fine: keep both whole

        bad = unproven(list(range(len(plan))), _first_line(first))
        for k, why in bad.items():
            entry = entries[tuple(plan[k][0])]
            entry["left_alone"] = f"its rewrite could not be proven exact ({why})"
            self.findings.leave(", ".join(entry["producers"]), "rewrite not proven exact")
            self.count("groups_unproven")
        self.details["groups_left_alone"] += len(bad)
        good = [item for k, item in enumerate(plan) if k not in bad]
        model.graph = pristine.copy().graph
        fill_types(model)
        if not good:
            return [], {}, None
        analysis = analyze(model.graph, shapes)
        for k, why in bad.items():  # a second run leaves them alone at once (idempotence)
            for s in plan[k][0]:
                analysis.spaces[s].producer.metadata_props[UNPROVEN_KEY] = why
        stats, check = self._rewrite(model, analysis, good)
        return good, stats, check

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
            w = node.inputs[1] if node.op_type in WEIGHTED and len(node.inputs) > 1 else None
            if w is not None and const_array(w) is None:
                if (why := not_constant(w)) != "weight_computed":
                    self.count(f"skipped:{why}")
        return self.decline_no_target(
            "Conv (group=1), Gemm or MatMul with a constant weight", model, WEIGHTED
        )

    # ----------------------------------------------------------------- which channels
    def _plan(
        self,
        model: ir.Model,
        analysis: Analysis,
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
        ctx = self.context
        scores = score_groups(model, analysis, groups, o.criterion, ctx.data, ctx.seed)
        ranked = dict(zip(keys, scores))
        if rest:
            chosen = global_counts(
                [normalised(ranked[k]) for k in rest],
                [candidates[k][1] for k in rest],
                o.ratio,
                max_ratio=o.max_ratio,
                round_to=o.round_to,
                min_channels=o.min_channels,
            )
            counts.update(zip(rest, chosen))
        todo = [k for k in keys if counts[k] < current[k]]
        return [(candidates[k][0], top(ranked[k], counts[k], units[k])) for k in todo]

    def render_notes(self) -> list[str]:
        """The work the pruned layers do now, and how many groups kept their channels."""
        d = self.details
        if self.declined or "groups" not in d:
            return []
        macs = d["macs"]
        note = f"Conv/Gemm/MatMul MACs per sample {macs['before']:,} → {macs['after']:,}"
        if macs["before"]:
            note += f" ({macs['after'] / macs['before'] - 1:+.0%})"
        if d["groups_left_alone"]:
            note += f"; {d['groups_left_alone']} of {len(d['groups'])} channel groups left alone"
        return [note]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _original(analysis: Analysis, s: int) -> int:
    """Channels space ``s`` had before any pruning (recorded by earlier runs)."""
    space = analysis.spaces[s]
    if space.split is not None:  # a Split's part: the Split records its original sizes
        node, i = space.split
        rec = node.metadata_props.get(CHANNELS_KEY)
        return int(json.loads(rec)["original"][i]) if rec else space.size
    rec = space.producer.metadata_props.get(CHANNELS_KEY)
    return int(json.loads(rec)["original"]) if rec else space.size
