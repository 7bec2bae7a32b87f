"""qdq-insert: static post-training int8 quantization in QDQ form, placed for the target.

What it quantizes (``op_types``):

* **anchors**, the ops int8 is for: ``Conv``, ``Gemm`` and ``MatMul`` with a constant weight
  (per-channel symmetric int8 weights, an int32 bias with scale ``s_x * s_w``), ``MatMul``
  of two activations (attention), and ``Gather`` from a constant table (embeddings: an int8
  table, the gathered rows stay int8 until a DequantizeLinear);
* **integer-region ops** (``Add``, ``Mul``, ``Concat``, pooling, ``Softmax``/``Sigmoid``/
  ``LeakyRelu`` and data movement such as ``Reshape``/``Transpose``/``MaxPool``/``Resize``):
  only where *every* activation input already comes out of a quantized node and *every*
  consumer is quantized too. Elsewhere a Q/DQ pair would cost a conversion and buy nothing.
  Data-movement ops share their input's scale and zero point (ONNX Runtime drops the Q/DQ
  around them only when they are equal).

Placement follows what ONNX Runtime's CPU EP fuses: a Conv's output is always quantized
(``QLinearConv`` needs it); a Gemm/MatMul's output only if all its consumers are quantized
(otherwise ``QGemm``/``MatMulIntegerToFloat`` produce float directly); a ``Relu`` (or ``Clip``)
right after a quantized op is absorbed: its output is the one quantized, and with asymmetric
uint8 its zero point is 0, so ONNX Runtime removes it. A quantized tensor that is a graph
output keeps its name on the DequantizeLinear output.

Types follow the target (``target=auto|cpu|cuda``, :mod:`graphopt.target`): uint8 activations
and int8 weights on x86, 7-bit weights where the CPU has no VNNI, symmetric int8 on ARM and
CUDA. After insertion (``check_fusion``, CPU only) it builds an ONNX Runtime session, reads the
optimized graph back, and lists which quantized nodes became integer kernels; with ``repair``
the unfused ones get their float inputs and weights back, so they never pay for Q/DQ.

Activation ranges come from one streamed calibration run (:mod:`graphopt.calib`). Per-axis
DequantizeLinear needs ai.onnx opset 13; older models are left alone (stat ``skipped:opset``).
Nodes that already read a DequantizeLinear are skipped, so a second run changes nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize import fusion
from graphopt.passes.quantize._emit import Namer, add_initializer

from graphopt import runtime
from graphopt.budget import Budget
from graphopt.calib import collect_stats, compute_ranges
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError
from graphopt.ir import Pristine, ai_onnx_opset, fill_types, nodes_in_subgraphs
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const
from graphopt.target import int8_scheme

_MIN_OPSET = 13
#: node metadata: why qdq-insert left this node in float (unfused, sensitivity, cost)
KEPT_FLOAT_KEY = "pkg.graphopt.qdq-insert.kept_float"
_FLOAT = frozenset({ir.DataType.FLOAT})  # TODO: float16 models (scales in float16)

WEIGHTED = frozenset({"Conv", "Gemm", "MatMul"})
#: ops whose output ONNX Runtime requantizes with their own (calibrated) scale
REQUANT = frozenset(
    {"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Softmax", "Sigmoid", "LeakyRelu"}
)
#: data movement: output scale and zero point = input's (ORT drops the DQ/Q around them)
SHARED = frozenset(
    {
        "MaxPool",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Slice",
        "Resize",
        "Expand",
        "Tile",
        "Gather",
    }
)
SUPPORTED = WEIGHTED | REQUANT | SHARED
DEFAULT_OPS = sorted(SUPPORTED - {"Softmax", "Sigmoid", "LeakyRelu"})
_ABSORBED = frozenset({"Relu", "Clip"})
#: ops of a model some quantizer already made integer (ORT's dynamic quantizer, QOperator)
_INTEGER_OPS = frozenset(
    {
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
    }
)


def _progress(items: list[str], what: str) -> Iterable[str]:
    """A rich progress bar on a terminal, plain iteration elsewhere."""
    import sys

    if not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=f"qdq-insert {what}", console=None, transient=True)


_MIN_EMBEDDING = 1024  # a Gather table smaller than this is not worth an int8 copy
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
        [], "op types to quantize; empty: all but Softmax/Sigmoid/LeakyRelu (see module doc)"
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


def _from_dq(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def activation_qparams(lo: float, hi: float, activation_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point uint8/int8) of a per-tensor range containing 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if activation_type == "int8":
        t = max(-lo, hi)
        scale = t / 127.0 if t > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zp, np.uint8)


def quantize_weight(
    w: np.ndarray, axis: int | None, qmax: int = 127
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 (q, scale) in [-qmax, qmax]: per ``axis`` or per tensor (``axis`` None)."""
    w64 = w.astype(np.float64)
    if axis is None:
        amax = np.array(np.max(np.abs(w64)) if w64.size else 0.0)
        shaped = amax
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w64), axis=others) if w64.size else np.zeros(w.shape[axis])
        shaped = amax.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    s = np.where(shaped > 0, shaped / qmax, 1.0).astype(np.float32).astype(np.float64)
    q = np.clip(np.rint(w64 / s), -qmax, qmax).astype(np.int8)
    return q, scale


