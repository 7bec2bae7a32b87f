"""qdq-insert: static post-training int8 quantization in QDQ form, placed for the target.

What it quantizes (``op_types``):

* **anchors**, the ops int8 is for: ``Conv``, ``Gemm`` and ``MatMul`` with a constant weight
  (per-channel symmetric int8 weights, an int32 bias with scale ``s_x * s_w``), ``MatMul``
  of two activations (attention), and ``Gather`` from a constant table (embeddings: an int8
  table, the gathered rows stay int8 until a DequantizeLinear);
* **integer-region ops** (``Add``, ``Mul``, ``Concat``, pooling, and data movement such as
  ``Reshape``/``Transpose``/``MaxPool``/``Resize``/``Split``): only where *every* activation
  input already comes out of a quantized node and *every* consumer is quantized too.
  Elsewhere a Q/DQ pair would cost a conversion and buy nothing.
* **activations** (CPU): ``Sigmoid`` and ``LeakyRelu`` as ORT's table lookups (SiLU is
  ``QLinearSigmoid`` + ``QLinearMul``), ``HardSigmoid`` as one saturating ``QLinearAdd`` and
  ``HardSwish`` as ``QLinearAdd`` + ``QLinearMul`` (:mod:`.qdq_activations`: exact, or within
  one output step, else the float form stays and the report says why). The report's
  ``activations`` names the form each one took.
* **last-axis ``Softmax``** (attention) wherever every consumer is quantized, even after a
  float node: ``QLinearSoftmax`` is a table lookup, cheaper than the float kernel plus the
  Q on its input (MiniLM on this CPU: 2.3 ms of Softmax became 1.4 ms, 6 layers). Its input
  range is [smallest row maximum - ln(256 x row length), maximum], from the calibration's
  row statistics: softmax only sees distances below each row's maximum, and attention masks
  (-3.4e38) saturate to the floor instead of taking every level. Default on the CPU only;
  CUDA/TensorRT fuse attention themselves.
  Data-movement ops share their input's scale and zero point (ONNX Runtime drops the Q/DQ
  around them only when they are equal).

Placement follows what ONNX Runtime's CPU EP fuses: a Conv's output is always quantized
(``QLinearConv`` needs it); a Gemm/MatMul's output only if all its consumers are quantized
(otherwise ``QGemm``/``MatMulIntegerToFloat`` produce float directly); a ``Relu`` (or ``Clip``)
right after a quantized op is absorbed: its output is the one quantized, and with asymmetric
uint8 its zero point is 0, so ONNX Runtime removes it. A quantized tensor that is a graph
output keeps its name on the DequantizeLinear output.

Types follow the target (``target=auto|cpu|cuda``, :mod:`graphopt.runtime.target`): uint8
activations and int8 weights on x86, 7-bit weights where the CPU has no VNNI, symmetric int8
on ARM and CUDA. After insertion (``check_fusion``, CPU only) it builds an ONNX Runtime
session, reads the optimized graph back, and lists which quantized nodes became integer
kernels; with ``repair`` the unfused ones get their float inputs and weights back, so they
never pay for Q/DQ.

Activation ranges come from one streamed calibration run (:mod:`graphopt.calib`). Per-axis
DequantizeLinear needs ai.onnx opset 13; older models are left alone (stat ``skipped:opset``).
Nodes that already read a DequantizeLinear are skipped, so a second run changes nothing.

This module is the pass (options, the order of the steps, the report); the steps live in
:mod:`.qdq_plan` (what is quantized), :mod:`.qdq_params` (scales and zero points),
:mod:`.qdq_smooth` (SmoothQuant), :mod:`.qdq_emit` (writing Q/DQ) and :mod:`.qdq_accept`
(the budget and the latency guard, on :mod:`graphopt.accuracy.acceptance`). A run's state is one
:class:`.qdq_plan.QdqRun`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Literal

import onnx_ir as ir
from graphopt.passes.quantize import fusion, qdq_accept, qdq_activations, qdq_emit
from graphopt.passes.quantize.qdq_params import (
    activation_qparams,
    activation_ranges,
    align_sibling_zero_points,
)
from graphopt.passes.quantize.qdq_plan import (
    DEFAULT_OPS,
    KEPT_FLOAT_KEY,
    REQUANT,
    SHARED,
    SUPPORTED,
    QdqRun,
    calibration_tensors,
    default_ops,
    nothing_to_quantize,
    plan_model,
    softmax_inputs,
)
from graphopt.passes.quantize.qdq_smooth import smoothing_scales

from graphopt.accuracy import acceptance
from graphopt.accuracy.budget import Budget
from graphopt.core.build import Namer
from graphopt.core.ops import WEIGHTED
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError
from graphopt.ir import (
    Pristine,
    ai_onnx_opset,
    fill_types,
    iter_graphs,
    iter_nodes,
    iter_scopes,
)
from graphopt.runtime.target import int8_scheme

#: the pass and what callers of this module use from the modules it is built of
__all__ = [
    "DEFAULT_OPS",
    "FLOOR",
    "KEPT_FLOAT_KEY",
    "REQUANT",
    "SHARED",
    "SUPPORTED",
    "InsertQdqOptions",
    "InsertQdqPass",
    "activation_qparams",
]

_MIN_OPSET = 13
#: the budget when none is given: verification fails a run below cosine 0.99 (the pass's
#: tolerance), so sensitive nodes go back to float before that, with a margin for the
#: metric's per-sample averaging (verification flattens)
FLOOR = "cosine>=0.993"


@dataclasses.dataclass(frozen=True)
class InsertQdqOptions:
    target: Literal["auto", "cpu", "cuda"] = option(
        "auto", "target the types and placement are chosen for (auto: the run's --target)"
    )
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = option(
        "minmax", "how activation ranges are chosen from the calibration histogram"
    )
    per_channel: bool = option(True, "quantize weights per output channel (else per tensor)")
    activation_type: Literal["auto", "uint8", "int8"] = option(
        "auto", "activations: uint8 (asymmetric), int8 (symmetric), auto: what the target fuses"
    )
    reduce_range: Literal["auto", "true", "false"] = option(
        "auto", "7-bit weights (no u8s8 overflow on x86 without VNNI); auto: by CPU"
    )
    op_types: list[str] = option(
        [],
        "op types to quantize; empty: the target's (Softmax and the activations Sigmoid, "
        "LeakyRelu, HardSwish, HardSigmoid only on the CPU; see module doc)",
    )
    exclude: list[str] = option([], "node names kept in float")
    bins: int = option(2048, "histogram bins per calibrated tensor")
    check_fusion: bool = option(
        True, "read ONNX Runtime's optimized graph back and report unfused groups (CPU)"
    )
    repair: bool = option(True, "give unfused nodes their float inputs back (needs check_fusion)")
    budget: str = option(
        "",
        "accuracy budget, e.g. cosine>=0.999; the most sensitive nodes stay float to meet it "
        f"(empty: the run's --budget, else {FLOOR}, the pass's own tolerance with a margin; "
        "none: every planned node int8 whatever it costs)",
    )
    budget_samples: int = option(8, "DATA samples the budget is measured on")
    guard: bool = option(
        False, "time int8 against float on this CPU; keep float whatever does not pay (cpu)"
    )
    smooth: float = option(
        0.0,
        "SmoothQuant strength alpha in [0, 1] for MatMul inputs (0: off): per-channel "
        "activation outliers move into the weights",
    )
    smooth_gain: float = option(
        2.0,
        "smooth only inputs where it divides the estimated int8 output error by more than "
        "this (1: every input)",
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.op_types) - SUPPORTED)
        if unknown:
            raise ValueError(
                f"op_types: cannot quantize {', '.join(unknown)} "
                f"(supported: {', '.join(sorted(SUPPORTED))})"
            )
        if self.bins < 1:
            raise ValueError(f"bins must be at least 1, got {self.bins}")
        if self.repair and not self.check_fusion:
            raise ValueError("repair=true needs check_fusion=true")
        if self.budget and self.budget != "none":
            Budget.parse(self.budget)
        if not 0.0 <= self.smooth <= 1.0:
            raise ValueError(f"smooth must be in [0, 1], got {self.smooth}")
        if self.smooth_gain < 1.0:
            raise ValueError(f"smooth_gain must be at least 1, got {self.smooth_gain}")
        if self.budget_samples < 1:
            raise ValueError(f"budget_samples must be at least 1, got {self.budget_samples}")


@register_pass
class InsertQdqPass(GraphoptPass):
    name = "qdq-insert"
    Options = InsertQdqOptions
    # Quantization is lossy by design: an int8 rounding error of up to half a step per value
    # can move single elements arbitrarily far in relative terms (outputs near 0), so
    # elementwise bounds are off; what must hold is that the outputs keep their direction.
    # A cosine of 0.99 catches a broken scale, zero point, axis or layout (those give cosines
    # far below), while calibrated int8 on a trained net lands at 0.999+.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.99)
    needs = frozenset({"data"})
    min_opset = _MIN_OPSET  # per-axis DequantizeLinear
    constant_weights = True
    enters_subgraphs = True
    summary = "static int8 QDQ quantization placed for the target's integer kernels (calibrated)"
    _PAYS = acceptance.PAYS  # int8 must be at least 3% faster than float to be kept (guard)
    _TIME_NOTE_S = 5.0  # a run at least this long says where its time went

    #: what the last run quantized in the model: node name -> op type (set when it ends)
    quantized: dict[str, str]

    def required_opset(self, model: ir.Model) -> int:
        """Opset 13 where there is something to quantize (else no conversion is worth it)."""
        ops = set(self.options.op_types or DEFAULT_OPS) & (WEIGHTED | {"Gather"})
        return self.min_opset if any(n.op_type in ops for n in iter_nodes(model)) else 0

    def run(self, model: ir.Model) -> bool:
        opts = self.options
        target = opts.target if opts.target != "auto" else self.context.target
        scheme = int8_scheme("cuda" if target in ("cuda", "tensorrt") else "cpu")
        act_type = (
            scheme.activation_type if opts.activation_type == "auto" else opts.activation_type
        )
        reduce = scheme.reduce_range if opts.reduce_range == "auto" else opts.reduce_range == "true"
        run = QdqRun(
            scheme=scheme,
            act_type=act_type,
            qmax=63 if reduce else 127,
            op_types=frozenset(opts.op_types or default_ops(scheme.target)),
            exclude=frozenset(opts.exclude),
            per_channel=opts.per_channel,
            count=self.count,
            mark=self.mark,
        )
        self.details.update(
            {
                "target": scheme.target,
                "isa": scheme.isa,
                "activation_type": act_type,
                "weight_bits": 7 if reduce else 8,
                "why": scheme.why,
            }
        )
        try:
            return self._run(run, model)
        finally:
            self.quantized = run.quantized

    def _run(self, run: QdqRun, model: ir.Model) -> bool:
        opts = self.options
        graph = model.graph
        opset = ai_onnx_opset(model)
        fill_types(model)  # which tensors are float decides what is calibrated
        planned = plan_model(run, model, set(run.exclude)).nodes
        if not planned:
            kept_before = {n.name for n in iter_nodes(model) if KEPT_FLOAT_KEY in n.metadata_props}
            why = nothing_to_quantize(model, sorted(run.op_types), kept_before)
            return self.decline(why)
        if opset < _MIN_OPSET:
            self.count("skipped:opset", len(planned))
            return self.decline(
                f"per-channel DequantizeLinear needs ai.onnx opset {_MIN_OPSET}, the model "
                f"is at {opset} (run convert-opset{{opset={_MIN_OPSET}}} first)"
            )
        samples = self.context.data
        if samples is None:
            raise DataError("qdq-insert needs calibration data (DATA)")
        lap = self._step_clock()
        every = plan_model(run, model, set(run.exclude), prune=False)
        names = calibration_tensors(every)
        unread: dict[str, str] = {}  # body tensors calibration could not read, and why
        if names:  # an embedding alone takes its table's parameters: nothing to calibrate
            run.ranges, empty = activation_ranges(
                model,
                samples,
                names,
                bins=opts.bins,
                calibration=opts.calibration,
                symmetric=run.act_type == "int8",
                cache=self.context.calib_cache,
                softmax_inputs=softmax_inputs(every),
                unread=unread,
            )
            if unread:  # those stay float: say where and why
                self.details["subgraphs_not_calibrated"] = unread
                self.count("kept_float:body_not_calibrated", len(unread))
            if empty:  # nothing finite to scale: such tensors stay float
                self.details["no_finite_values"] = empty
                self.count("kept_float:no_finite_values", len(empty))
        run.bad = {n for n in names if n not in run.ranges}  # not float, or nothing finite
        if run.scheme.target == "cpu":  # for fuse-qdq-sibling-matmuls: one GEMM, same integers
            self.count(
                "aligned_zero_points", align_sibling_zero_points(graph, run.ranges, run.act_type)
            )
        if opts.smooth > 0:
            smoothing = smoothing_scales(run, model, samples, opts.smooth, opts.smooth_gain)
            run.smooth = smoothing.scales
            self.details.update(smoothing.record)
        lap("calibration")
        unnamed = [node for node in iter_nodes(model) if not node.name]
        namer = Namer.for_model(model)
        for node in unnamed:  # trials and the final rewrite must agree on node names
            node.name = namer(f"{node.op_type}_q")
        budget_text = opts.budget or self.context.budget or FLOOR
        if budget_text == "none":
            budget_text = ""
        check = opts.check_fusion and run.scheme.target == "cpu"
        kept: dict[str, str] = {}  # node name -> why it stays float
        guard = opts.guard and run.scheme.target == "cpu"
        pristine = Pristine(model) if (check or budget_text or guard) else None
        if pristine is not None:
            trial = qdq_emit.trial(run, pristine, kept)
        if check:
            report = fusion.check_fusion(trial, run.quantized)
            self.details["fusion"] = report.summary()
            if opts.repair and report.unfused:
                kept.update(dict.fromkeys(report.unfused, "unfused"))
                for name in report.unfused:
                    self.count(f"repaired:{run.quantized[name]}")
                trial = qdq_emit.trial(run, pristine, kept)
                after = fusion.check_fusion(trial, run.quantized)
                self.details["fusion_after_repair"] = after.summary()
        lap("fusion check")
        timed: dict[str, str] | None = None  # what the guard's decision was timed with
        if guard:  # first: when int8 does not pay, the budget's search would be wasted
            assert pristine is not None
            before = dict(kept)
            pays = self._guard(run, model, pristine, kept, samples.feeds[0])
            lap("latency guard")
            if not pays:
                return self._declined_by_guard(unnamed)
            timed = dict(kept)
            if kept != before:  # only the anchors pay: the budget measures that plan
                trial = qdq_emit.trial(run, pristine, kept)
        if budget_text:
            assert pristine is not None
            budget = Budget.parse(budget_text)
            probe = acceptance.BudgetProbe.of(budget, model, samples, opts.budget_samples)
            self.details["budget"] = qdq_accept.apply_budget(run, probe, pristine, trial, kept)
            lap("budget search")
        if guard and kept != timed:  # the budget kept nodes float: time that plan again
            assert pristine is not None
            pays = self._guard(run, model, pristine, kept, samples.feeds[0])
            lap("latency guard")
            if not pays:
                return self._declined_by_guard(unnamed)
        stats_so_far = collections.Counter(self.stats)
        self.stats = collections.Counter()
        changed = qdq_emit.quantize(run, model, kept)
        for key, n in stats_so_far.items():
            if key.startswith(("repaired:", "kept_float:", "aligned_")):
                self.count(key, n)
        if check:
            final = fusion.check_fusion(model, run.quantized)
            self.details["fusion_final"] = final.summary()
            self.count("fused", len(final.fused))
            self.count("unfused", len(final.unfused))
        lap("rewrite")
        for g, scope in iter_scopes(model):  # where inside If/Loop bodies int8 went
            for node in g:
                if node.name in run.quantized:
                    self.count_scope(scope)
        found = {
            k: v
            for g in iter_graphs(model)
            for k, v in qdq_activations.forms(g, {**kept, **run.activation_why}).items()
        }
        if found:
            self.details["activations"] = found
        if kept:
            self.details["kept_float"] = kept
            for name, why in kept.items():
                self.findings.leave(name, why)
            for node in iter_nodes(model):  # recorded, so a second run does not redo it
                if node.name in kept:
                    node.metadata_props[KEPT_FLOAT_KEY] = kept[node.name]
                    changed = True
        return changed

    def render_notes(self) -> list[str]:
        """The int8 scheme, ORT's fusion, nodes kept float, the budget and the guard."""
        d, notes = self.details, []
        if "isa" in d:
            notes.append(
                f"target {d.get('target')} ({d['isa']}): {d['activation_type']} activations, "
                f"{d.get('weight_bits')}-bit weights — {d.get('why', '')}"
            )
        fusion_info = d.get("fusion_final") or d.get("fusion")
        if fusion_info:
            kernels = ", ".join(f"{k}×{n}" for k, n in fusion_info["integer_kernels"].items())
            notes.append(
                f"ONNX Runtime fuses {fusion_info['fused']} quantized nodes "
                f"({kernels or 'none'}); {fusion_info['unfused']} unfused"
            )
        if d.get("activations"):
            notes.append("activations: " + qdq_activations.summary(d["activations"]))
        notes.append(self.findings.left_alone_note("kept in float"))
        if d.get("no_finite_values"):
            empty = d["no_finite_values"]
            notes.append(
                f"{len(empty)} tensor(s) held no finite value on DATA (a -inf mask, or an If "
                f"branch DATA never took) and stay float: {', '.join(empty[:3])}"
                f"{' ...' if len(empty) > 3 else ''}"
            )
        if d.get("subgraphs_not_calibrated"):
            unread = d["subgraphs_not_calibrated"]
            first = next(iter(unread))
            notes.append(
                f"{len(unread)} tensor(s) inside If/Loop/Scan bodies could not be calibrated and "
                f"stay float: '{first}': {unread[first]}"
            )
        notes += self.subgraph_notes("quantized")
        notes.append(acceptance.budget_note(d.get("budget"), "quantized_all", "all int8"))
        guard = d.get("guard")
        if guard and "decision" in guard and not guard["decision"].startswith("float"):
            # (a float decision declines the pass, which says so itself)
            timing = guard.get("all", {})
            notes.append(
                f"latency guard: {guard['decision']} (int8 {timing.get('int8_ms', 0):.3g} ms vs "
                f"float {timing.get('float_ms', 0):.3g} ms on DATA's first feed)"
            )
        seconds = d.get("seconds", {})
        if sum(seconds.values()) >= self._TIME_NOTE_S:  # where a long run spent its time
            notes.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        return [n for n in notes if n]

    def _step_clock(self) -> Callable[[str], None]:
        """``lap(step)`` adds the seconds since the last lap to ``details["seconds"][step]``:
        the report says where a long run went (the budget search, the guard, calibration)."""
        seconds = self.details.setdefault("seconds", {})
        last = [time.perf_counter()]

        def lap(step: str) -> None:
            now = time.perf_counter()
            seconds[step] = round(seconds.get(step, 0.0) + now - last[0], 3)
            last[0] = now

        return lap

    def _guard(
        self, run: QdqRun, model: ir.Model, pristine: Pristine, kept: dict[str, str], feed: dict
    ) -> bool:
        """The latency guard (:func:`.qdq_accept.latency_guard`), recorded under "guard"."""
        pays, self.details["guard"] = qdq_accept.latency_guard(
            run, model, pristine, kept, feed, self._PAYS
        )
        return pays

    def _declined_by_guard(self, unnamed: list[ir.Node]) -> bool:
        for node in unnamed:  # the model stays as it was, names included
            node.name = ""
        timing = self.details["guard"].get("all", {})
        return self.decline(
            "latency guard: int8 is not faster than float on this CPU "
            f"({timing.get('int8_ms', 0):.3g} ms vs {timing.get('float_ms', 0):.3g} ms"
            " on DATA's first feed); the model stays float (guard=false forces int8)"
        )
