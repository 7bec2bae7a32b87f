"""What assign-precision may lower: per node, which float ports change type, and why not.

The analysis is separate from the rewrite (:mod:`.cast_placement`) because the pass analyses
once per candidate format (float16 and bfloat16 under ``target=auto``) and rewrites many
trial copies from one analysis (load check, timing, budget). Every helper takes the run's
settings and its record of nodes kept fp32 as a :class:`PrecisionRun`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx_ir as ir
from graphopt.passes.precision import capability

from graphopt import runtime
from graphopt.calib import collect_stats
from graphopt.core.ops import QDQ, is_dequantized
from graphopt.ir import const_array as const

#: node metadata: the precision this pass chose ("float16", "bfloat16", "fp32:<reason>", "cast")
PRECISION_KEY = "pkg.graphopt.assign-precision"
FP16_MAX = 65504.0
FP16_MIN_SUBNORMAL = 2.0**-24
REASONS = ("range", "unsupported", "sensitivity", "cost", "int8")
LOW = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
SHORT = {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}


@dataclasses.dataclass
class PrecisionRun:
    """One assign-precision run: the EP, the options that shape the analysis, and the nodes
    kept fp32 for the format at hand (label -> (reason, why)). Created at the top of ``run``."""

    ep: str  # graphopt.runtime EP name: "cpu", "cuda", ...
    opsets: dict[str, int]  # the model's opset imports
    exclude: frozenset[str]  # node names kept fp32 by option
    require_kernels: bool
    headroom: float
    keep_io_types: bool
    samples: Any  # graphopt.inputs.data.Samples, or None without DATA
    kept: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def provider(self) -> str:
        return runtime.EP_NAMES[self.ep]

    @property
    def opset(self) -> int:
        """The ai.onnx opset."""
        return self.opsets.get("", self.opsets.get("ai.onnx", 1))

    def keep(self, label: str, reason: str, why: str) -> None:
        """Keep ``label`` fp32 for ``reason`` (the first reason found stays)."""
        self.kept.setdefault(label, (reason, why))

    def can_probe(self) -> bool:
        """Whether the EP is available here (to probe kernels, load and time on)."""
        try:
            return self.provider in runtime.ort().get_available_providers()
        except ImportError:
            return False


@dataclasses.dataclass
class PlannedNode:
    """One main-graph node's analysis: which ports change type when it runs low."""

    index: int
    label: str
    op_type: str
    ins: list[bool]
    outs: list[bool]


#: node index (in graph order) -> its analysis: the nodes that run low
Plan = dict[int, PlannedNode]


def label(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def to_low(array: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    if dtype == ir.DataType.FLOAT16:
        return array.astype(np.float16)
    import ml_dtypes

    return array.astype(ml_dtypes.bfloat16)


def out_of_range(array: np.ndarray, dtype: ir.DataType, headroom: float = 1.0) -> str:
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


def analyze(
    run: PrecisionRun,
    nodes: list[ir.Node],
    undecided: list[int],
    low: ir.DataType,
    probe: bool,
    details: dict[str, Any],
) -> Plan:
    """Nodes that may run in ``low`` (by schema, kernels and subgraph use)."""
    plan: Plan = {}
    for i in undecided:
        node = nodes[i]
        name = label(node, i)
        floats = any(
            v is not None and v.dtype == ir.DataType.FLOAT for v in (*node.inputs, *node.outputs)
        )
        if not floats:
            continue
        if node.op_type in QDQ or any(is_dequantized(v) for v in node.inputs):
            # qdq-insert's groups (DQ -> op -> Q) are what the EP runs as integer kernels;
            # a Cast inside one would break it. Mixed int8 + fp16: the rest goes low.
            run.keep(name, "int8", "in a quantized group (int8 where qdq-insert put it)")
            continue
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
            if isinstance(a, ir.Attr)
        ):
            run.keep(name, "unsupported", "subgraph (If/Loop/Scan bodies stay fp32)")
            continue
        if node.name and node.name in run.exclude:
            run.keep(name, "unsupported", "excluded by option")
            continue
        opset = run.opsets.get(node.domain or "", run.opset)
        ins, outs, why = capability.convertible_ports(node, opset, low)
        if why:
            run.keep(name, "unsupported", why)
            continue
        why = _attribute_problem(node, low)
        if why:
            run.keep(name, "range" if "fp16 max" in why else "unsupported", why)
            continue
        if probe and run.require_kernels:
            in_t = [
                (low if m else v.dtype) if v is not None else None
                for v, m in zip(node.inputs, ins, strict=True)
            ]
            out_t = [low if m else v.dtype for v, m in zip(node.outputs, outs, strict=True)]
            ok, msg = capability.has_kernel(node, in_t, out_t, run.opsets, run.provider)
            if ok is False:
                run.keep(name, "unsupported", f"no {SHORT[low]} kernel on {run.provider}")
                missing = details.setdefault("no_kernel", {}).setdefault(SHORT[low], [])
                if node.op_type not in missing:
                    missing.append(node.op_type)
                continue
            del msg  # unknown (None): the whole-model load check decides
        plan[i] = PlannedNode(i, name, node.op_type, ins, outs)
    return plan


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
            return out_of_range(a.value.numpy(), low)
    return ""


def check_ranges(
    run: PrecisionRun,
    model: ir.Model,
    nodes: list[ir.Node],
    plan: Plan,
    low: ir.DataType,
    details: dict[str, Any],
) -> None:
    """Keep fp32 around tensors that do not fit ``low`` (constants; activations with DATA)."""
    if low != ir.DataType.FLOAT16 or not plan:
        return
    bad: dict[str, str] = {}  # tensor name -> why
    for n in plan.values():
        node = nodes[n.index]
        for v, m in zip(node.inputs, n.ins, strict=True):
            a = const(v) if m else None
            if a is not None and v is not None and v.name:
                why = out_of_range(a, low)
                if why:
                    bad[v.name] = why
    samples = run.samples
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
                if m and v is not None and v.name and const(v) is None
            }
        )
        if names:
            stats = collect_stats(model, samples, tensors=names, bins=16, progress=False)
            for name, st in stats.items():
                if st.count == 0:
                    continue
                amax = max(abs(st.min), abs(st.max)) if math.isfinite(st.min) else 0.0
                if amax * run.headroom > FP16_MAX:
                    bad[name] = (
                        f"tensor {name}: |max| {amax:.4g} x headroom "
                        f"{run.headroom:g} > {FP16_MAX:g}"
                    )
                elif 0 < amax < FP16_MIN_SUBNORMAL:
                    bad[name] = f"tensor {name}: every value underflows to 0 in fp16"
        details["calibrated_tensors"] = len(names)
    else:
        details["calibrated_tensors"] = 0
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
            run.keep(n.label, "range", bad[hit[0]])
            del plan[i]


def record(
    nodes: list[ir.Node], undecided: list[int], plan: Plan, kept: dict[str, tuple[str, str]]
) -> bool:
    """Metadata on every decided node kept fp32, so that a second run leaves them alone
    (converted nodes got theirs in the rewrite)."""
    changed = False
    for i in undecided:
        node = nodes[i]
        if i in plan:
            continue
        reason = kept.get(label(node, i))
        if reason is not None:
            node.metadata_props[PRECISION_KEY] = f"fp32:{reason[0]}"
            changed = True
    return changed
