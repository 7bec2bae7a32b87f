"""What qdq-insert quantizes: which nodes get int8 and which tensors get a Q/DQ pair.

Planning is separate from writing Q/DQ nodes because the pass plans many times per run: once
for calibration (every candidate, so any later plan finds its ranges), then once per trial of
the fusion repair, the latency guard and the accuracy budget, each with other nodes kept
float. Every plan reads the same per-run settings, held by :class:`QdqRun`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize.qdq_activations import SATURATING

from graphopt.core.ops import INTEGER_OPS, SCALE_PRESERVING, WEIGHTED, is_dequantized
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const
from graphopt.ir import iter_graphs, nodes_in_subgraphs
from graphopt.runtime.target import Int8Scheme

#: node metadata: why qdq-insert left this node in float (unfused, sensitivity, cost)
KEPT_FLOAT_KEY = "pkg.graphopt.qdq-insert.kept_float"
FLOAT = frozenset({ir.DataType.FLOAT})  # TODO: float16 models (scales in float16)

#: ops whose output ONNX Runtime requantizes with their own (calibrated) scale; the
#: saturating activations are rewritten into integer Add/Mul first (:mod:`.qdq_activations`)
REQUANT = (
    frozenset(
        {
            "Add",
            "Mul",
            "Concat",
            "AveragePool",
            "GlobalAveragePool",
            "Softmax",
            "Sigmoid",
            "LeakyRelu",
        }
    )
    | SATURATING
)
#: data movement with several outputs, each sharing its input's scale (YOLO's C2f blocks)
MULTI_OUTPUT = frozenset({"Split"})
#: data movement: output scale and zero point = input's (ORT drops the DQ/Q around them)
SHARED = SCALE_PRESERVING | MULTI_OUTPUT
SUPPORTED = WEIGHTED | REQUANT | SHARED
#: the activations ORT's CPU EP runs as table lookups (QLinearSigmoid, QLinearLeakyRelu) or
#: that are rewritten into integer Add/Mul: SiLU, HardSwish, squeeze-excite gates
_CPU_ACTIVATIONS = frozenset({"Sigmoid", "LeakyRelu"}) | SATURATING
#: the default on CUDA/TensorRT, which fuse attention themselves
DEFAULT_OPS = sorted(SUPPORTED - {"Softmax"} - _CPU_ACTIVATIONS)
#: the default on the CPU, where QLinearSoftmax (a table lookup) beats the float Softmax
DEFAULT_CPU_OPS = sorted([*DEFAULT_OPS, "Softmax", *_CPU_ACTIVATIONS])
_ABSORBED = frozenset({"Relu", "Clip"})
#: ops whose integer kernel replaces a costly float one: their input gets a Q even when it
#: comes from a float node (a last-axis Softmax: QLinearSoftmax; its input range from rows)
_LOOKUP = frozenset({"Softmax"})
MIN_EMBEDDING = 1024  # a Gather table smaller than this is not worth an int8 copy


@dataclasses.dataclass
class QdqRun:
    """One qdq-insert run: its int8 scheme, settings and what it has learnt so far.

    Created at the top of ``run`` and passed to every helper. What is learnt later
    (calibrated ranges, smoothing scales, what the latest rewrite quantized) starts empty, so
    nothing can be read before it is set.
    """

    scheme: Int8Scheme
    act_type: str  # "uint8" (asymmetric) or "int8" (symmetric) activations
    qmax: int  # weights in [-qmax, qmax]: 127, or 63 for 7-bit weights
    op_types: frozenset[str]  # op types the plan may quantize
    exclude: frozenset[str]  # node names the user keeps in float
    per_channel: bool  # weights per output channel (else per tensor)
    count: Callable[..., None]  # the pass's counter: count(key, n=1)
    mark: Callable[[ir.Node], ir.Node]  # the pass's provenance mark on new nodes
    #: calibrated tensors that got no range (not float at run time): never quantized
    bad: set[str] = dataclasses.field(default_factory=set)
    #: tensor name -> calibrated (min, max); rewrites add the ranges of smoothed tensors
    ranges: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    #: MatMul input name -> (SmoothQuant scale per channel, range of x / scale)
    smooth: dict[str, tuple[np.ndarray, tuple[float, float]]] = dataclasses.field(
        default_factory=dict
    )
    #: what the latest rewrite quantized: node name -> op type
    quantized: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the embedding Gathers among them
    embeddings: set[str] = dataclasses.field(default_factory=set)
    #: why a planned activation kept its float form: node name -> why (:mod:`.qdq_activations`)
    activation_why: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class QdqPlan:
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

    def all_outputs(self, node: ir.Node) -> list[ir.Value]:
        """The quantized outputs of ``node``: every output of a Split, else its one."""
        if node.op_type in MULTI_OUTPUT:
            return list(node.outputs) if node in self.outputs else []
        return [self.outputs[node]] if node in self.outputs else []


def default_ops(target: str) -> list[str]:
    """The op types qdq-insert quantizes when ``op_types`` is empty."""
    return DEFAULT_CPU_OPS if target == "cpu" else DEFAULT_OPS


def plan(run: QdqRun, graph: ir.Graph, excluded: set[str], prune: bool = True) -> QdqPlan:
    """Choose what to quantize, ``excluded`` nodes left float; ``prune=False`` keeps every
    candidate (for calibration)."""
    bad = run.bad

    def allowed(node: ir.Node, op: str) -> bool:
        return (
            node.domain in ("", "ai.onnx")
            and node.op_type == op
            and op in run.op_types
            and not (node.name and node.name in excluded)
        )

    weighted, act_mm, emb, cand = [], [], [], []
    for node in graph:
        if (
            any(is_dequantized(v) for v in node.inputs)
            or any(u.node.op_type == "QuantizeLinear" for o in node.outputs for u in o.uses())
            or KEPT_FLOAT_KEY in node.metadata_props
        ):
            continue  # already quantized, or an earlier run decided float (idempotence)
        op = node.op_type
        if op in WEIGHTED and allowed(node, op) and _weighted_ok(node, bad):
            weighted.append(node)
        elif (
            op == "MatMul"
            and allowed(node, op)
            and len(node.inputs) == 2
            and all(float_act(v, bad) for v in node.inputs)
        ):
            act_mm.append(node)
        elif op == "Gather" and allowed(node, op) and _is_embedding(node):
            emb.append(node)
        elif (op in REQUANT or op in SHARED) and allowed(node, op):
            if op != "Softmax" or _last_axis_softmax(node):
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
            (run.act_type == "uint8" or run.scheme.target == "cuda")
            and len(uses) == 1
            and not y.is_graph_output()
            and uses[0].node.op_type in _ABSORBED
            and uses[0].idx == 0
            and uses[0].node.graph is graph
            and n.op_type in (WEIGHTED | {"Add"})
            and _clip_ok(uses[0].node)
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
        outs = n.outputs if n.op_type in MULTI_OUTPUT else [eff_out[n]]
        for y in outs:
            uses = list(y.uses())
            if not (
                uses
                and not y.is_graph_output()
                and all(u.node in members and u.node.graph is graph for u in uses)
            ):
                return False
        return True

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
                    c = _const(v)
                    ok = (  # an infinite constant (a -inf mask) has no int8 form
                        n.op_type in ("Add", "Mul", "Concat")
                        and c.dtype == np.float32
                        and bool(np.isfinite(c).all())
                    )
                    continue
                if n.op_type in _LOOKUP:  # the integer kernel pays for its input's Q
                    ok = float_act(v, bad)
                    continue
                src = source(v)
                ok = src is not None and src in members and out_quantized(src) and float_act(v, bad)
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
    return QdqPlan(weighted, act_mm, emb, region, absorbed, outputs, inputs)


def plan_model(run: QdqRun, model: ir.Model, excluded: set[str], prune: bool = True) -> QdqPlan:
    """:func:`plan` for the main graph and every If/Loop/Scan body, as one plan.

    Each graph is planned on its own (an integer region ends where a tensor crosses into
    another scope), so a body's nodes are quantized the way the main graph's are; the
    emitter writes each node's Q/DQ into the graph that holds it.
    """
    parts = [plan(run, graph, excluded, prune) for graph in iter_graphs(model)]
    merged = QdqPlan([], [], [], [], {}, {}, {})
    for part in parts:
        merged.weighted += part.weighted
        merged.act_matmul += part.act_matmul
        merged.embedding += part.embedding
        merged.region += part.region
        merged.absorbed.update(part.absorbed)
        merged.outputs.update(part.outputs)
        merged.inputs.update(part.inputs)
    return merged


def plan_signature(plan: QdqPlan, ids: dict[object, int]) -> tuple:
    """What a rewrite of ``plan`` depends on, by position in the planned model (``ids``: its
    nodes and values numbered once): equal signatures give the same trial model.

    Why: the budget search plans hundreds of trials that differ by one node kept float, and
    a node of an integer region back in float returns its whole region to float, so many
    plans coincide; planning is ~100x cheaper than writing and serializing a trial model.
    The scales follow from the run's calibration and from these roots, so they coincide too.
    """

    def key(items: list[ir.Node]) -> tuple[int, ...]:
        return tuple(sorted(ids[x] for x in items))

    members = set(plan.nodes)
    return (
        key(plan.weighted),
        key(plan.act_matmul),
        key(plan.embedding),
        key(plan.region),
        tuple(sorted((ids[r], ids[n]) for r, n in plan.absorbed.items())),
        tuple(sorted((ids[n], ids[y]) for n, y in plan.outputs.items())),
        tuple(sorted((ids[n], tuple(i)) for n, i in plan.inputs.items() if n in members)),
    )


def numbering(model: ir.Model) -> dict[object, int]:
    """Every node and value of ``model`` (bodies included) numbered in graph order."""
    ids: dict[object, int] = {}
    for graph in iter_graphs(model):
        for v in [*graph.inputs, *graph.initializers.values()]:
            ids.setdefault(v, len(ids))
        for node in graph:
            ids.setdefault(node, len(ids))
            for v in node.outputs:
                ids.setdefault(v, len(ids))
    return ids


def calibration_tensors(every: QdqPlan) -> list[str]:
    """Every float tensor any plan (whatever stays float) may need a range for; ``every`` is
    the plan that keeps every candidate (``prune=False``)."""
    values = []
    for n in every.nodes:
        values += [n.inputs[i] for i in every.inputs[n]]
        if n not in every.embedding:
            values += [n.outputs[0], every.outputs.get(n)]
    # a tensor of unknown type is left out: without a range it simply stays float
    return sorted(
        {
            v.name
            for v in values
            if v is not None and v.name and v.dtype in FLOAT and _const(v) is None
        }
    )


def nothing_to_quantize(model: ir.Model, op_types: list[str], kept_float: set[str]) -> str:
    """Why the plan is empty, in the words a user can act on."""
    graph = model.graph
    if any(is_dequantized(v) for n in graph for v in n.inputs if v is not None):
        return "already quantized: the quantizable nodes read DequantizeLinear outputs"
    integer = sorted({n.op_type for n in graph if n.op_type in INTEGER_OPS})
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
            f"(op_types: {', '.join(op_types)})"
        )
    if any(n.name in kept_float for n in graph):
        return "every quantizable node was kept float by an earlier run"
    return (
        f"none of the {sum(ops.values())} Conv/Gemm/MatMul nodes has a float32 activation "
        "and a constant float32 weight it can quantize"
    )


def float_act(v: ir.Value | None, bad: set[str]) -> bool:
    """A float activation (not constant, not already dequantized) that may get a Q/DQ pair."""
    return (
        v is not None
        and bool(v.name)
        and v.name not in bad
        and _const(v) is None
        and (v.dtype is None or v.dtype in FLOAT)
        and not is_dequantized(v)
    )


def _weighted_ok(node: ir.Node, bad: set[str]) -> bool:
    if len(node.inputs) < 2 or not float_act(node.inputs[0], bad):
        return False
    wa = _const(node.inputs[1])
    if wa is None or wa.dtype != np.float32 or is_dequantized(node.inputs[1]):
        return False
    if node.op_type in ("Gemm", "MatMul") and wa.ndim != 2:
        return False
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        return False  # TODO: transposed activations
    return not (node.op_type == "Conv" and wa.ndim < 3)


def softmax_inputs(plan: QdqPlan) -> frozenset[str]:
    """Names of the planned Softmax inputs (their ranges come from their rows)."""
    return frozenset(
        v.name
        for n in plan.region
        if n.op_type == "Softmax" and (v := n.inputs[0]) is not None and v.name
    )


def _last_axis_softmax(node: ir.Node) -> bool:
    """A Softmax over the last axis: the rows its input range is calibrated on."""
    x = node.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    imports = node.graph.opset_imports if node.graph is not None else {}
    opset = node.version or imports.get("", imports.get("ai.onnx", 13))
    default = -1 if opset >= 13 else 1
    axis = int(_attr(node, "axis", default))
    return axis == -1 or (rank is not None and axis == rank - 1)


def _clip_ok(node: ir.Node) -> bool:
    if node.op_type == "Relu":
        return True
    lo = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    return lo is not None and lo.size == 1 and float(lo) == 0.0  # ReLU6-like: min 0


def _is_embedding(node: ir.Node) -> bool:
    table = _const(node.inputs[0]) if node.inputs else None
    return (
        table is not None
        and table.dtype == np.float32
        and table.size >= MIN_EMBEDDING
        and not is_dequantized(node.inputs[0])
    )
