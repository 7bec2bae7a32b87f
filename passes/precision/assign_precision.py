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
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.precision import capability
from graphopt.passes.quantize._emit import Namer

from graphopt import runtime
from graphopt.budget import Budget
from graphopt.calib import collect_stats
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import RuntimeFailure
from graphopt.ir import Pristine, fill_types

#: node metadata: the precision this pass chose ("float16", "bfloat16", "fp32:<reason>", "cast")
PRECISION_KEY = "pkg.graphopt.assign-precision"
FP16_MAX = 65504.0
FP16_MIN_SUBNORMAL = 2.0**-24
REASONS = ("range", "unsupported", "sensitivity", "cost", "int8")
_LOW = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
_SHORT = {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}
_PAYS = 0.97  # a lower precision must be at least 3 % faster than float32 to be kept (auto)
_MAX_REPAIRS = 20
_NODE_IN_ERROR = re.compile(r"node with name '([^']*)'")
#: ops that only move data: no arithmetic, so no sensitivity of their own
_MOVEMENT = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Slice",
        "Gather",
        "Concat",
        "Split",
        "Expand",
        "Tile",
        "Identity",
        "Shape",
        "Cast",
        "Constant",
        "ConstantOfShape",
        "MaxPool",
    }
)


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


@dataclasses.dataclass
class _Node:
    """One main-graph node's analysis: which ports change type when it runs low."""

    index: int
    label: str
    op_type: str
    ins: list[bool]
    outs: list[bool]


