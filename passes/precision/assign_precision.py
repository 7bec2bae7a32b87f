"""assign-precision: run each node in float16 or bfloat16 where that is safe, supported and pays.

What it decides, per node of the main graph (a node keeps float32 for one of five reasons,
each listed in the report under ``details['kept_fp32']``):

* **unsupported**: the op schema admits no lower type on the node's float ports (``Range``,
  ``QuantizeLinear`` before opset 19, a variable that mixes float with other types), the
  node holds a subgraph (``If``/``Loop``/``Scan``: their bodies stay float32, with Casts
  around the node; the simplest choice that is always correct), or the target execution
  provider has no kernel for it (:mod:`.capability` probes ONNX Runtime with a one-node
  model; ``require_kernels=false`` skips that, and ORT's CPU EP then computes such nodes in
  float32 behind Casts of its own, which keeps float16 rounding between nodes);
* **range**: with DATA, one calibration run gives each float tensor's largest magnitude; a
  tensor whose ``|max| * headroom`` passes float16's 65504, or whose non-zero values all
  underflow to zero in float16, keeps its producer and readers in float32. Constant inputs
  are checked directly. bfloat16 has float32's exponent range: only precision is lost;
* **cost**: ``target=auto`` converts to float16 and to bfloat16 on copies, times each against
  float32 on the target EP (interleaved rounds, Casts included) and keeps float32 unless
  one is at least 3 % faster; on the CPU EP, with its few float16/bfloat16 kernels, it
  keeps float32;
* **int8**: Q/DQ nodes and the nodes reading dequantized values (the groups ``qdq-insert``
  placed, which the EP runs as integer kernels) keep their form; a Cast inside a group would
  break it. So ``qdq-insert`` then ``assign-precision`` gives mixed int8 + fp16: int8 where it
  was placed, float16 for the float nodes between the groups, Casts on the boundaries;
* **sensitivity**: with an accuracy budget (``budget=`` or the run's budget), nodes go back
  to float32 greedily, the one whose return recovers most first, until the budget holds.

How it rewrites: float initializers read by converted nodes are converted directly (a
second copy when float32 nodes read them too), ``Constant``/``ConstantOfShape``/``Cast``/
``EyeLike``/``Random*`` get their value or dtype attribute rewritten, and Casts go only on
boundaries between regions: one per tensor and direction, shared by every reader. Graph
inputs and outputs keep their types (``keep_io_types``); an output produced in float16 keeps
its name on the Cast back to float32. Cast pairs that cancel exactly (float16 -> float32 ->
float16) and Casts to a tensor's own type are removed. Every node it decides gets
``pkg.graphopt.assign-precision`` metadata (its precision, or ``fp32:<reason>``), so a
second run changes nothing. Before anything is applied the converted model is loaded into
an ONNX Runtime session on the target EP; a node ORT still refuses goes back to float32.

This module is the pass (options, the order of the steps, load check, cost and budget on
:mod:`graphopt.accuracy.acceptance`); the per-node analysis lives in :mod:`.precision_plan`, the
rewrite in :mod:`.cast_placement`. A run's state is one :class:`.precision_plan.PrecisionRun`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.precision import capability, cast_placement
from graphopt.passes.precision.cast_placement import MOVEMENT, drop_movement_islands
from graphopt.passes.precision.precision_plan import (
    LOW,
    PRECISION_KEY,
    REASONS,
    SHORT,
    Plan,
    PrecisionRun,
    analyze,
    check_ranges,
    record,
)

from graphopt import runtime
from graphopt.accuracy import acceptance
from graphopt.accuracy.budget import Budget
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import RuntimeFailure
from graphopt.ir import Pristine, fill_types

__all__ = ["PRECISION_KEY", "REASONS", "AssignPrecisionOptions", "AssignPrecisionPass"]

_PAYS = acceptance.PAYS  # a lower precision must be at least 3 % faster than fp32 (auto)
_MAX_REPAIRS = 20
_NODE_IN_ERROR = re.compile(r"node with name '([^']*)'")


@dataclasses.dataclass(frozen=True)
class AssignPrecisionOptions:
    target: Literal["auto", "fp16", "bf16"] = option(
        "auto", "fp16/bf16: convert every supported node; auto: only what is faster on the EP"
    )
    budget: str = option(
        "", "accuracy budget, e.g. cosine>=0.999; the most sensitive nodes go back to fp32"
    )
    budget_samples: int = option(4, "DATA samples the budget is measured on")
    keep_io_types: bool = option(True, "graph inputs and outputs keep their types (Casts inside)")
    require_kernels: bool = option(
        True, "keep fp32 nodes the target EP has no fp16/bf16 kernel for (false: schema only)"
    )
    headroom: float = option(
        2.0, "a tensor whose calibrated |max| times this passes 65504 stays fp32 (fp16)"
    )
    exclude: list[str] = option([], "node names kept in fp32")

    def __post_init__(self) -> None:
        if self.budget:
            Budget.parse(self.budget)
        if self.budget_samples < 1:
            raise ValueError(f"budget_samples must be at least 1, got {self.budget_samples}")
        if not (self.headroom >= 1.0 and math.isfinite(self.headroom)):
            raise ValueError(f"headroom must be a finite number >= 1, got {self.headroom}")


@register_pass
class AssignPrecisionPass(GraphoptPass):
    name = "assign-precision"
    Options = AssignPrecisionOptions
    # float16 keeps 11 significant bits: every converted node rounds its output to a relative
    # error of about 5e-4, and those errors accumulate along the graph, so elementwise bounds
    # would have to be model-specific (and outputs near 0 have unbounded relative error). What
    # must hold is the direction of the outputs: 0.999 cosine catches a wrong cast, a swapped
    # port type or an overflow (those give cosines far lower or NaN), while float16 on trained
    # nets lands at 0.9999+. bfloat16 (8 bits) on deep nets lands near 0.999-0.9999.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.999)
    needs = frozenset()  # DATA is optional: without it, activations are not range-checked
    constant_weights = True
    summary = "per-node fp16/bf16/fp32 assignment: range, kernel support, cost and budget"

    # ------------------------------------------------------------------ driver
    def run(self, model: ir.Model) -> bool:
        opts = self.options
        run = PrecisionRun(
            ep=self.context.target if self.context.target in runtime.EP_NAMES else "cpu",
            opsets=dict(model.opset_imports),
            exclude=frozenset(opts.exclude),
            require_kernels=opts.require_kernels,
            headroom=opts.headroom,
            keep_io_types=opts.keep_io_types,
            samples=self.context.data,
        )
        nodes = list(model.graph)
        undecided = [i for i, n in enumerate(nodes) if PRECISION_KEY not in n.metadata_props]
        if not undecided:
            return self.decline("every node's precision was decided by an earlier run")
        # which ports may change type is decided from the values' types, so an exported model
        # without value_info (types of intermediate tensors unknown) is typed first
        fill_types(model)
        pristine = Pristine(model)
        self.details = {"ep": run.provider, "target": opts.target}
        probe_ok = run.can_probe()
        if opts.require_kernels and not probe_ok:
            self.details["kernels"] = f"not probed: {run.provider} is not available here"
        formats = [LOW[opts.target]] if opts.target != "auto" else list(LOW.values())
        plans: dict[ir.DataType, Plan] = {}
        kept_by: dict[ir.DataType, dict[str, tuple[str, str]]] = {}
        for fmt in formats:  # each format is analysed with its own record of nodes kept fp32
            run.kept = {}
            plans[fmt] = analyze(run, nodes, undecided, fmt, probe_ok, self.details)
            drop_movement_islands(run, nodes, plans[fmt])
            check_ranges(run, model, nodes, plans[fmt], fmt, self.details)
            self._validate(run, pristine, plans[fmt], fmt)
            kept_by[fmt] = run.kept
        if opts.target == "auto":
            fmt = self._choose_by_cost(run, model, pristine, plans)
        else:
            fmt = formats[0]
        if fmt is None:  # nothing pays: every float node stays fp32 for cost
            run.kept = dict(kept_by[formats[0]])
            for p in plans.values():
                for n in p.values():
                    run.kept[n.label] = ("cost", "not faster than fp32 on " + run.provider)
            plan: Plan = {}
            low = LOW["fp16"]
        else:
            plan, low, run.kept = plans[fmt], fmt, kept_by[fmt]
            budget_text = opts.budget or self.context.budget
            if budget_text and plan and run.samples is not None:
                self._apply_budget(run, Budget.parse(budget_text), model, pristine, plan, low)
                drop_movement_islands(run, nodes, plan)
            elif budget_text and plan:
                self.details["budget"] = "not measured: no DATA"
        self.details["precision"] = SHORT[low] if plan else "fp32"
        changed = self._rewrite(run, model, plan, low) if plan else False
        for reason, _ in run.kept.values():
            self.count(f"kept_fp32:{reason}")
        changed |= record(nodes, undecided, plan, run.kept)
        self.details["kept_fp32"] = {
            r: sorted(k for k, (reason, _) in run.kept.items() if reason == r) for r in REASONS
        }
        self.details["why"] = {k: f"{r}: {w}" for k, (r, w) in sorted(run.kept.items())}
        for label, (reason, _) in sorted(run.kept.items()):
            self.findings.leave(label, reason)
        if changed:
            return True
        if not any(v.dtype == ir.DataType.FLOAT for n in nodes for v in n.outputs):
            return self.decline("no float32 computation to lower: the model is not float32")
        reasons = ", ".join(f"{len(v)} {r}" for r, v in self.details["kept_fp32"].items() if v)
        return self.decline(f"every float32 node stays fp32 ({reasons or 'nothing to convert'})")

    def render_notes(self) -> list[str]:
        """The budget's outcome, and why every node stays fp32 when none was converted."""
        d = self.details
        notes = [acceptance.budget_note(d.get("budget"), "converted_all", "all converted")]
        if d.get("precision") == "fp32" and isinstance(d.get("kept_fp32"), dict):
            reasons = ", ".join(f"{len(v)} {r}" for r, v in d["kept_fp32"].items() if v)
            notes.append(f"every node stays fp32 ({reasons or 'no float nodes'})")
        return [n for n in notes if n]

    # ------------------------------------------------------------------ load check
    def _validate(
        self, run: PrecisionRun, pristine: Pristine, plan: Plan, low: ir.DataType
    ) -> None:
        """Load the converted model on the EP; a node ORT refuses goes back to fp32."""
        if not plan or not run.can_probe():
            return
        for _ in range(_MAX_REPAIRS):
            trial = pristine.copy()
            self._rewrite(run, trial, plan, low, count=False)
            try:
                runtime.make_session(trial, ep=run.ep, optimize=False)
                return
            except RuntimeFailure as exc:
                m = _NODE_IN_ERROR.search(str(exc))
                hit = [i for i, n in plan.items() if m and n.label == m.group(1)] if m else []
                if not hit:  # a node ORT expanded from a function body (Softmax...) has no name
                    hit = [i for i, n in plan.items() if capability.is_function_op(n.op_type)]
                if not hit:
                    self.details["load_failure"] = str(exc)
                    for n in plan.values():
                        run.keep(n.label, "unsupported", f"ONNX Runtime refused the model: {exc}")
                    plan.clear()
                    return
                for i in hit:
                    run.keep(plan[i].label, "unsupported", f"ONNX Runtime: {exc}")
                    del plan[i]

    # ------------------------------------------------------------------ cost (auto)
    def _feed(self, model: ir.Model) -> dict[str, np.ndarray]:
        if self.context.data is not None:
            return self.context.data.feeds[0]
        from graphopt.inputs import data

        return data.random_feeds(
            model, count=1, seed=self.context.seed, dims=self.context.dims
        ).feeds[0]

    def _choose_by_cost(
        self, run: PrecisionRun, model: ir.Model, pristine: Pristine, plans: dict[ir.DataType, Plan]
    ) -> ir.DataType | None:
        """The fastest format that beats fp32 by ``_PAYS`` on the EP, or None
        (:func:`graphopt.accuracy.acceptance.compare_latency`)."""
        info: dict[str, Any] = {"threshold": _PAYS}
        self.details["cost"] = info
        if not run.can_probe():
            info["decision"] = f"fp32: {run.provider} is not available to time on"
            return None
        candidates = {fmt: plan for fmt, plan in plans.items() if plan}
        if not candidates:
            info["decision"] = "fp32: nothing convertible"
            return None
        feed = self._feed(model)
        base = runtime.make_session(pristine.copy(), ep=run.ep)
        sessions, order = [], []
        for fmt in candidates:
            trial = pristine.copy()
            self._rewrite(run, trial, candidates[fmt], fmt, count=False)
            try:
                sessions.append(runtime.make_session(trial, ep=run.ep))
            except RuntimeFailure as exc:  # a kernel the EP lacks (require_kernels=false)
                info[SHORT[fmt]] = {"error": f"does not load on {run.provider}: {exc.message}"}
                continue
            order.append(fmt)
        if not order:
            info["decision"] = f"fp32: no candidate loads on {run.provider}"
            return None
        timing = acceptance.compare_latency(base, sessions, feed, _PAYS)
        timing = acceptance.settle(  # near the threshold: twice the rounds decide
            timing, _PAYS, lambda: acceptance.compare_latency(base, sessions, feed)
        )
        info["retimed"] = timing.retimed
        for k, fmt in enumerate(order):
            info[SHORT[fmt]] = {
                "ms": timing.ms[k],
                "ratio": timing.ratios[k],
                "nodes": len(candidates[fmt]),
            }
        k = acceptance.fastest_that_pays(timing, _PAYS)
        best = order[k] if k is not None else None
        info["fp32_ms"] = timing.base_ms
        info["decision"] = SHORT[best] if best is not None else "fp32: not faster"
        return best

    # ------------------------------------------------------------------ budget
    def _apply_budget(
        self,
        run: PrecisionRun,
        budget: Budget,
        model: ir.Model,
        pristine: Pristine,
        plan: Plan,
        low: ir.DataType,
    ) -> None:
        """Return the most sensitive nodes to fp32 until ``budget`` holds (greedy,
        :func:`graphopt.accuracy.acceptance.fall_back`); they leave ``plan``."""
        count = self.options.budget_samples
        probe = acceptance.BudgetProbe.of(budget, model, run.samples, count, ep=run.ep)

        def measure(p: Plan) -> float:
            trial = pristine.copy()
            self._rewrite(run, trial, p, low, count=False)
            return probe(trial)

        def without(back: list[int]) -> Plan:
            return {k: v for k, v in plan.items() if k not in back}

        def measure_back(back: list[int]) -> float:
            rest = without(back)
            return measure(rest) if rest else probe.perfect()

        def keep(i: int, gain: float) -> None:
            run.keep(plan[i].label, "sensitivity", f"budget {budget}: gain {gain:.3g}")
            del plan[i]

        start = measure(plan)
        self.details["budget"] = acceptance.fall_back(
            budget,
            start,
            [i for i, n in plan.items() if n.op_type not in MOVEMENT],
            sensitivity=lambda i: measure(without([i])),
            measure=measure_back,
            keep=keep,
            label=lambda i: plan[i].label,
            start_key="converted_all",
            chosen_key="kept_fp32",
        )

    # ------------------------------------------------------------------ rewrite
    def _rewrite(
        self,
        run: PrecisionRun,
        model: ir.Model,
        plan: Plan,
        low: ir.DataType,
        *,
        count: bool = True,
    ) -> bool:
        """Convert ``plan``'s nodes of ``model`` to ``low`` (:func:`.cast_placement.rewrite`)."""
        stats = cast_placement.rewrite(model, plan, low, keep_io=run.keep_io_types, mark=self.mark)
        if count:
            for key, n in stats.items():
                self.count(key, n)
        return bool(plan)