def int8_matmul_error(x_range: float, x_mean_sq: np.ndarray, w: np.ndarray, qmax: int) -> float:
    """Expected squared output error of int8 ``x @ w``: per-tensor x, per-column w.

    Rounding errors are uniform and independent: x's step d = range / 255 adds
    d^2/12 * ||w||^2 over the outputs, column j's weight step e_j = max|w_j| / qmax adds
    e_j^2/12 * sum_k E[x_k^2]. Comparing it before and after smoothing (same outputs in
    float) tells whether smoothing pays.
    """
    d = x_range / 255.0
    act = d * d / 12.0 * float(np.sum(w * w))
    e = np.abs(w).max(axis=0) / qmax
    return act + float(np.sum(e * e)) / 12.0 * float(np.sum(x_mean_sq))


@dataclasses.dataclass
class _Plan:
    """What gets quantized: nodes by role, and the tensors that get a Q/DQ pair."""

    weighted: list[ir.Node]  # Conv/Gemm/MatMul with a constant weight
    act_matmul: list[ir.Node]  # MatMul of two activations
    embedding: list[ir.Node]  # Gather from a constant table
    region: list[ir.Node]  # REQUANT/SHARED ops inside an integer region
    absorbed: dict[ir.Node, ir.Node]  # Relu/Clip -> the quantized node it follows
    outputs: dict[ir.Node, ir.Value]  # quantized node -> its (effective) quantized output
    inputs: dict[ir.Node, list[int]]  # quantized node -> activation input indices to quantize

    @property
    def nodes(self) -> list[ir.Node]:
        return [*self.weighted, *self.act_matmul, *self.embedding, *self.region]


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
    summary = "static int8 QDQ quantization placed for the target's integer kernels (calibrated)"

    def required_opset(self, model: ir.Model) -> int:
        """Opset 13 where there is something to quantize (else no conversion is worth it)."""
        ops = set(self.options.op_types or DEFAULT_OPS) & (WEIGHTED | {"Gather"})
        return self.min_opset if any(n.op_type in ops for n in model.graph) else 0

    def run(self, model: ir.Model) -> bool:
        opts = self.options
        target = opts.target if opts.target != "auto" else self.context.target
        scheme = int8_scheme("cuda" if target in ("cuda", "tensorrt") else "cpu")
        self.act_type = (
            scheme.activation_type if opts.activation_type == "auto" else (opts.activation_type)
        )
        reduce = scheme.reduce_range if opts.reduce_range == "auto" else opts.reduce_range == "true"
        self.qmax = 63 if reduce else 127
        self.scheme = scheme
        self.details = {
            "target": scheme.target,
            "isa": scheme.isa,
            "activation_type": self.act_type,
            "weight_bits": 7 if reduce else 8,
            "why": scheme.why,
        }
        graph = model.graph
        opset = ai_onnx_opset(model)
        fill_types(model)  # which tensors are float decides what is calibrated
        self._bad: set[str] = set()
        self._excluded = set(opts.exclude)
        plan = self._plan(graph)
        if not plan.nodes:
            return self.decline(self._nothing_to_quantize(model))
        if opset < _MIN_OPSET:
            self.count("skipped:opset", len(plan.nodes))
            return self.decline(
                f"per-channel DequantizeLinear needs ai.onnx opset {_MIN_OPSET}, the model "
                f"is at {opset} (run convert-opset{{opset={_MIN_OPSET}}} first)"
            )
        samples = self.context.data
        if samples is None:
            raise DataError("qdq-insert needs calibration data (DATA)")
        names = self._calibration_tensors(graph)
        self._ranges = {}
        if names:  # an embedding alone takes its table's parameters: nothing to calibrate
            stats = collect_stats(model, samples, tensors=names, bins=opts.bins, progress=False)
            symmetric = self.act_type == "int8"
            self._ranges = compute_ranges(stats, opts.calibration, symmetric=symmetric)
        self._bad = {n for n in names if n not in self._ranges}  # not float at run time
        self._smooth: dict[str, tuple[np.ndarray, tuple[float, float]]] = {}
        if opts.smooth > 0:
            self._smooth = self._smoothing_scales(model, samples, opts.smooth)
        unnamed = [node for node in graph if not node.name]
        namer = Namer(graph)
        for node in unnamed:  # trials and the final rewrite must agree on node names
            node.name = namer(f"{node.op_type}_q")
        budget_text = opts.budget or self.context.budget or FLOOR
        if budget_text == "none":
            budget_text = ""
        check = opts.check_fusion and scheme.target == "cpu"
        kept: dict[str, str] = {}  # node name -> why it stays float
        guard = opts.guard and scheme.target == "cpu"
        pristine = Pristine(model) if (check or budget_text or guard) else None
        if pristine is not None:
            trial = self._trial(pristine, kept)
        if check:
            report = fusion.check_fusion(trial, self.quantized)
            self.details["fusion"] = report.summary()
            if opts.repair and report.unfused:
                kept.update(dict.fromkeys(report.unfused, "unfused"))
                for name in report.unfused:
                    self.count(f"repaired:{self.quantized[name]}")
                trial = self._trial(pristine, kept)
                after = fusion.check_fusion(trial, self.quantized)
                self.details["fusion_after_repair"] = after.summary()
        timed: dict[str, str] | None = None  # what the guard's decision was timed with
        if guard:  # first: when int8 does not pay, the budget's search would be wasted
            before = dict(kept)
            if not self._guard(model, pristine, kept, samples.feeds[0]):
                for node in unnamed:
                    node.name = ""
                return self._declined_by_guard()
            timed = dict(kept)
            if kept != before:  # only the anchors pay: the budget measures that plan
                trial = self._trial(pristine, kept)
        if budget_text:
            feeds = samples.feeds[: opts.budget_samples]
            ref = self._float_outputs(model, feeds)
            budget = Budget.parse(budget_text)
            self._apply_budget(budget, pristine, trial, kept, feeds, ref, samples)
        if guard and kept != timed:  # the budget kept nodes float: time that plan again
            if not self._guard(model, pristine, kept, samples.feeds[0]):
                for node in unnamed:
                    node.name = ""
                return self._declined_by_guard()
        stats_so_far = collections.Counter(self.stats)
        self.stats = collections.Counter()
        changed = self._quantize(model, kept)
        for key, n in stats_so_far.items():
            if key.startswith(("repaired:", "kept_float:")):
                self.count(key, n)
        if check:
            final = fusion.check_fusion(model, self.quantized)
            self.details["fusion_final"] = final.summary()
            self.count("fused", len(final.fused))
            self.count("unfused", len(final.unfused))
        if kept:
            self.details["kept_float"] = kept
            for node in graph:  # recorded in the model, so a second run does not redo it
                if node.name in kept:
                    node.metadata_props[KEPT_FLOAT_KEY] = kept[node.name]
                    changed = True
        return changed

    def _drop_empty_roi(self, node: ir.Node) -> None:
        """An empty constant ``roi`` becomes an omitted input (optional from opset 13).

        Opset 11-12 Resize needs a roi input, so exporters and the version converter write an
        empty tensor. With integer convolutions around it, ONNX Runtime 1.31's NHWC layout
        pass moves the (float) Resize, permutes roi with a Gather and fails on the empty
        tensor ("indices element out of data bounds"): ddddocr's converted detector.
        """
        roi = node.inputs[1] if len(node.inputs) > 1 else None
        arr = _const(roi)
        if arr is not None and arr.size == 0:
            node.replace_input_with(1, None)
            self.count("resize_empty_roi_dropped")

    def _nothing_to_quantize(self, model: ir.Model) -> str:
        """Why the plan is empty, in the words a user can act on."""
        graph = model.graph
        if any(_from_dq(v) for n in graph for v in n.inputs if v is not None):
            return "already quantized: the quantizable nodes read DequantizeLinear outputs"
        integer = sorted({n.op_type for n in graph if n.op_type in _INTEGER_OPS})
        if integer:
            return f"already quantized: the model computes in int8 ({', '.join(integer)})"
        ops = collections.Counter(n.op_type for n in graph if n.op_type in WEIGHTED)
        if not ops:
            inner = nodes_in_subgraphs(model, WEIGHTED)
            if inner:
                return (
                    f"no Conv, Gemm or MatMul in the main graph: its {inner} Conv/Gemm/MatMul "
                    "sit inside If/Loop bodies, which qdq-insert does not enter"
                )
            return (
                "no Conv, Gemm or MatMul: nothing int8 would speed up "
                f"(op_types: {', '.join(self.options.op_types or DEFAULT_OPS)})"
            )
        if any(n.name in self.quantizable_kept_float() for n in graph):
            return "every quantizable node was kept float by an earlier run"
        return (
            f"none of the {sum(ops.values())} Conv/Gemm/MatMul nodes has a float32 activation "
            "and a constant float32 weight it can quantize"
        )

    def quantizable_kept_float(self) -> set[str]:
        return set()

    def _quantize(self, model: ir.Model, kept: dict[str, str]) -> bool:
        """Plan with ``kept`` nodes excluded, then insert Q/DQ into ``model``."""
        self._excluded = set(self.options.exclude) | set(kept)
        plan = self._plan(model.graph)
        self._rewrite(model, plan, self._roots(plan), self._ranges)
        self._drop_replaced(model.graph)
        return bool(plan.nodes)

    def _trial(self, pristine: Pristine, kept: dict[str, str]) -> ir.Model:
        """A quantized copy of the float model with ``kept`` nodes in float."""
        copy = pristine.copy()
        self._quantize(copy, kept)
        return copy

    def _calibration_tensors(self, graph: ir.Graph) -> list[str]:
        """Every float tensor any plan (whatever stays float) may need a range for."""
        plan = self._plan(graph, prune=False)
        values = []
        for n in plan.nodes:
            values += [n.inputs[i] for i in plan.inputs[n]]
            if n not in plan.embedding:
                values += [n.outputs[0], plan.outputs.get(n)]
        # a tensor of unknown type is left out: without a range it simply stays float
        return sorted(
            {
                v.name
                for v in values
                if v is not None and v.name and v.dtype in _FLOAT and _const(v) is None
            }
        )

    # ----------------------------------------------------------------- selection
    def _allowed(self, node: ir.Node, op: str) -> bool:
        return (
            node.domain in ("", "ai.onnx")
            and node.op_type == op
            and op in (self.options.op_types or DEFAULT_OPS)
            and not (node.name and node.name in self._excluded)
        )

    @staticmethod
    def _float_act(v: ir.Value | None, bad: set[str]) -> bool:
        return (
            v is not None
            and bool(v.name)
            and v.name not in bad
            and _const(v) is None
            and (v.dtype is None or v.dtype in _FLOAT)
            and not _from_dq(v)
        )

    def _weighted_ok(self, node: ir.Node, bad: set[str]) -> bool:
        if len(node.inputs) < 2 or not self._float_act(node.inputs[0], bad):
            return False
        wa = _const(node.inputs[1])
        if wa is None or wa.dtype != np.float32 or _from_dq(node.inputs[1]):
            return False
        if node.op_type in ("Gemm", "MatMul") and wa.ndim != 2:
            return False
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            return False  # TODO: transposed activations
        return not (node.op_type == "Conv" and wa.ndim < 3)

    def _plan(self, graph: ir.Graph, prune: bool = True) -> _Plan:
        """Choose what to quantize; ``prune=False`` keeps every candidate (for calibration)."""
        bad = self._bad
        weighted, act_mm, emb, cand = [], [], [], []
        for node in graph:
            if (
                any(_from_dq(v) for v in node.inputs)
                or any(u.node.op_type == "QuantizeLinear" for o in node.outputs for u in o.uses())
                or KEPT_FLOAT_KEY in node.metadata_props
            ):
                continue  # already quantized, or an earlier run decided float (idempotence)
            op = node.op_type
            if op in WEIGHTED and self._allowed(node, op) and self._weighted_ok(node, bad):
                weighted.append(node)
            elif (
                op == "MatMul"
                and self._allowed(node, op)
                and len(node.inputs) == 2
                and all(self._float_act(v, bad) for v in node.inputs)
            ):
                act_mm.append(node)
            elif op == "Gather" and self._allowed(node, op) and self._is_embedding(node):
                emb.append(node)
            elif (op in REQUANT or op in SHARED) and self._allowed(node, op):
                cand.append(node)
        anchors = [*weighted, *act_mm, *emb]
        inputs: dict[ir.Node, list[int]] = {n: [0] for n in weighted}
        inputs.update({n: [0, 1] for n in act_mm})
        inputs.update({n: [] for n in emb})
        for n in cand:
            idx = list(range(len(n.inputs))) if n.op_type in ("Add", "Mul", "Concat") else [0]
            inputs[n] = idx

        absorbed: dict[ir.Node, ir.Node] = {}
        eff_out: dict[ir.Node, ir.Value] = {}
        for n in [*anchors, *cand]:
            y = n.outputs[0]
            uses = list(y.uses())
            if (
                (self.act_type == "uint8" or self.scheme.target == "cuda")
                and len(uses) == 1
                and not y.is_graph_output()
                and uses[0].node.op_type in _ABSORBED
                and uses[0].idx == 0
                and uses[0].node.graph is graph
                and n.op_type in (WEIGHTED | {"Add"})
                and self._clip_ok(uses[0].node)
            ):
                absorbed[uses[0].node] = n
                eff_out[n] = uses[0].node.outputs[0]
            else:
                eff_out[n] = y

        def source(v: ir.Value) -> ir.Node | None:
            p = v.producer()
            return absorbed.get(p, p) if p is not None else None

        members = set(anchors) | set(cand)
        # Conv has no float-output integer kernel; a Gemm/MatMul followed by an absorbed Relu
        # would otherwise become ORT's float FusedGemm/FusedMatMul on dequantized weights.
        always_out = {n for n in anchors if n.op_type in ("Conv", "Gather")}
        always_out |= {n for n in anchors if eff_out[n] is not n.outputs[0]}

        def consumers_in(n: ir.Node) -> bool:
            y = eff_out[n]
            uses = list(y.uses())
            return (
                bool(uses)
                and not y.is_graph_output()
                and all(u.node in members and u.node.graph is graph for u in uses)
            )

        def out_quantized(n: ir.Node) -> bool:
            return n in always_out or (n in members and consumers_in(n))

        changed = prune
        while changed:
            changed = False
            for n in cand:
                if n not in members:
                    continue
                ok = consumers_in(n)
                for i in inputs[n]:
                    v = n.inputs[i]
                    if not ok:
                        break
                    if v is None:
                        ok = n.op_type in ("Resize", "Slice")
                        continue
                    if _const(v) is not None:
                        ok = n.op_type in ("Add", "Mul", "Concat") and _const(v).dtype == np.float32
                        continue
                    src = source(v)
                    ok = (
                        src is not None
                        and src in members
                        and out_quantized(src)
                        and self._float_act(v, bad)
                    )
                if not ok:
                    members.discard(n)
                    changed = True
        region = [n for n in cand if n in members]
        if prune:
            outputs = {n: eff_out[n] for n in [*anchors, *region] if out_quantized(n)}
        else:
            outputs = {n: eff_out[n] for n in [*anchors, *region]}
        for relu in list(absorbed):
            if absorbed[relu] not in outputs:
                del absorbed[relu]
        return _Plan(weighted, act_mm, emb, region, absorbed, outputs, inputs)

    @staticmethod
    def _clip_ok(node: ir.Node) -> bool:
        if node.op_type == "Relu":
            return True
        lo = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        return lo is not None and lo.size == 1 and float(lo) == 0.0  # ReLU6-like: min 0

    @staticmethod
    def _is_embedding(node: ir.Node) -> bool:
        table = _const(node.inputs[0]) if node.inputs else None
        return (
            table is not None
            and table.dtype == np.float32
            and table.size >= _MIN_EMBEDDING
            and not _from_dq(node.inputs[0])
        )

    def _roots(self, plan: _Plan) -> dict[ir.Value, ir.Value]:
        """Each quantized activation tensor -> the tensor whose range gives its parameters.

        Embedding outputs are their own roots: their parameters are the table's, not
        calibrated.
        """
        roots: dict[ir.Value, ir.Value] = {}
        for n in plan.nodes:
            for i in plan.inputs[n]:
                v = n.inputs[i]
                if v is not None and _const(v) is None:
                    roots.setdefault(v, v)
        for n in plan.nodes:  # graph order: a shared op's input root is known before it
            y = plan.outputs.get(n)
            if y is None:
                continue
            if n.op_type in SHARED and n not in plan.embedding:
                x = n.inputs[0]
                assert x is not None
                roots[y] = roots.get(x, x)
            else:
                roots[y] = y
        return roots

    # ----------------------------------------------------------------- rewriting
    def _rewrite(
        self,
        model: ir.Model,
        plan: _Plan,
        roots: dict[ir.Value, ir.Value],
        ranges: dict[str, tuple[float, float]],
    ) -> None:
        graph = model.graph
        self._name = Namer(graph)
        self._qparams: dict[ir.Value, tuple[ir.Value, ir.Value]] = {}
        self._dq: dict[ir.Value, ir.Value] = {}  # float tensor -> its DequantizeLinear output
        self._replaced: list[ir.Value] = []  # float constants that int8 copies replaced
        self._emb = {n.name for n in plan.embedding}
        self.quantized: dict[str, str] = {}
        quantized_out = set(plan.outputs.values())

        def params(v: ir.Value) -> tuple[ir.Value, ir.Value] | None:
            root = roots.get(v, v)
            if root in self._qparams:
                return self._qparams[root]
            if root.name not in ranges:
                return None
            scale, zp = activation_qparams(*ranges[root.name], self.act_type)
            pair = (
                self._initializer(graph, f"{root.name}_scale", scale),
                self._initializer(graph, f"{root.name}_zero_point", zp),
            )
            self._qparams[root] = pair
            return pair

        self._apply_smoothing(graph, plan, quantized_out, ranges)
        # 0. embedding tables: int8 copies; the gathered rows keep the table's parameters
        for n in plan.embedding:
            table = n.inputs[0]
            assert table is not None
            dq, pair = self._table_dq(graph, n, table)
            n.replace_input_with(0, dq)
            self._replaced.append(table)
            self._qparams[plan.outputs[n]] = pair
            self.count("quantized:Gather(embedding)")
        # 1. outputs of quantized nodes: every reader goes through the Q/DQ pair
        for y in plan.outputs.values():
            p = params(y)
            if p is not None:
                self._qdq(graph, y, p, readers=None)
        # 2. activation inputs from the float world: only quantized readers switch over
        dq_outputs = set(self._dq.values())
        for n in plan.nodes:
            self._ensure_name(n)
            for i in plan.inputs[n]:
                v = n.inputs[i]
                if v is None or v in dq_outputs:
                    continue
                if _const(v) is not None:
                    self._replaced.append(v)
                    dq = self._const_dq(graph, n, v)
                elif v in self._dq:
                    dq = self._dq[v]
                else:
                    p = params(v)
                    assert p is not None and v not in quantized_out
                    dq = self._qdq(graph, v, p, readers=[])
                dq_outputs.add(dq)
                n.replace_input_with(i, dq)
        # 3. weights, bias and embedding tables
        wdq_of: dict[tuple[int, int | None], ir.Value] = {}
        for n in plan.weighted:
            w = n.inputs[1]
            assert w is not None
            axis = self._weight_axis(n) if self.options.per_channel else None
            key = (id(w), axis)
            if key not in wdq_of:
                wdq_of[key] = self._weight_dq(graph, n, w, axis)
            n.replace_input_with(1, wdq_of[key])
            self._replaced.append(w)
            self._bias(graph, n)
            self.count(f"quantized:{n.op_type}")
        self.count("quantized:MatMul(activations)", len(plan.act_matmul))
        for n in plan.act_matmul:
            self._fold_scalar(graph, n)
        for n in plan.region:
            self.count(f"quantized:{n.op_type}")
        for n in plan.nodes:
            self.quantized[n.name] = n.op_type  # type: ignore[index]
        for n in graph:
            if n.op_type == "Resize" and n.domain in ("", "ai.onnx"):
                self._drop_empty_roi(n)
        self.count("relu_absorbed", len(plan.absorbed))

    # ------------------------------------------------------------ smoothing
    def _smoothing_scales(
        self, model: ir.Model, samples: object, alpha: float
    ) -> dict[str, tuple[np.ndarray, tuple[float, float]]]:
        """Per MatMul input x: s_k = max|x_k|^a / max|W_k|^(1-a) over the MatMuls reading x.

        x / s has flatter channels (easier per-tensor activation quantization), W * s takes
        the outliers into rows that per-channel weight quantization absorbs (SmoothQuant).
        Also returns the exact range of x / s, derived from per-channel min and max.

        An input is smoothed only where that cuts the estimated int8 output error (see
        :func:`int8_matmul_error`) by more than ``smooth_gain``: each Mul it costs is ~1% of a
        transformer's int8 latency, and channels without outliers gain little.
        """
        from graphopt.calib.collect import augmented_session

        plan = self._plan(model.graph, prune=False)
        groups: dict[str, list[np.ndarray]] = {}
        for n in plan.weighted:
            x = n.inputs[0]
            w = _const(n.inputs[1])
            if n.op_type == "MatMul" and x is not None and x.name and w is not None and w.ndim == 2:
                groups.setdefault(x.name, []).append(w)
        if not groups:
            return {}
        names = sorted(groups)
        lo: dict[str, Any] = {k: None for k in names}
        hi: dict[str, Any] = {k: None for k in names}
        sq: dict[str, Any] = {k: 0.0 for k in names}
        rows = dict.fromkeys(names, 0)
        with augmented_session(model, names) as sess:
            for i, feed in enumerate(samples.feeds):  # type: ignore[attr-defined]
                outs = runtime.run_checked(sess, names, feed, f"calibration feed {i}")
                for name, arr in zip(names, outs, strict=True):
                    flat = np.asarray(arr, np.float64).reshape(-1, arr.shape[-1])
                    mn, mx = flat.min(axis=0), flat.max(axis=0)
                    lo[name] = mn if lo[name] is None else np.minimum(lo[name], mn)
                    hi[name] = mx if hi[name] is None else np.maximum(hi[name], mx)
                    sq[name] = sq[name] + np.einsum("ij,ij->j", flat, flat)
                    rows[name] += flat.shape[0]
        out = {}
        gains: dict[str, float] = {}
        for name in names:
            ws = [w.astype(np.float64) for w in groups[name]]
            w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in ws]), axis=0)
            x_max = np.maximum(np.abs(lo[name]), np.abs(hi[name]))
            if w_max.shape != x_max.shape:
                continue
            scale = np.where(
                (x_max > 0) & (w_max > 0),
                x_max**alpha / np.maximum(w_max, 1e-12) ** (1 - alpha),
                1.0,
            )
            scale = np.clip(scale, 1e-4, 1e4)
            rng = (float(np.min(lo[name] / scale)), float(np.max(hi[name] / scale)))
            mean_sq = sq[name] / max(rows[name], 1)
            before = sum(
                int8_matmul_error(float(hi[name].max() - lo[name].min()), mean_sq, w, self.qmax)
                for w in ws
            )
            after = sum(
                int8_matmul_error(
                    rng[1] - rng[0], mean_sq / scale**2, w * scale[:, None], self.qmax
                )
                for w in ws
            )
            gains[name] = before / after if after > 0 else 1.0
            if gains[name] > self.options.smooth_gain:
                out[name] = (scale.astype(np.float32), rng)
        self.details["smoothed_inputs"] = len(out)
        self.details["smoothing_not_worth_it"] = len(gains) - len(out)
        if gains:
            self.details["smoothing_error_gain"] = {
                "min": round(min(gains.values()), 3),
                "median": round(float(np.median(list(gains.values()))), 3),
                "max": round(max(gains.values()), 3),
            }
        return out

    def _apply_smoothing(
        self,
        graph: ir.Graph,
        plan: _Plan,
        quantized_out: set[ir.Value],
        ranges: dict[str, tuple[float, float]],
    ) -> None:
        """x -> Mul(x, 1/s) for the quantized MatMuls reading x; their weights become W * s."""
        readers: dict[ir.Value, list[ir.Node]] = {}
        for n in plan.weighted:
            x = n.inputs[0]
            if n.op_type == "MatMul" and x is not None and x.name in self._smooth:
                if x not in quantized_out:
                    readers.setdefault(x, []).append(n)
        for x, nodes in readers.items():
            scale, rng = self._smooth[x.name]  # type: ignore[index]
            inv = self._initializer(graph, f"{x.name}_smooth_inv", (1.0 / scale).astype(np.float32))
            mul = self.mark(ir.Node("", "Mul", [x, inv], name=self._name(f"{x.name}_smooth")))
            y = mul.outputs[0]
            y.name = self._name(f"{x.name}_smoothed")
            y.dtype, y.shape = x.dtype, x.shape
            producer = x.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, [mul])
            else:
                graph.insert_before(next(iter(graph)), [mul])
            ranges[y.name] = rng  # type: ignore[index]
            scaled: dict[int, ir.Value] = {}
            for n in nodes:
                w = n.inputs[1]
                assert w is not None
                if id(w) not in scaled:
                    wa = _const(w)
                    assert wa is not None
                    new = (wa.astype(np.float64) * scale[:, None]).astype(np.float32)
                    scaled[id(w)] = self._initializer(graph, f"{w.name}_smoothed", new)
                    self._replaced.append(w)
                n.replace_input_with(0, y)
                n.replace_input_with(1, scaled[id(w)])
            self.count("smoothed_matmuls", len(nodes))

    def _fold_scalar(self, graph: ir.Graph, mm: ir.Node) -> None:
        """MatMul(DQ(a), DQ(b)) / c  ->  MatMul(DQ(a, s_a / c), DQ(b)): one op less.

        Attention divides its scores by sqrt(head_dim) right after Q.K^T; in int8 that
        constant belongs in the dequantization scale (exact for powers of two, one float
        rounding of the scale otherwise), and ORT's integer kernel applies it for free.
        """
        y = mm.outputs[0]
        uses = list(y.uses())
        if len(uses) != 1 or y.is_graph_output() or uses[0].idx != 0:
            return
        op = uses[0].node
        if op.op_type not in ("Div", "Mul") or op.domain not in ("", "ai.onnx"):
            return
        c = _const(op.inputs[1]) if len(op.inputs) == 2 else None
        if op.graph is not graph or op.outputs[0].is_graph_output() or c is None or c.size != 1:
            return
        c64 = float(np.asarray(c, np.float64).reshape(()))
        if not np.isfinite(c64) or c64 == 0.0:
            return
        dq = mm.inputs[0].producer() if mm.inputs[0] is not None else None
        scale = (
            _const(dq.inputs[1]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        )
        if dq is None or scale is None or scale.size != 1:
            return
        factor = 1.0 / c64 if op.op_type == "Div" else c64
        new_scale = np.asarray(float(scale.reshape(())) * factor, np.float32)
        s = self._initializer(graph, f"{mm.name}_a_scale", new_scale)
        base = f"{mm.name}_a"
        shape = dq.outputs[0].shape
        out = self._dequantize(graph, mm, dq.inputs[0], s, dq.inputs[2], None, base, shape)
        mm.replace_input_with(0, out)
        if not list(dq.outputs[0].uses()) and not dq.outputs[0].is_graph_output():
            graph.remove(dq, safe=True)
        ir.convenience.replace_all_uses_with(op.outputs[0], y)
        graph.remove(op, safe=True)
        self.count(f"folded_scalar_{op.op_type}")

    def _ensure_name(self, node: ir.Node) -> None:
        if not node.name:
            node.name = self._name(f"{node.op_type}_q")

    def _qdq(
        self,
        graph: ir.Graph,
        x: ir.Value,
        pair: tuple[ir.Value, ir.Value],
        readers: list | None,
    ) -> ir.Value:
        """Q/DQ on ``x``; ``readers`` None: all readers (and a graph output) switch to DQ."""
        assert x.name is not None
        s, z = pair
        base = x.name
        q = self.mark(ir.Node("", "QuantizeLinear", [x, s, z], name=self._name(f"{base}_Q")))
        q.outputs[0].name = self._name(f"{base}_quantized")
        q.outputs[0].dtype = z.dtype
        q.outputs[0].shape = x.shape
        dq = self.mark(
            ir.Node("", "DequantizeLinear", [q.outputs[0], s, z], name=self._name(f"{base}_DQ"))
        )
        out = dq.outputs[0]
        out.dtype = ir.DataType.FLOAT
        out.shape = x.shape
        if readers is None:
            for use in list(x.uses()):
                if use.node is not q:
                    use.node.replace_input_with(use.idx, out)
            if x.is_graph_output():
                # the graph output keeps its name, now on the DequantizeLinear output
                idx = [i for i, o in enumerate(graph.outputs) if o is x]
                old = x.name
                x.name = self._name(f"{old}_float")
                out.name = old
                for i in idx:
                    graph.outputs[i] = out
            else:
                out.name = self._name(f"{base}_dequantized")
        else:
            out.name = self._name(f"{base}_dequantized")
        producer = x.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, [q, dq])
        else:
            graph.insert_before(next(iter(graph)), [q, dq])
        self._dq[x] = out
        self.count("qdq_pairs")
        return out

    def _const_dq(self, graph: ir.Graph, node: ir.Node, v: ir.Value) -> ir.Value:
        """A constant input of Add/Mul/Concat: per-tensor quantized like an activation."""
        if v in self._dq:
            return self._dq[v]
        a = _const(v)
        assert a is not None
        scale, zp = activation_qparams(
            float(a.min(initial=0)), float(a.max(initial=0)), self.act_type
        )
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(a.astype(np.float64) / float(scale)) + int(zp), info.min, info.max)
        qv = self._initializer(graph, f"{v.name}_quantized", q.astype(zp.dtype))
        sv = self._initializer(graph, f"{v.name}_scale", scale)
        zv = self._initializer(graph, f"{v.name}_zero_point", zp)
        out = self._dequantize(graph, node, qv, sv, zv, None, v.name or "const", a.shape)
        self._dq[v] = out
        return out

    def _dequantize(
        self,
        graph: ir.Graph,
        before: ir.Node,
        q: ir.Value,
        s: ir.Value,
        z: ir.Value,
        axis: int | None,
        base: str,
        shape: Iterable[int] | None,
    ) -> ir.Value:
        attrs = [] if axis is None else [ir.AttrInt64("axis", axis)]
        dq = self.mark(
            ir.Node(
                "", "DequantizeLinear", [q, s, z], attributes=attrs, name=self._name(f"{base}_DQ")
            )
        )
        dq.outputs[0].name = self._name(f"{base}_dequantized")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(list(shape)) if shape is not None else None
        graph.insert_before(before, [dq])
        return dq.outputs[0]

    @staticmethod
    def _weight_axis(node: ir.Node) -> int:
        if node.op_type == "Conv":
            return 0
        if node.op_type == "Gemm":
            return 0 if _attr(node, "transB", 0) else 1
        return 1  # MatMul, W is [K, N]

    def _weight_dq(
        self, graph: ir.Graph, first: ir.Node, w: ir.Value, axis: int | None
    ) -> ir.Value:
        wa = _const(w)
        assert wa is not None
        base = w.name or "weight"
        q, scale = quantize_weight(wa, axis, self.qmax)
        qv = self._initializer(graph, f"{base}_quantized", q)
        sv = self._initializer(graph, f"{base}_scale", scale)
        zv = self._initializer(graph, f"{base}_zero_point", np.zeros(scale.shape, np.int8))
        self.count("weights_quantized")
        return self._dequantize(graph, first, qv, sv, zv, axis, base, wa.shape)

    def _bias(self, graph: ir.Graph, node: ir.Node) -> None:
        """Conv/Gemm bias -> int32 with scale s_x * s_w, the scale of the int32 accumulator."""
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
            return
        b = _const(node.inputs[2])
        if b is None or b.dtype != np.float32 or b.ndim != 1:
            return
        if node.op_type == "Gemm" and (
            _attr(node, "beta", 1.0) != 1.0 or _attr(node, "alpha", 1.0) != 1.0
        ):
            return
        x_dq, w_dq = node.inputs[0].producer(), node.inputs[1].producer()  # type: ignore[union-attr]
        assert x_dq is not None and w_dq is not None
        sx = float(_const(x_dq.inputs[1]))  # type: ignore[arg-type]
        sw = _const(w_dq.inputs[1])
        assert sw is not None
        scale = (sx * sw.astype(np.float64)).astype(np.float32)
        if scale.ndim == 0:
            scale = np.full(b.shape, scale, np.float32)
        if scale.shape != b.shape:
            return
        safe = np.where(scale > 0, scale, 1.0).astype(np.float64)
        q = np.clip(np.rint(b.astype(np.float64) / safe), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.inputs[2].name or "bias"  # type: ignore[union-attr]
        qv = self._initializer(graph, f"{base}_quantized", q)
        sv = self._initializer(graph, f"{base}_scale", scale)
        zv = self._initializer(graph, f"{base}_zero_point", np.zeros(b.shape, np.int32))
        old = node.inputs[2]
        assert old is not None
        node.replace_input_with(2, self._dequantize(graph, node, qv, sv, zv, 0, base, b.shape))
        self._replaced.append(old)
        self.count("bias_int32")

    def _table_dq(
        self, graph: ir.Graph, node: ir.Node, table: ir.Value
    ) -> tuple[ir.Value, tuple[ir.Value, ir.Value]]:
        a = _const(table)
        assert a is not None
        base = table.name or "table"
        if self.act_type == "uint8":
            scale, zp = activation_qparams(float(a.min()), float(a.max()), "uint8")
            q = np.clip(np.rint(a.astype(np.float64) / float(scale)) + int(zp), 0, 255)
            q = q.astype(np.uint8)
        else:
            q, scale = quantize_weight(a, None, 127)
            zp = np.array(0, np.int8)
        qv = self._initializer(graph, f"{base}_quantized", q)
        sv = self._initializer(graph, f"{base}_scale", np.asarray(scale, np.float32))
        zv = self._initializer(graph, f"{base}_zero_point", zp)
        self.count("weights_quantized")
        return self._dequantize(graph, node, qv, sv, zv, None, base, a.shape), (sv, zv)

    def _drop_replaced(self, graph: ir.Graph) -> None:
        """Float constants that their int8 copies made unused leave the model."""
        for v in self._replaced:
            if v.name in graph.initializers and not v.uses() and not v.is_graph_output():
                graph.initializers.pop(v.name)

    # ------------------------------------------------------------ latency guard
    _PAYS = 0.97  # int8 must be at least 3% faster than float to be kept

    def _guard(self, model: ir.Model, pristine: Pristine, kept: dict[str, str], feed: dict) -> bool:
        """Never slower than fp32: time the plan against the float model on this CPU.

        If the whole plan does not pay, try it without the integer-region ops (Add, Concat,
        pooling, data movement: only Conv/Gemm/MatMul/Gather); if that does not pay either,
        the model stays float. Returns False in that last case. Timing is interleaved
        round-robin and compared round by round.
        """
        float_sess = runtime.make_session(model, optimize=True)
        info: dict[str, object] = {"threshold": self._PAYS}
        self.details["guard"] = info
        ops = dict(self.quantized)
        region = {k: "cost" for k, op in ops.items() if op in REQUANT | SHARED}
        for label, extra in (("all", {}), ("anchors only", region)):
            trial = self._trial(pristine, {**kept, **extra})
            rounds = runtime.interleaved_latency(
                [float_sess, runtime.make_session(trial, optimize=True)], feed
            )
            ratio = float(np.median([q / f for f, q in rounds]))
            info[label] = {
                "float_ms": 1e3 * float(np.median([r[0] for r in rounds])),
                "int8_ms": 1e3 * float(np.median([r[1] for r in rounds])),
                "ratio": ratio,
            }
            if ratio < self._PAYS:
                info["decision"] = label
                for name in extra:
                    kept.setdefault(name, "cost")
                    self.count(f"kept_float:{ops[name]}")
                return True
            if not region:
                break
        info["decision"] = "float: int8 does not pay on this CPU"
        self.count("guard:model_kept_float")
        return False

    def _declined_by_guard(self) -> bool:
        timing = self.details["guard"].get("all", {})
        return self.decline(
            "latency guard: int8 is not faster than float on this CPU "
            f"({timing.get('int8_ms', 0):.3g} ms vs {timing.get('float_ms', 0):.3g} ms"
            " on DATA's first feed); the model stays float (guard=false forces int8)"
        )

    # ------------------------------------------------------------ accuracy budget
    def _float_outputs(self, model: ir.Model, feeds: list[dict]) -> list[list[np.ndarray]]:
        sess = runtime.make_session(model, optimize=False)
        return runtime.run_feeds(sess, feeds)

    @staticmethod
    def _measure(budget: Budget, model: ir.Model, feeds: list, ref: list, samples: object) -> float:
        sess = runtime.make_session(model, optimize=True)  # as deployed: fused kernels
        return budget.measure(ref, runtime.run_feeds(sess, feeds), samples)

    def _apply_budget(
        self,
        budget: Budget,
        pristine: Pristine,
        quantized: ir.Model,
        kept: dict[str, str],
        feeds: list[dict],
        ref: list,
        samples: object,
    ) -> None:
        """Keep the most sensitive nodes in float until ``budget`` holds.

        A node's sensitivity is how much the metric recovers when that node alone stays in
        float (a fresh plan without it, so upstream outputs that were quantized only for it
        go back to float too), measured with one ONNX Runtime session per candidate. Nodes
        then go back to float greedily, most sensitive first, re-measuring after each one,
        until the budget holds. Data movement ops follow their neighbours and are not
        candidates.
        """
        start = self._measure(budget, quantized, feeds, ref, samples)
        info: dict[str, object] = {"budget": str(budget), "quantized_all": start}
        self.details["budget"] = info
        if budget.holds(start):
            info["final"], info["met"] = start, True
            return
        sign = 1.0 if budget.op == ">=" else -1.0
        candidates = [k for k, op in self.quantized.items() if op not in SHARED or k in self._emb]
        ops = dict(self.quantized)
        gains: dict[str, float] = {}
        for name in _progress(candidates, "sensitivity"):
            trial = self._trial(pristine, {**kept, name: "sensitivity"})
            gains[name] = sign * (self._measure(budget, trial, feeds, ref, samples) - start)
        order = sorted(candidates, key=lambda k: -gains[k])
        info["sensitivity"] = {k: gains[k] for k in order[:20]}
        chosen: list[str] = []
        value = start
        for name in order:
            kept[name] = "sensitivity"
            chosen.append(name)
            self.count(f"kept_float:{ops[name]}")
            value = self._measure(budget, self._trial(pristine, kept), feeds, ref, samples)
            if budget.holds(value):
                break
        info.update(final=value, kept_float=chosen, met=budget.holds(value))

    # ----------------------------------------------------------------- naming
    def _initializer(self, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, self._name(base), array)