_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _dequantized(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def _label(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def _to_low(array: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    if dtype == ir.DataType.FLOAT16:
        return array.astype(np.float16)
    import ml_dtypes

    return array.astype(ml_dtypes.bfloat16)


def _out_of_range(array: np.ndarray, dtype: ir.DataType, headroom: float = 1.0) -> str:
    """Why ``array`` cannot be stored in ``dtype`` ('' if it can)."""
    if dtype != ir.DataType.FLOAT16 or array.size == 0:
        return ""
    a = np.abs(array[np.isfinite(array)].astype(np.float64))
    if a.size == 0:
        return ""
    amax = float(a.max())
    if amax * headroom > FP16_MAX:
        return f"|max| {amax:.4g} > fp16 max {FP16_MAX:g}" + (
            f" / headroom {headroom:g}" if headroom != 1.0 else ""
        )
    nonzero = a[a > 0]
    if nonzero.size and float(np.mean(nonzero < FP16_MIN_SUBNORMAL)) > 0.5:
        return "most non-zero values underflow to 0 in fp16"
    return ""


def _infer_types(model: ir.Model) -> None:
    """Which ports may change type is decided from the values' types, so an exported model
    without value_info (types of intermediate tensors unknown) is typed first."""
    fill_types(model)


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
        self.ep = self.context.target if self.context.target in runtime.EP_NAMES else "cpu"
        self.provider = runtime.EP_NAMES[self.ep]
        self.opsets = dict(model.opset_imports)
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 1))
        nodes = list(model.graph)
        undecided = [i for i, n in enumerate(nodes) if PRECISION_KEY not in n.metadata_props]
        if not undecided:
            return self.decline("every node's precision was decided by an earlier run")
        _infer_types(model)
        self.kept: dict[str, tuple[str, str]] = {}  # label -> (reason, why)
        pristine = Pristine(model)
        self.details = {"ep": self.provider, "target": opts.target}
        probe_ok = self._can_probe()
        if opts.require_kernels and not probe_ok:
            self.details["kernels"] = f"not probed: {self.provider} is not available here"
        formats = [_LOW[opts.target]] if opts.target != "auto" else list(_LOW.values())
        plans: dict[ir.DataType, dict[int, _Node]] = {}
        kept_by: dict[ir.DataType, dict[str, tuple[str, str]]] = {}
        for fmt in formats:
            self.kept = {}
            plans[fmt] = self._analyze(model, nodes, undecided, fmt, probe_ok)
            self._check_ranges(model, nodes, plans[fmt], fmt)
            self._validate(pristine, plans[fmt], fmt)
            kept_by[fmt] = self.kept
        if opts.target == "auto":
            fmt = self._choose_by_cost(model, pristine, plans)
        else:
            fmt = formats[0]
        if fmt is None:  # nothing pays: every float node stays fp32 for cost
            self.kept = dict(kept_by[formats[0]])
            for p in plans.values():
                for n in p.values():
                    self.kept[n.label] = ("cost", "not faster than fp32 on " + self.provider)
            plan: dict[int, _Node] = {}
            low = _LOW["fp16"]
        else:
            plan, low, self.kept = plans[fmt], fmt, kept_by[fmt]
            budget_text = opts.budget or self.context.budget
            if budget_text and plan and self.context.data is not None:
                self._apply_budget(Budget.parse(budget_text), model, pristine, plan, low)
                self._drop_movement_islands(nodes, plan)
            elif budget_text and plan:
                self.details["budget"] = "not measured: no DATA"
        self.details["precision"] = _SHORT[low] if plan else "fp32"
        changed = self._rewrite(model, plan, low) if plan else False
        for label, (reason, _) in self.kept.items():
            del label
            self.count(f"kept_fp32:{reason}")
        changed |= self._record(model, nodes, undecided, plan, low)
        self.details["kept_fp32"] = {
            r: sorted(k for k, (reason, _) in self.kept.items() if reason == r) for r in REASONS
        }
        self.details["why"] = {k: f"{r}: {w}" for k, (r, w) in sorted(self.kept.items())}
        if changed:
            return True
        if not any(v.dtype == ir.DataType.FLOAT for n in nodes for v in n.outputs):
            return self.decline("no float32 computation to lower: the model is not float32")
        reasons = ", ".join(f"{len(v)} {r}" for r, v in self.details["kept_fp32"].items() if v)
        return self.decline(f"every float32 node stays fp32 ({reasons or 'nothing to convert'})")

    def _can_probe(self) -> bool:
        try:
            return self.provider in runtime.ort().get_available_providers()
        except ImportError:
            return False

    # ------------------------------------------------------------------ analysis
    def _keep(self, label: str, reason: str, why: str) -> None:
        self.kept.setdefault(label, (reason, why))

    def _analyze(
        self,
        model: ir.Model,
        nodes: list[ir.Node],
        undecided: list[int],
        low: ir.DataType,
        probe: bool,
    ) -> dict[int, _Node]:
        """Nodes that may run in ``low`` (by schema, kernels and subgraph use)."""
        plan: dict[int, _Node] = {}
        excluded = set(self.options.exclude)
        for i in undecided:
            node = nodes[i]
            label = _label(node, i)
            floats = any(
                v is not None and v.dtype == ir.DataType.FLOAT
                for v in (*node.inputs, *node.outputs)
            )
            if not floats:
                continue
            if node.op_type in _QDQ or any(_dequantized(v) for v in node.inputs):
                # qdq-insert's groups (DQ -> op -> Q) are what the EP runs as integer kernels;
                # a Cast inside one would break it. Mixed int8 + fp16: the rest goes low.
                self._keep(label, "int8", "in a quantized group (int8 where qdq-insert put it)")
                continue
            if any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                for a in node.attributes.values()
                if isinstance(a, ir.Attr)
            ):
                self._keep(label, "unsupported", "subgraph (If/Loop/Scan bodies stay fp32)")
                continue
            if node.name and node.name in excluded:
                self._keep(label, "unsupported", "excluded by option")
                continue
            opset = self.opsets.get(node.domain or "", self.opset)
            ins, outs, why = capability.convertible_ports(node, opset, low)
            if why:
                self._keep(label, "unsupported", why)
                continue
            why = self._attribute_problem(node, low)
            if why:
                self._keep(label, "range" if "fp16 max" in why else "unsupported", why)
                continue
            if probe and self.options.require_kernels:
                in_t = [
                    (low if m else v.dtype) if v is not None else None
                    for v, m in zip(node.inputs, ins, strict=True)
                ]
                out_t = [low if m else v.dtype for v, m in zip(node.outputs, outs, strict=True)]
                ok, msg = capability.has_kernel(node, in_t, out_t, self.opsets, self.provider)
                if ok is False:
                    self._keep(label, "unsupported", f"no {_SHORT[low]} kernel on {self.provider}")
                    missing = self.details.setdefault("no_kernel", {}).setdefault(_SHORT[low], [])
                    if node.op_type not in missing:
                        missing.append(node.op_type)
                    continue
                del msg  # unknown (None): the whole-model load check decides
            plan[i] = _Node(i, label, node.op_type, ins, outs)
        self._drop_movement_islands(nodes, plan)
        return plan

    def _drop_movement_islands(self, nodes: list[ir.Node], plan: dict[int, _Node]) -> None:
        """A low region of data movement only computes nothing cheaper: its Casts only cost."""
        index = {id(nodes[i]): i for i in plan}
        parent = {i: i for i in plan}

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, n in plan.items():
            for v, m in zip(nodes[i].outputs, n.outs, strict=True):
                if not m:
                    continue
                for use in v.uses():
                    j = index.get(id(use.node))
                    if j is not None and plan[j].ins[use.idx]:
                        parent[find(j)] = find(i)
        groups: dict[int, list[int]] = {}
        for i in plan:
            groups.setdefault(find(i), []).append(i)
        for members in groups.values():
            if all(plan[i].op_type in _MOVEMENT for i in members):
                for i in members:
                    why = "data movement only between fp32 nodes: its Casts would only cost"
                    self._keep(plan[i].label, "cost", why)
                    del plan[i]

    @staticmethod
    def _attribute_problem(node: ir.Node, low: ir.DataType) -> str:
        """Why an attribute-typed node cannot produce ``low`` ('' if it can)."""
        attr = capability.ATTRIBUTE_TYPED.get(node.op_type)
        if attr is None:
            return ""
        a = node.attributes.get(attr)
        if attr == "value":
            if node.op_type == "Constant" and (a is None or a.type != ir.AttributeType.TENSOR):
                return "Constant holds no tensor 'value'"
            if a is not None:
                return _out_of_range(a.value.numpy(), low)
        return ""

    def _check_ranges(
        self, model: ir.Model, nodes: list[ir.Node], plan: dict[int, _Node], low: ir.DataType
    ) -> None:
        """Keep fp32 around tensors that do not fit ``low`` (constants; activations with DATA)."""
        if low != ir.DataType.FLOAT16 or not plan:
            return
        bad: dict[str, str] = {}  # tensor name -> why
        for n in plan.values():
            node = nodes[n.index]
            for v, m in zip(node.inputs, n.ins, strict=True):
                a = _const(v) if m else None
                if a is not None and v is not None and v.name:
                    why = _out_of_range(a, low)
                    if why:
                        bad[v.name] = why
        samples = self.context.data
        if samples is not None:
            names = sorted(
                {
                    v.name
                    for n in plan.values()
                    for v, m in zip(
                        (*nodes[n.index].inputs, *nodes[n.index].outputs),
                        (*n.ins, *n.outs),
                        strict=True,
                    )
                    if m and v is not None and v.name and _const(v) is None
                }
            )
            if names:
                stats = collect_stats(model, samples, tensors=names, bins=16, progress=False)
                for name, st in stats.items():
                    if st.count == 0:
                        continue
                    amax = max(abs(st.min), abs(st.max)) if math.isfinite(st.min) else 0.0
                    if amax * self.options.headroom > FP16_MAX:
                        bad[name] = (
                            f"tensor {name}: |max| {amax:.4g} x headroom "
                            f"{self.options.headroom:g} > {FP16_MAX:g}"
                        )
                    elif 0 < amax < FP16_MIN_SUBNORMAL:
                        bad[name] = f"tensor {name}: every value underflows to 0 in fp16"
            self.details["calibrated_tensors"] = len(names)
        else:
            self.details["calibrated_tensors"] = 0
        if not bad:
            return
        for i in list(plan):
            node = nodes[i]
            n = plan[i]
            hit = [
                v.name
                for v, m in zip((*node.inputs, *node.outputs), (*n.ins, *n.outs), strict=True)
                if m and v is not None and v.name in bad
            ]
            if hit:
                self._keep(n.label, "range", bad[hit[0]])
                del plan[i]

    def _validate(self, pristine: Pristine, plan: dict[int, _Node], low: ir.DataType) -> None:
        """Load the converted model on the EP; a node ORT refuses goes back to fp32."""
        if not plan or not self._can_probe():
            return
        for _ in range(_MAX_REPAIRS):
            trial = pristine.copy()
            self._rewrite(trial, plan, low, count=False)
            try:
                runtime.make_session(trial, ep=self.ep, optimize=False)
                return
            except RuntimeFailure as exc:
                m = _NODE_IN_ERROR.search(str(exc))
                hit = [i for i, n in plan.items() if m and n.label == m.group(1)] if m else []
                if not hit:  # a node ORT expanded from a function body (Softmax...) has no name
                    hit = [i for i, n in plan.items() if capability.is_function_op(n.op_type)]
                if not hit:
                    self.details["load_failure"] = str(exc)
                    for n in plan.values():
                        self._keep(n.label, "unsupported", f"ONNX Runtime refused the model: {exc}")
                    plan.clear()
                    return
                for i in hit:
                    self._keep(plan[i].label, "unsupported", f"ONNX Runtime: {exc}")
                    del plan[i]

    # ------------------------------------------------------------------ cost (auto)
    def _feed(self, model: ir.Model) -> dict[str, np.ndarray]:
        if self.context.data is not None:
            return self.context.data.feeds[0]
        from graphopt import data

        return data.random_feeds(
            model, count=1, seed=self.context.seed, dims=self.context.dims
        ).feeds[0]

    def _choose_by_cost(
        self, model: ir.Model, pristine: Pristine, plans: dict[ir.DataType, dict[int, _Node]]
    ) -> ir.DataType | None:
        """The fastest format that beats fp32 by ``_PAYS`` on the EP, or None."""
        info: dict[str, Any] = {"threshold": _PAYS}
        self.details["cost"] = info
        if not self._can_probe():
            info["decision"] = f"fp32: {self.provider} is not available to time on"
            return None
        candidates = {fmt: plan for fmt, plan in plans.items() if plan}
        if not candidates:
            info["decision"] = "fp32: nothing convertible"
            return None
        feed = self._feed(model)
        sessions = [runtime.make_session(pristine.copy(), ep=self.ep)]
        order = []
        for fmt in candidates:
            trial = pristine.copy()
            self._rewrite(trial, candidates[fmt], fmt, count=False)
            try:
                sessions.append(runtime.make_session(trial, ep=self.ep))
            except RuntimeFailure as exc:  # a kernel the EP lacks (require_kernels=false)
                info[_SHORT[fmt]] = {"error": f"does not load on {self.provider}: {exc.message}"}
                continue
            order.append(fmt)
        if not order:
            info["decision"] = f"fp32: no candidate loads on {self.provider}"
            return None
        rounds = runtime.interleaved_latency(sessions, feed)
        best, best_ratio = None, _PAYS
        for k, fmt in enumerate(order, start=1):
            ratio = float(np.median([r[k] / r[0] for r in rounds]))
            info[_SHORT[fmt]] = {
                "ms": 1e3 * float(np.median([r[k] for r in rounds])),
                "ratio": ratio,
                "nodes": len(candidates[fmt]),
            }
            if ratio < best_ratio:
                best, best_ratio = fmt, ratio
        info["fp32_ms"] = 1e3 * float(np.median([r[0] for r in rounds]))
        info["decision"] = _SHORT[best] if best is not None else "fp32: not faster"
        return best

    # ------------------------------------------------------------------ budget
    def _apply_budget(
        self,
        budget: Budget,
        model: ir.Model,
        pristine: Pristine,
        plan: dict[int, _Node],
        low: ir.DataType,
    ) -> None:
        """Return the most sensitive nodes to fp32 until ``budget`` holds (greedy)."""
        samples = self.context.data
        feeds = samples.feeds[: self.options.budget_samples]
        ref = runtime.run_feeds(runtime.make_session(model, ep=self.ep, optimize=False), feeds)

        def measure(p: dict[int, _Node]) -> float:
            trial = pristine.copy()
            self._rewrite(trial, p, low, count=False)
            sess = runtime.make_session(trial, ep=self.ep, optimize=True)
            return budget.measure(ref, runtime.run_feeds(sess, feeds), samples)

        start = measure(plan)
        info: dict[str, Any] = {"budget": str(budget), "converted_all": start}
        self.details["budget"] = info
        if budget.holds(start):
            info.update(final=start, met=True)
            return
        sign = 1.0 if budget.op == ">=" else -1.0
        candidates = [i for i, n in plan.items() if n.op_type not in _MOVEMENT]
        gains = {}
        for i in candidates:
            gains[i] = sign * (measure({k: v for k, v in plan.items() if k != i}) - start)
        order = sorted(candidates, key=lambda i: -gains[i])
        info["sensitivity"] = {plan[i].label: gains[i] for i in order[:20]}
        value, chosen = start, []
        for i in order:
            self._keep(plan[i].label, "sensitivity", f"budget {budget}: gain {gains[i]:.3g}")
            chosen.append(plan.pop(i).label)
            value = measure(plan) if plan else budget.measure(ref, ref, samples)
            if budget.holds(value):
                break
        info.update(final=value, kept_fp32=chosen, met=budget.holds(value))

    # ------------------------------------------------------------------ rewrite
    def _rewrite(
        self, model: ir.Model, plan: dict[int, _Node], low: ir.DataType, *, count: bool = True
    ) -> bool:
        """Convert ``plan``'s nodes of ``model`` (same node order as analysed) to ``low``."""
        graph = model.graph
        nodes = list(graph)
        namer = Namer(graph)
        suffix = _SHORT[low]
        stats: collections.Counter[str] = collections.Counter()
        wants_low: dict[ir.Value, list[tuple[ir.Node, int]]] = {}
        for i, n in plan.items():
            node = nodes[i]
            for k, (v, m) in enumerate(zip(node.inputs, n.ins, strict=True)):
                if m and v is not None:
                    wants_low.setdefault(v, []).append((node, k))
        produced_low = {
            v for i, n in plan.items() for v, m in zip(nodes[i].outputs, n.outs, strict=True) if m
        }
        keep_io = self.options.keep_io_types
        # 1. graph inputs read only in low precision change type (keep_io_types=false)
        if not keep_io:
            for v in graph.inputs:
                if v.dtype == ir.DataType.FLOAT and v in wants_low:
                    if len(wants_low[v]) == sum(1 for _ in v.uses()):
                        v.dtype = low
                        produced_low.add(v)
        # 2. constants: converted directly, a second copy if fp32 readers remain
        for v, readers in list(wants_low.items()):
            a = _const(v)
            if a is None or v in produced_low:
                continue
            del wants_low[v]
            others = len(list(v.uses())) - len(readers)
            if others == 0 and not v.is_graph_output() and v.name in graph.initializers:
                v.const_value = ir.tensor(_to_low(a, low), name=v.name)
                v.dtype = low
            else:
                name = namer(f"{v.name or 'const'}_{suffix}")
                copy = ir.Value(name=name, const_value=ir.tensor(_to_low(a, low), name=name))
                copy.dtype, copy.shape = low, ir.Shape(a.shape)
                graph.register_initializer(copy)
                for node, k in readers:
                    node.replace_input_with(k, copy)
            stats["initializers_converted"] += 1
        # 3. attribute-typed nodes produce low directly
        for i in plan:
            self._retype_attribute(nodes[i], low)
        # 4. low values read in fp32 (or leaving the graph): one Cast up, shared
        first = nodes[0] if nodes else None
        for v in list(produced_low):
            up_uses = [
                (u.node, u.idx)
                for u in v.uses()
                if (u.node, u.idx) not in set(wants_low.get(v, []))
            ]
            as_output = v.is_graph_output() and (keep_io or v.is_graph_input())
            if not up_uses and not as_output:
                continue
            cast = self._cast(v, ir.DataType.FLOAT, namer, "fp32")
            if as_output:
                old = v.name
                v.name = namer(f"{old}_{suffix}")
                cast.outputs[0].name = old
                for j, o in enumerate(graph.outputs):
                    if o is v:
                        graph.outputs[j] = cast.outputs[0]
            for node, k in up_uses:
                node.replace_input_with(k, cast.outputs[0])
            self._place(graph, v, cast, first)
            stats["casts_inserted"] += 1
        # 5. fp32 values read in low precision: one Cast down, shared
        for v, readers in wants_low.items():
            if v in produced_low:
                continue
            cast = self._cast(v, low, namer, suffix)
            for node, k in readers:
                node.replace_input_with(k, cast.outputs[0])
            self._place(graph, v, cast, first)
            stats["casts_inserted"] += 1
        # 6. output types of converted nodes
        for i, n in plan.items():
            for v, m in zip(nodes[i].outputs, n.outs, strict=True):
                if m:
                    v.dtype = low
            nodes[i].metadata_props[PRECISION_KEY] = low.name.lower()
            stats[f"converted:{n.op_type}"] += 1
        stats["casts_removed"] += self._remove_cancelling_casts(graph)
        if not keep_io:
            for v in graph.outputs:
                if v in produced_low:
                    v.dtype = low
        if count:
            for key, n_ in stats.items():
                self.count(key, n_)
        return bool(plan)

    @staticmethod
    def _retype_attribute(node: ir.Node, low: ir.DataType) -> None:
        attr = capability.ATTRIBUTE_TYPED.get(node.op_type)
        if attr is None:
            return
        if attr == "value":
            a = node.attributes.get("value")
            arr = a.value.numpy() if a is not None else np.zeros([1], np.float32)
            if arr.dtype == np.float32:
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(_to_low(arr, low)))
        elif attr == "to":
            if node.attributes["to"].value == ir.DataType.FLOAT:
                node.attributes["to"] = ir.AttrInt64("to", int(low))
        else:
            a = node.attributes.get(attr)
            if a is None or a.value == int(ir.DataType.FLOAT):
                node.attributes[attr] = ir.AttrInt64(attr, int(low))

    def _cast(self, v: ir.Value, to: ir.DataType, namer: Namer, suffix: str) -> ir.Node:
        base = v.name or "value"
        cast = self.mark(
            ir.Node(
                "",
                "Cast",
                [v],
                attributes=[ir.AttrInt64("to", int(to))],
                name=namer(f"{base}_to_{suffix}"),
            )
        )
        cast.metadata_props[PRECISION_KEY] = "cast"
        out = cast.outputs[0]
        out.name = namer(f"{base}_{suffix}")
        out.dtype, out.shape = to, v.shape
        return cast

    @staticmethod
    def _place(graph: ir.Graph, v: ir.Value, cast: ir.Node, first: ir.Node | None) -> None:
        producer = v.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, [cast])
        elif first is not None:
            graph.insert_before(first, [cast])
        else:
            graph.append(cast)

    @staticmethod
    def _remove_cancelling_casts(graph: ir.Graph) -> int:
        """Drop Casts to a tensor's own type and exact round trips (fp16 -> fp32 -> fp16)."""
        removed = 0
        exact_up = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
        for node in list(graph):
            if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
                continue
            out = node.outputs[0]
            src = node.inputs[0]
            if src is None or out.is_graph_output():
                continue
            to = ir.DataType(node.attributes["to"].value)
            target = None
            if src.dtype == to:
                target = src
            else:
                prev = src.producer()
                if (
                    prev is not None
                    and prev.op_type == "Cast"
                    and prev.graph is graph
                    and prev.inputs[0] is not None
                    and prev.inputs[0].dtype == to
                    and to in exact_up
                    and src.dtype == ir.DataType.FLOAT
                ):
                    target = prev.inputs[0]
            if target is None:
                continue
            out.replace_all_uses_with(target)
            graph.remove(node, safe=True)
            removed += 1
            prev = src.producer()
            if (
                prev is not None
                and prev.op_type == "Cast"
                and prev.graph is graph
                and not src.uses()
                and not src.is_graph_output()
            ):
                graph.remove(prev, safe=True)
        return removed

    # ------------------------------------------------------------------ bookkeeping
    def _record(
        self,
        model: ir.Model,
        nodes: list[ir.Node],
        undecided: list[int],
        plan: dict[int, _Node],
        low: ir.DataType,
    ) -> bool:
        """Metadata on every decided node, so that a second run leaves them alone."""
        changed = False
        for i in undecided:
            node = nodes[i]
            if i in plan:
                continue
            kept = self.kept.get(_label(node, i))
            if kept is not None:
                node.metadata_props[PRECISION_KEY] = f"fp32:{kept[0]}"
                changed = True
        del model, low
        return changed
