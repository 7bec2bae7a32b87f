"""Channel dependency analysis: which output channels of which layers must be removed together.

Removing output channel ``c`` of a Conv (or neuron ``c`` of a Gemm/MatMul) is only correct if
every tensor that carries that channel shrinks with it and every op that reads it is rewritten
to match. This module walks the graph once, in topological order, and tracks for each float
tensor *where along which axis* the channels of which producers sit (:class:`Layout`):

* a **space** is the output-channel set of one producer (a Conv with ``group=1``, a Gemm or a
  MatMul with a constant weight);
* a tensor's layout is its channel axis and, along it, ``outer`` repeats of a concatenation of
  spaces (``segments``), each channel holding ``inner`` contiguous elements. ``Flatten`` or a
  merging ``Reshape`` of ``[N, C, H, W]`` gives ``outer=1, inner=H*W``; ``Transpose`` then
  ``Reshape`` as in CREPE's head gives ``outer=H``; ``Concat`` on the channel axis joins
  segments;
* ops that combine two channel tensors elementwise (a residual ``Add``) **tie** their spaces
  (union-find): those producers must keep the same channel indices. A *group* is a set of tied
  spaces; pruning chooses one kept-index set per group;
* channel-wise ops (Relu and other unary ops, BatchNormalization, pooling, Pad, depthwise Conv,
  per-channel constants of Add/Mul) are rewritten by slicing their parameters;
* attention heads: a Reshape that splits channels into ``[heads, head_dim]`` gives a layout
  whose indices are whole heads (``unit``), MatMuls of two activations tie the channels on
  their batch axes (Q with K in ``QK^T``, the probabilities with V), and the Reshape that
  merges heads back restores channels; the group then loses whole heads. Targets built from
  ``Shape`` values (PyTorch exports) are followed with ONNX Runtime's symbolic shape
  inference (:func:`symbolic_shapes`), and their constant elements rewritten;
* a Split on the channel axis cuts the space it reads into parts (spaces of their own, each
  a range of the producer's channels): the parts are pruned independently, the producer
  loses their union, and the split sizes are rewritten;
* **sinks** read the channels and reduce over them: Conv (``group=1``), Gemm, MatMul with a
  constant weight, ConvTranspose; their weights lose the matching input rows.

Anything else that reads a channel tensor (LayerNormalization over the channel axis, Softmax
over it, Shape, a Split of tied channels, a Reshape split into anything but [heads,
head_dim], a graph output, a non-constant second operand the pass cannot slice, an op it
does not know) marks every space in that tensor's layout **unsafe**, with the reason; unsafe
groups are left alone and reported. The analysis only reads the graph; :func:`apply`
rewrites it for the chosen kept indices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize._emit import Namer, add_initializer

from graphopt.ir import attr_value, const_array

#: Node metadata that records, on a producer, which of its original output channels remain.
CHANNELS_KEY = "pkg.graphopt.channels"

# Ops that map each element to one element of the same shape (extra inputs are scalars or
# broadcast constants handled like the second operand of a binary op).
_UNARY = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Gelu", "Erf",
        "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Mish", "Clip", "Identity",
        "Dropout", "Neg", "Abs", "Sqrt", "Exp", "Log", "Floor", "Ceil", "Round", "Sin",
        "Cos", "Reciprocal", "ThresholdedRelu", "Shrink", "Sign", "IsNaN", "IsInf", "Not",
        "Cast",
    }
)  # fmt: skip
_BINARY = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
     "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod"}
)  # fmt: skip
_POOL = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
)
_REDUCE = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
     "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}
)  # fmt: skip
_PRODUCERS = frozenset({"Conv", "Gemm", "MatMul"})
_CHANNEL_NORM = frozenset({"BatchNormalization", "InstanceNormalization"})


# ------------------------------------------------------------------------------ layouts


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where channels sit in one tensor: index along ``axis`` = o*S*inner + (off+c)*inner + j.

    With ``unit > 1`` each index along the axis stands for ``unit`` consecutive channels (the
    heads axis after a Reshape splits channels into [heads, head_dim]); such channels can only
    go a whole unit at a time.
    """

    rank: int
    axis: int
    segments: tuple[tuple[int, int], ...]  # (space id, size in channels), in order
    outer: int = 1
    inner: int = 1
    unit: int = 1

    @property
    def block(self) -> int:
        """Indices along the axis per ``outer`` repetition, divided by ``inner``."""
        return sum(size for _, size in self.segments) // self.unit

    @property
    def length(self) -> int:
        return self.outer * self.block * self.inner

    def spaces(self) -> list[int]:
        return [s for s, _ in self.segments]

    def shape_key(self) -> tuple[Any, ...]:
        sizes = tuple(n for _, n in self.segments)
        return (self.rank, self.axis, self.outer, self.inner, self.unit, sizes)

    def with_axis(self, rank: int, axis: int) -> Layout:
        return dataclasses.replace(self, rank=rank, axis=axis)

    def kept_indices(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        """Indices along the axis that remain when each space keeps ``kept[space]``."""
        parts, off = [], 0
        for space, size in self.segments:
            parts.append(off + np.asarray(kept.get(space, np.arange(size)), dtype=np.int64))
            off += size
        chans = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if self.unit > 1:
            chans = np.unique(chans // self.unit)
        j = np.arange(self.inner, dtype=np.int64)
        per_outer = (chans[:, None] * self.inner + j[None, :]).ravel()
        o = np.arange(self.outer, dtype=np.int64) * (self.block * self.inner)
        return (o[:, None] + per_outer[None, :]).ravel()

    def new_length(self, kept: dict[int, np.ndarray]) -> int:
        block = sum(len(kept[s]) if s in kept else n for s, n in self.segments) // self.unit
        return self.outer * block * self.inner


# ------------------------------------------------------------------------------ records


@dataclasses.dataclass
class Space:
    id: int
    size: int
    producer: ir.Node
    unit: int = 1  # channels go in whole units of this many (attention heads)
    whole: int | None = None  # a Split made this space a part of that one ...
    offset: int = 0  # ... starting at this channel of it
    split: tuple[ir.Node, int] | None = None  # (the Split, its output index)

    @property
    def label(self) -> str:
        name = self.producer.name or self.producer.op_type
        return name if self.whole is None else f"{name}[{self.offset}:{self.offset + self.size}]"


@dataclasses.dataclass
class Slice:
    """Slice input ``index`` of ``node`` (a constant) along ``axis`` by ``layout``'s kept set."""

    node: ir.Node
    index: int
    axis: int
    layout: Layout


@dataclasses.dataclass
class Sink:
    """A layer that reduces over the channels of its input (``layout`` on the reduced axis)."""

    node: ir.Node
    layout: Layout
    weight_axis: int  # the weight axis that matches the reduced input axis


@dataclasses.dataclass
class Analysis:
    spaces: list[Space]
    layouts: dict[ir.Value, Layout]
    slices: list[Slice]
    sinks: list[Sink]
    depthwise: list[tuple[ir.Node, Layout]]
    reshapes: list[tuple[ir.Node, int, Layout]]  # (Reshape node, output axis, output layout)
    unsafe: dict[int, str]  # space id -> first reason
    parent: list[int]
    parts: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # split spaces
    splits: list[tuple[ir.Node, Layout]] = dataclasses.field(default_factory=list)

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def groups(self) -> list[list[int]]:
        """Tied spaces, each list sorted, in the order of their first producer.

        A space a Split cut into parts is not a group of its own: its parts are.
        """
        by_root: dict[int, list[int]] = defaultdict(list)
        for s in range(len(self.spaces)):
            if s not in self.parts:
                by_root[self.find(s)].append(s)
        return sorted(by_root.values(), key=lambda g: g[0])

    def complete(self, kept: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """``kept`` plus, for every split space, the union of its parts' kept channels."""
        out = dict(kept)
        for whole in sorted(self.parts, reverse=True):  # parts of parts first
            base = self.spaces[whole].offset
            out[whole] = np.concatenate(
                [
                    self.spaces[p].offset
                    - base
                    + np.asarray(out.get(p, np.arange(self.spaces[p].size)), np.int64)
                    for p in self.parts[whole]
                ]
            )
        return out

    def group_unit(self, group: Sequence[int]) -> int:
        """Channels of the group go in whole units of this many (1, or the head size)."""
        return math.lcm(*(self.spaces[s].unit for s in group))

    def group_unsafe(self, group: Sequence[int]) -> str | None:
        for s in group:
            while s is not None:  # a part is unsafe where the space it came from is
                if s in self.unsafe:
                    return self.unsafe[s]
                s = self.spaces[s].whole
        return None


# ------------------------------------------------------------------------------ analysis


def _rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def _ints(value: ir.Value | None) -> list[int] | None:
    a = const_array(value)
    return None if a is None else [int(x) for x in np.asarray(a).ravel()]


def _axes_of(node: ir.Node, input_index: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input ``input_index`` (newer ones)."""
    a = attr_value(node, "axes", None)
    if a is not None:
        return [int(x) for x in a]  # type: ignore[union-attr]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        return _ints(node.inputs[input_index])
    return []


_Dim = tuple[int, tuple[str, ...]]  # known factor, unknown factors (symbols)


def _mul(a: _Dim, b: _Dim) -> _Dim:
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _divides(a: _Dim, b: _Dim) -> bool:
    if a[0] == 0 or b[0] % a[0]:
        return False
    rest = list(b[1])
    for sym in a[1]:
        if sym not in rest:
            return False
        rest.remove(sym)
    return True


def _as_dims(dims: Sequence[int | str | None], tag: str) -> list[_Dim]:
    """Dims as (known factor, symbols): a name is a symbol, an unknown dim a fresh one."""
    return [
        (d, ()) if isinstance(d, int) else (1, (d if d else f"?{tag}{i}",))
        for i, d in enumerate(dims)
    ]


def _resolve_target(ins: list[_Dim], target: list[int]) -> list[_Dim] | None:
    """A Reshape's constant target (0 copies, -1 infers) as dims."""
    outs: list[_Dim | None] = []
    for j, t in enumerate(target):
        if t == 0:
            if j >= len(ins):
                return None
            outs.append(ins[j])
        elif t > 0:
            outs.append((t, ()))
        elif t == -1:
            outs.append(None)
        else:
            return None
    if outs.count(None) > 1:
        return None
    if None in outs:
        total: _Dim = (1, ())
        for d in ins:
            total = _mul(total, d)
        known: _Dim = (1, ())
        for d in outs:
            if d is not None:
                known = _mul(known, d)
        if not _divides(known, total):
            return None
        rest = list(total[1])
        for sym in known[1]:
            rest.remove(sym)
        outs[outs.index(None)] = (total[0] // known[0], tuple(sorted(rest)))
    return [d for d in outs if d is not None]


def _product(dims: Sequence[_Dim]) -> _Dim:
    total: _Dim = (1, ())
    for d in dims:
        total = _mul(total, d)
    return total


def _unify(ins: list[_Dim], outs: list[_Dim]) -> list[_Dim]:
    """``outs`` with one unknown dim named as one of ``ins`` where the two must be equal.

    A Reshape keeps the element count: in ``[?a, 200, 1, 1] -> [?b, 200]`` the other dims
    multiply to 200 on both sides, so ``?b`` is ``?a`` (an unknown batch dim each side,
    as a Paddle export's -1s or ONNX's fresh ``unk__`` names give).
    """
    if _product(ins) == _product(outs):
        return outs
    for i, d in enumerate(ins):
        if d[0] != 1 or len(d[1]) != 1:
            continue
        rest_in = _product(ins[:i] + ins[i + 1 :])
        for j, e in enumerate(outs):
            if e[0] != 1 or len(e[1]) != 1 or e == d or rest_in[0] == 0:
                continue
            if _product(outs[:j] + outs[j + 1 :]) == rest_in:
                return [*outs[:j], d, *outs[j + 1 :]]
    return outs


def _reshape_run(
    ins: list[_Dim], outs: list[_Dim], axis: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Input dims [lo, hi) and output dims [j0, j1) that hold the same elements, axis in [lo, hi).

    Unknown dims are symbols, so ``[n, 4, 512, 1] -> [-1, 2048]`` pairs ``n`` with ``-1`` and
    ``4*512`` with ``2048``. None where the runs cannot be told apart.
    """
    i = j = 0
    while i < len(ins) and j < len(outs):
        lo, j0 = i, j
        pi, pj = ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if _divides(pi, pj) and i < len(ins):
                pi = _mul(pi, ins[i])
                i += 1
            elif _divides(pj, pi) and j < len(outs):
                pj = _mul(pj, outs[j])
                j += 1
            else:
                return None
        if lo <= axis < i:
            return (lo, i), (j0, j)
    return None


def shape_slot(node: ir.Node, j: int) -> tuple[ir.Node, int, int] | None:
    """Where element ``j`` of a Reshape's target is a constant: (node, input, element).

    The target itself, or one constant input of the Concat that builds it (PyTorch exports
    build ``[batch, seq, heads, head_dim]`` from Shape values and constants).
    """
    target = node.inputs[1]
    if const_array(target) is not None:
        return node, 1, j
    concat = target.producer() if target is not None else None
    if concat is None or concat.op_type != "Concat" or int(attr_value(concat, "axis", 0)) != 0:  # type: ignore[call-overload]
        return None
    offset = 0
    for k, part in enumerate(concat.inputs):
        if part is None or part.shape is None or len(part.shape) != 1:
            return None
        n = part.shape[0]
        if not isinstance(n, int):
            return None
        if offset <= j < offset + n:
            return (concat, k, j - offset) if const_array(part) is not None else None
        offset += n
    return None


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[None]:
    """Run in a temp folder: when its inference is incomplete, ORT's ``infer_shapes`` saves
    ``sym_shape_infer_temp.onnx`` and a data file into the current folder (the user's)."""
    old = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="graphopt-symshape-")
    try:
        os.chdir(tmp)
        yield
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def symbolic_shapes(model: ir.Model) -> dict[str, list[int | str | None]] | None:
    """Value shapes with consistent symbolic dims, from ONNX Runtime's symbolic shape inference.

    ONNX's own inference gives every computed Reshape target fresh unknown dims, so the
    ``[batch, seq, 12, 32]`` that a PyTorch export builds from ``Shape`` values cannot be
    matched to its input; ORT's ``SymbolicShapeInference`` follows Shape/Gather/Concat and
    names them ``batch``/``sequence`` on both sides. None where it cannot run.
    """
    import logging

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = ir.serde.serialize_model(model)
        del proto.graph.value_info[:]
        for k, v in enumerate([*proto.graph.input, *proto.graph.output]):
            for j, d in enumerate(v.type.tensor_type.shape.dim):
                if d.HasField("dim_value") and d.dim_value < 0:  # Paddle's -1: a symbol
                    d.dim_param = f"graphopt_unknown_{k}_{j}"  # (ORT would multiply by -1)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            with _in_temp_dir():
                out = SymbolicShapeInference.infer_shapes(
                    proto, auto_merge=True, guess_output_rank=True
                )
        finally:
            logging.getLogger().setLevel(level)
    except Exception:  # an unsupported op, a model past 2 GB, ...: fall back to onnx_ir's
        return None
    shapes: dict[str, list[int | str | None]] = {}
    for v in [*out.graph.value_info, *out.graph.input, *out.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim
            ]
    return shapes


class _Analyzer:
    def __init__(
        self, graph: ir.Graph, shapes: dict[str, list[int | str | None]] | None = None
    ) -> None:
        self.graph = graph
        self.shapes = shapes or {}
        self.a = Analysis([], {}, [], [], [], [], {}, [])
        self.outputs = {v for v in graph.outputs}
        # values read inside subgraphs (If/Loop/Scan bodies capture outer values)
        self.captured: set[ir.Value] = set()
        for node in graph:
            for attr in node.attributes.values():
                if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else attr.value
                    for g in graphs:
                        for n in ir.traversal.RecursiveGraphIterator(g):
                            self.captured.update(v for v in n.inputs if v is not None)
        self.handlers: dict[str, Any] = {}
        for ops, fn in (
            (_UNARY, self.unary),
            (_BINARY, self.binary),
            (_POOL, self.pool),
            (_REDUCE, self.reduce),
            (_CHANNEL_NORM, self.channel_norm),
        ):
            self.handlers.update(dict.fromkeys(ops, fn))
        for name in dir(self):
            if name.startswith("op_"):
                self.handlers[name[3:]] = getattr(self, name)

    # ---------------------------------------------------------------- helpers
    def static(self, value: ir.Value | None) -> list[int | None] | None:
        """Dims of ``value`` that are known numbers (None elsewhere)."""
        dims = self.dims(value)
        return None if dims is None else [d if isinstance(d, int) else None for d in dims]

    def dims(self, value: ir.Value | None) -> list[int | str | None] | None:
        """Dims of ``value``: ints, symbol names, or None where unknown."""
        if value is None:
            return None
        if value.name in self.shapes:
            dims = self.shapes[value.name]
        elif value.shape is None:
            return None
        else:
            dims = [d if isinstance(d, int) else (d.value or None) for d in value.shape]
        # Paddle exports write an unknown dim as -1: unknown, not a number (two -1s need not
        # be equal, and a product of them is no size)
        return [None if isinstance(d, int) and d < 0 else d for d in dims]

    def new_space(self, size: int, producer: ir.Node) -> int:
        sid = len(self.a.spaces)
        self.a.spaces.append(Space(sid, size, producer))
        self.a.parent.append(sid)
        return sid

    def unsafe(self, layout: Layout, reason: str) -> None:
        for s in layout.spaces():
            self.a.unsafe.setdefault(s, reason)

    def tie(self, x: Layout, y: Layout) -> bool:
        if x.shape_key() != y.shape_key():
            return False
        for (s, _), (t, _) in zip(x.segments, y.segments):
            rs, rt = self.a.find(s), self.a.find(t)
            if rs != rt:
                self.a.parent[max(rs, rt)] = min(rs, rt)
        return True

    def set(self, value: ir.Value | None, layout: Layout | None) -> None:
        if value is None or layout is None:
            return
        self.a.layouts[value] = layout
        if value in self.outputs:
            self.unsafe(layout, f"'{value.name}' is a graph output")
        if value in self.captured:
            self.unsafe(layout, f"'{value.name}' is read inside a subgraph")

    def data_input(
        self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]], why: str
    ) -> Layout | None:
        """The layout of input 0; channels reaching any other input make those unsafe."""
        others = [lay for i, _, lay in ins if i != 0]
        if others:
            self.reject(node, others, why)
        return next((lay for i, _, lay in ins if i == 0), None)

    def reject(self, node: ir.Node, layouts: list[Layout], why: str) -> None:
        for lay in layouts:
            self.unsafe(lay, f"{node.op_type} '{node.name}': {why}")

    # ---------------------------------------------------------------- walk
    def run(self) -> Analysis:
        for node in self.graph:
            ins = [
                (i, v, self.a.layouts[v])
                for i, v in enumerate(node.inputs)
                if v is not None and v in self.a.layouts
            ]
            if node.domain not in ("", "ai.onnx"):
                if ins:
                    self.reject(node, [lay for _, _, lay in ins], "custom-domain op")
                continue
            if not ins and node.op_type not in _PRODUCERS:
                continue
            handler = self.handlers.get(node.op_type)
            if handler is not None:
                handler(node, ins)
            else:
                self.reject(node, [lay for _, _, lay in ins], "op not understood")
        for whole, parts in self.a.parts.items():
            root = self.a.find(whole)
            if any(t != whole and self.a.find(t) == root for t in range(len(self.a.spaces))):
                for p in parts:
                    self.a.unsafe.setdefault(p, "split channels are also tied to others")
        return self.a

    # ---------------------------------------------------------------- producers and sinks
    def op_Conv(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        w = const_array(node.inputs[1] if len(node.inputs) > 1 else None)
        group = int(attr_value(node, "group", 1))  # type: ignore[arg-type]
        x_layout = self.data_input(node, ins, "channels reach the weight or bias")
        rank = _rank(node.outputs[0]) or (w.ndim if w is not None else None)
        if w is None or rank is None:
            if x_layout is not None:
                self.reject(node, [x_layout], "weight is not constant")
            return
        if group == 1:
            if x_layout is not None:
                if (x_layout.axis, x_layout.outer, x_layout.inner, x_layout.unit) != (1, 1, 1, 1):
                    self.reject(node, [x_layout], "channels not on the channel axis")
                elif x_layout.length != w.shape[1]:
                    self.reject(node, [x_layout], "channel count does not match the weight")
                else:
                    self.a.sinks.append(Sink(node, x_layout, weight_axis=1))
            sid = self.new_space(int(w.shape[0]), node)
            self.set(node.outputs[0], Layout(rank, 1, ((sid, int(w.shape[0])),)))
            return
        # depthwise (one input channel per group, any multiplier of 1): channels pass through
        if x_layout is not None:
            if (
                w.shape[1] == 1
                and group == w.shape[0]
                and x_layout.axis == 1
                and x_layout.length == group
            ):
                self.a.depthwise.append((node, x_layout))
                self.set(node.outputs[0], x_layout)
            else:
                self.reject(node, [x_layout], f"grouped convolution (group={group})")

    def op_ConvTranspose(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        w = const_array(node.inputs[1] if len(node.inputs) > 1 else None)
        group = int(attr_value(node, "group", 1))  # type: ignore[arg-type]
        x_layout = self.data_input(node, ins, "channels reach the weight or bias")
        if x_layout is None:
            return  # ConvTranspose output channels are not pruned (not a producer here)
        ok = (
            w is not None
            and group == 1
            and x_layout.axis == 1
            and x_layout.outer == 1
            and x_layout.inner == 1
            and x_layout.unit == 1
            and x_layout.length == w.shape[0]
        )
        if ok:
            self.a.sinks.append(Sink(node, x_layout, weight_axis=0))
        else:
            self.reject(node, [x_layout], "unsupported ConvTranspose input")

    def op_Gemm(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        w = const_array(node.inputs[1] if len(node.inputs) > 1 else None)
        trans_a = int(attr_value(node, "transA", 0))  # type: ignore[arg-type]
        trans_b = int(attr_value(node, "transB", 0))  # type: ignore[arg-type]
        x_layout = self.data_input(node, ins, "channels reach B or C")
        if w is None or w.ndim != 2:
            if x_layout is not None:
                self.reject(node, [x_layout], "B is not a constant matrix")
            return
        k_axis = 1 if trans_b else 0
        if x_layout is not None:
            if (
                x_layout.axis != (0 if trans_a else 1)
                or x_layout.length != w.shape[k_axis]
                or x_layout.unit != 1
            ):
                self.reject(node, [x_layout], "channels not on the reduced axis")
            else:
                self.a.sinks.append(Sink(node, x_layout, weight_axis=k_axis))
        n = int(w.shape[1 - k_axis])
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            c_arr = const_array(c)
            if c_arr is None or (c_arr.ndim == 2 and c_arr.shape[0] != 1) or c_arr.ndim > 2:
                return  # C is not a per-column vector: output neurons stay
        sid = self.new_space(n, node)
        self.set(node.outputs[0], Layout(2, 1, ((sid, n),)))

    def op_MatMul(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        w = const_array(node.inputs[1])
        if w is None and ins:
            self.batched_matmul(node, ins)
            return
        x_layout = self.data_input(node, ins, "channels reach the second operand")
        if w is None or w.ndim != 2:
            if x_layout is not None:
                self.reject(node, [x_layout], "second operand is not a constant matrix")
            return
        rank = _rank(node.outputs[0]) or _rank(node.inputs[0])
        if x_layout is not None:
            if (
                x_layout.axis != x_layout.rank - 1
                or x_layout.length != w.shape[0]
                or x_layout.unit != 1
            ):
                self.reject(node, [x_layout], "channels not on the reduced (last) axis")
            else:
                self.a.sinks.append(Sink(node, x_layout, weight_axis=0))
        if rank is None or rank < 2:
            return
        sid = self.new_space(int(w.shape[1]), node)
        self.set(node.outputs[0], Layout(rank, rank - 1, ((sid, int(w.shape[1])),)))

    def tie_aligned(self, node: ir.Node, layouts: list[Layout], out_rank: int) -> Layout | None:
        """Broadcast the operands' layouts to the output rank and tie them (None: rejected)."""
        aligned = [lay.with_axis(out_rank, lay.axis + out_rank - lay.rank) for lay in layouts]
        for other in aligned[1:]:
            if not self.tie(aligned[0], other):
                self.reject(node, layouts, "operands carry channels differently")
                return None
        return aligned[0]

    def other_operands(
        self,
        node: ir.Node,
        ins: list[tuple[int, ir.Value, Layout]],
        first: Layout,
        out_rank: int,
        *,
        sliceable: bool,
    ) -> bool:
        """Operands without a layout must broadcast along the channel axis or (``sliceable``:
        elementwise ops) be per-channel constants the rewrite slices. False: rejected."""
        layouts = [lay for _, _, lay in ins]
        with_layout = {i for i, _, _ in ins}
        for i, v in enumerate(node.inputs):
            if v is None or i in with_layout:
                continue
            dims = self.static(v)
            if dims is None:
                self.reject(node, layouts, f"operand '{v.name}' has an unknown shape")
                return False
            ax = first.axis - (out_rank - len(dims))
            if ax < 0 or dims[ax] == 1:
                continue  # broadcasts along the channel axis
            if sliceable and dims[ax] == first.length and const_array(v) is not None:
                self.a.slices.append(Slice(node, i, ax, first))
                continue
            self.reject(node, layouts, f"operand '{v.name}' is not a per-channel constant")
            return False
        return True

    def batched_matmul(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        """A MatMul of two activations (attention): channels may ride its batch axes (heads)."""
        layouts = [lay for _, _, lay in ins]
        out_rank = _rank(node.outputs[0])
        ranks = [_rank(v) for v in node.inputs]
        if out_rank is None or None in ranks:
            self.reject(node, layouts, "unknown ranks")
            return
        if any(lay.axis >= lay.rank - 2 for lay in layouts):
            self.reject(node, layouts, "channels on a matrix axis of a MatMul of activations")
            return
        first = self.tie_aligned(node, layouts, out_rank)
        if first is not None and self.other_operands(node, ins, first, out_rank, sliceable=False):
            self.set(node.outputs[0], first)

    # ---------------------------------------------------------------- channel-wise ops
    def unary(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = self.data_input(node, ins, "channels reach a parameter input")
        if x is None:
            return
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
            self.reject(node, [x], "its mask output is used")
            return
        self.set(node.outputs[0], x)

    def binary(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        if not ins:
            return
        out_rank = _rank(node.outputs[0])
        ranks = [_rank(v) for v in node.inputs if v is not None]
        if out_rank is None and all(r is not None for r in ranks):
            out_rank = max(r for r in ranks if r is not None)
        layouts = [lay for _, _, lay in ins]
        if out_rank is None:
            self.reject(node, layouts, "unknown output rank")
            return
        first = self.tie_aligned(node, layouts, out_rank)
        if first is not None and self.other_operands(node, ins, first, out_rank, sliceable=True):
            self.set(node.outputs[0], first)

    def channel_norm(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = self.data_input(node, ins, "channels reach a parameter input")
        if x is None:
            return
        if x.axis != 1:
            self.reject(node, [x], "channels are not on axis 1")
            return
        if node.op_type == "BatchNormalization" and any(o.uses() for o in node.outputs[1:]):
            self.reject(node, [x], "training-mode outputs are used")
            return
        for i in range(1, len(node.inputs)):
            v = node.inputs[i]
            a = const_array(v)
            if a is None or a.ndim != 1 or a.shape[0] != x.length:
                self.reject(node, [x], "parameters are not constant per-channel vectors")
                return
            self.a.slices.append(Slice(node, i, 0, x))
        self.set(node.outputs[0], x)

    def pool(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = ins[0][2]
        if x.axis != 1:
            self.reject(node, [x], "channels are not on axis 1")
            return
        if len(node.outputs) > 1 and node.outputs[1].uses():
            self.reject(node, [x], "its indices output is used")
            return
        self.set(node.outputs[0], x)

    def op_Pad(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = self.data_input(node, ins, "channels reach pads or value")
        if x is None:
            return
        pads = attr_value(node, "pads", None)
        pads = [int(p) for p in pads] if pads is not None else _ints(node.inputs[1])  # type: ignore[union-attr]
        axes = _axes_of(node, 3) if len(node.inputs) > 3 else []
        if pads is None or axes is None:
            self.reject(node, [x], "pads are not constant")
            return
        axes = [a % x.rank for a in axes] if axes else list(range(x.rank))
        n = len(axes)
        padded = {ax for k, ax in enumerate(axes) if pads[k] != 0 or pads[k + n] != 0}
        if x.axis in padded:
            self.reject(node, [x], "pads the channel axis")
            return
        self.set(node.outputs[0], x)

    def op_Resize(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = self.data_input(node, ins, "channels reach roi, scales or sizes")
        if x is None:
            return
        scales = const_array(node.inputs[2] if len(node.inputs) > 2 else None)
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        axes = attr_value(node, "axes", None)  # opset 18: scales and roi cover these axes
        axes = [int(a) % x.rank for a in axes] if axes is not None else list(range(x.rank))  # type: ignore[union-attr]
        if sizes is not None or scales is None or scales.size != len(axes):
            self.reject(node, [x], "resizes the channel axis or uses sizes")
            return
        if x.axis not in axes:
            self.set(node.outputs[0], x)
            return
        k = axes.index(x.axis)
        if float(scales.ravel()[k]) != 1.0:
            self.reject(node, [x], "resizes the channel axis or uses sizes")
            return
        if attr_value(node, "coordinate_transformation_mode", "") == "tf_crop_and_resize":
            # the roi crops every axis it covers, the channel axis too: [0, 1] keeps them all
            roi = const_array(node.inputs[1] if len(node.inputs) > 1 else None)
            whole = (
                roi is not None
                and roi.size == 2 * len(axes)
                and roi.ravel()[[k, k + len(axes)]].tolist() == [0.0, 1.0]
            )
            if not whole:
                self.reject(node, [x], "crops the channel axis (tf_crop_and_resize roi)")
                return
        self.set(node.outputs[0], x)

    def op_Upsample(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        self.op_Resize(node, ins)

    def op_Transpose(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = ins[0][2]
        perm = attr_value(node, "perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(x.rank)))  # type: ignore[call-overload]
        self.set(node.outputs[0], x.with_axis(x.rank, perm.index(x.axis)))

    def op_Unsqueeze(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = next((lay for i, _, lay in ins if i == 0), None)
        if x is None:
            return
        axes = _axes_of(node, 1)
        if axes is None:
            self.reject(node, [x], "axes are not constant")
            return
        out_rank = x.rank + len(axes)
        inserted = sorted(a % out_rank for a in axes)
        kept = [i for i in range(out_rank) if i not in inserted]
        self.set(node.outputs[0], x.with_axis(out_rank, kept[x.axis]))

    def op_Squeeze(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = next((lay for i, _, lay in ins if i == 0), None)
        if x is None:
            return
        axes = _axes_of(node, 1)
        if not axes:  # squeeze every 1: needs the static shape
            dims = self.static(node.inputs[0])
            if dims is None or any(d is None for d in dims):
                self.reject(node, [x], "squeezed axes unknown")
                return
            axes = [i for i, d in enumerate(dims) if d == 1]
        removed = {a % x.rank for a in axes}
        if x.axis in removed:
            self.reject(node, [x], "squeezes the channel axis")
            return
        new_axis = x.axis - sum(1 for a in removed if a < x.axis)
        self.set(node.outputs[0], x.with_axis(x.rank - len(removed), new_axis))

    def reduce(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = next((lay for i, _, lay in ins if i == 0), None)
        if x is None:
            self.reject(node, [lay for _, _, lay in ins], "channels reach axes")
            return
        axes = _axes_of(node, 1)
        if axes is None:
            self.reject(node, [x], "axes are not constant")
            return
        noop = int(attr_value(node, "noop_with_empty_axes", 0))  # type: ignore[arg-type]
        if not axes:
            if noop:
                self.set(node.outputs[0], x)
            else:
                self.reject(node, [x], "reduces over every axis")
            return
        reduced = {a % x.rank for a in axes}
        if x.axis in reduced:
            self.reject(node, [x], "reduces over the channel axis")
            return
        if int(attr_value(node, "keepdims", 1)):  # type: ignore[arg-type]
            self.set(node.outputs[0], x)
        else:
            new_axis = x.axis - sum(1 for a in reduced if a < x.axis)
            self.set(node.outputs[0], x.with_axis(x.rank - len(reduced), new_axis))

    def op_Softmax(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = ins[0][2]
        if int(attr_value(node, "axis", -1)) % x.rank == x.axis:  # type: ignore[call-overload]
            self.reject(node, [x], "normalizes over the channel axis")
        else:
            self.set(node.outputs[0], x)

    def op_LogSoftmax(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        self.op_Softmax(node, ins)

    def op_LayerNormalization(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = self.data_input(node, ins, "channels reach scale or bias")
        if x is None:
            return
        axis = int(attr_value(node, "axis", -1)) % x.rank  # type: ignore[call-overload]
        if x.axis >= axis:
            self.reject(node, [x], "normalizes over the channel axis")
        else:
            self.set(node.outputs[0], x)

    def op_Flatten(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = ins[0][2]
        dims = self.static(node.inputs[0])
        axis = int(attr_value(node, "axis", 1)) % (x.rank + 1)  # type: ignore[call-overload]
        lo, hi = (0, axis) if x.axis < axis else (axis, x.rank)
        self._merge(node, x, dims, lo, hi, 2, 0 if x.axis < axis else 1)

    def op_Reshape(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = next((lay for i, _, lay in ins if i == 0), None)
        if x is None:
            self.reject(node, [lay for _, _, lay in ins], "channels reach the shape")
            return
        dims = self.dims(node.inputs[0])
        target = _ints(node.inputs[1])
        if dims is None or int(attr_value(node, "allowzero", 0)):  # type: ignore[arg-type]
            self.reject(node, [x], "input shape unknown")
            return
        ins_d = _as_dims(dims, "in")
        if target is not None:
            outs = _resolve_target(ins_d, target)
        else:  # computed: the output's (symbolic) shape says what it holds
            out_dims = self.dims(node.outputs[0])
            outs = _unify(ins_d, _as_dims(out_dims, "out")) if out_dims is not None else None
        run = _reshape_run(ins_d, outs, x.axis) if outs is not None else None
        if run is None:
            self.reject(node, [x], "cannot follow the channel axis through this Reshape")
            return
        (lo, hi), (j0, j1) = run
        static = [d if isinstance(d, int) else None for d in dims]
        if target is None and shape_slot(node, j0) is None:
            self.reject(node, [x], "the shape is computed where the channel count sits")
            return
        if j1 - j0 == 1:
            self._merge(node, x, static, lo, hi, len(outs), j0, reshape=True)
            return
        # [.., C, ..] -> [.., heads, head_dim, ..]: channels go in whole heads from here on
        heads, head_dim = (outs[j0], outs[j0 + 1]) if j1 - j0 == 2 else ((0, ()), (0, ()))
        ok = (
            hi - lo == 1
            and x.unit == 1
            and x.outer == 1
            and x.inner == 1
            and not heads[1]
            and not head_dim[1]
            and heads[0] * head_dim[0] == x.length
            and all(size % head_dim[0] == 0 for _, size in x.segments)
        )
        if not ok:
            self.reject(node, [x], "splits the channel axis")
            return
        unit = head_dim[0]
        for space in x.spaces():
            self.a.spaces[space].unit = math.lcm(self.a.spaces[space].unit, unit)
        layout = Layout(len(outs), j0, x.segments, unit=unit)
        self.a.reshapes.append((node, j0, layout))
        self.set(node.outputs[0], layout)

    def _merge(
        self,
        node: ir.Node,
        x: Layout,
        dims: list[int | None] | None,
        lo: int,
        hi: int,
        out_rank: int,
        out_axis: int,
        *,
        reshape: bool = False,
    ) -> None:
        """Input dims [lo, hi) become output dim ``out_axis``; the channel axis is among them."""
        if lo == x.axis == hi - 1:
            layout = x.with_axis(out_rank, out_axis)
        elif x.unit > 1:  # [.., heads, head_dim, ..] merged back: channel by channel again
            rest = [dims[k] for k in range(x.axis + 1, hi)] if dims is not None else [None]
            after = int(np.prod(rest, dtype=np.int64)) if None not in rest else 0
            if lo != x.axis or x.inner != 1 or not after or after % x.unit:
                self.reject(node, [x], "merges whole heads with other dims")
                return
            layout = dataclasses.replace(
                x, rank=out_rank, axis=out_axis, unit=1, inner=after // x.unit
            )
        else:
            if dims is None or any(dims[k] is None for k in range(lo, hi) if k != x.axis):
                self.reject(node, [x], "merged dims have unknown sizes")
                return
            before = int(np.prod([dims[k] for k in range(lo, x.axis)], dtype=np.int64))
            after = int(np.prod([dims[k] for k in range(x.axis + 1, hi)], dtype=np.int64))
            layout = dataclasses.replace(
                x, rank=out_rank, axis=out_axis, outer=x.outer * before, inner=x.inner * after
            )
        if reshape:
            self.a.reshapes.append((node, out_axis, layout))
        self.set(node.outputs[0], layout)

    def op_Split(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = self.data_input(node, ins, "channels reach the split sizes")
        if x is None:
            return
        axis = int(attr_value(node, "axis", 0)) % x.rank  # type: ignore[call-overload]
        if axis != x.axis:  # along another axis: every part carries all the channels
            for out in node.outputs:
                self.set(out, x)
            return
        sizes = _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        if sizes is None and attr_value(node, "split", None) is not None:
            sizes = [int(v) for v in attr_value(node, "split", [])]  # type: ignore[union-attr]
        if sizes is None or sum(sizes) != x.length or len(sizes) != len(node.outputs):
            self.reject(node, [x], "split sizes are not given as constants")
            return
        if (x.outer, x.inner, x.unit) != (1, 1, 1) or len(x.segments) != 1:
            self.reject(node, [x], "splits concatenated or flattened channels")
            return
        ((whole, _),) = x.segments
        root = self.a.find(whole)
        if whole in self.a.parts or any(
            t != whole and self.a.find(t) == root for t in range(len(self.a.spaces))
        ):
            self.reject(node, [x], "splits channels tied to others")
            return
        base = self.a.spaces[whole]
        parts, offset = [], base.offset
        for i, size in enumerate(sizes):
            sid = self.new_space(size, base.producer)
            part = self.a.spaces[sid]
            part.whole, part.offset, part.split, part.unit = whole, offset, (node, i), base.unit
            offset += size
            parts.append(sid)
            self.set(node.outputs[i], Layout(x.rank, x.axis, ((sid, size),)))
        self.a.parts[whole] = parts
        self.a.splits.append((node, x))

    def op_Concat(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        layouts = [lay for _, _, lay in ins]
        rank = layouts[0].rank
        axis = int(attr_value(node, "axis", 0)) % rank  # type: ignore[call-overload]
        if any(lay.axis != axis for lay in layouts):
            # concatenation along another axis: every operand must carry the same channels
            if len(ins) != len([v for v in node.inputs if v is not None]):
                self.reject(node, layouts, "operands without channels")
                return
            for other in layouts[1:]:
                if not self.tie(layouts[0], other):
                    self.reject(node, layouts, "operands carry channels differently")
                    return
            self.set(node.outputs[0], layouts[0])
            return
        if any(lay.outer != 1 or lay.unit != 1 or lay.inner != layouts[0].inner for lay in layouts):
            self.reject(node, layouts, "concatenates flattened channels")
            return
        by_index = {i: lay for i, _, lay in ins}
        segments: list[tuple[int, int]] = []
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if i in by_index:
                segments.extend(by_index[i].segments)
                continue
            dims = self.static(v)
            if dims is None or dims[axis] is None or dims[axis] % layouts[0].inner:
                self.reject(node, layouts, f"operand '{v.name}' has an unknown size")
                return
            size = dims[axis] // layouts[0].inner
            fixed = self.new_space(size, node)  # channels nothing can remove
            self.a.unsafe[fixed] = f"Concat '{node.name}': operand '{v.name}' has no producer"
            segments.append((fixed, size))
        self.set(
            node.outputs[0],
            Layout(rank, axis, tuple(segments), outer=1, inner=layouts[0].inner),
        )


def analyze(graph: ir.Graph, shapes: dict[str, list[int | str | None]] | None = None) -> Analysis:
    """Channel spaces, layouts, ties and rewrite records of ``graph`` (read only).

    ``shapes`` (see :func:`symbolic_shapes`) overrides the values' recorded shapes by name.
    """
    return _Analyzer(graph, shapes).run()


# ------------------------------------------------------------------------------ rewriting


def _own(
    graph: ir.Graph, namer: Namer, node: ir.Node, index: int, owned: set[ir.Value]
) -> ir.Value:
    """Input ``index`` of ``node`` as an initializer only this node reads (copied if shared)."""
    v = node.inputs[index]
    assert v is not None and v.const_value is not None
    if v in owned:
        return v
    readers = {id(user) for user, _ in v.uses()}
    if len(readers) > 1 or v.is_graph_output() or v.name not in graph.initializers:
        copy = add_initializer(graph, namer(f"{v.name or 'const'}_pruned"), v.const_value.numpy())
        node.replace_input_with(index, copy)
        v = copy
    owned.add(v)
    return v


def _own_target(graph: ir.Graph, namer: Namer, reshape: ir.Node) -> None:
    """Give a Reshape whose computed target other nodes share a Concat of its own.

    Common-subexpression elimination merges the identical ``[batch, seq, heads, head_dim]``
    of every layer into one Concat; a layer that loses heads must not change the others'.
    """
    target = reshape.inputs[1]
    concat = target.producer() if target is not None else None
    if concat is None or concat.op_type != "Concat":
        return
    if len(target.uses()) == 1 and not target.is_graph_output():
        return
    clone = ir.node(
        "Concat",
        list(concat.inputs),
        attributes={"axis": 0},
        name=namer(f"{concat.name or 'Concat'}_pruned"),
    )
    clone.outputs[0].name = namer(f"{target.name}_pruned")
    clone.outputs[0].dtype = target.dtype
    clone.outputs[0].shape = target.shape
    graph.insert_before(reshape, clone)
    reshape.replace_input_with(1, clone.outputs[0])


def _take(v: ir.Value, axis: int, idx: np.ndarray) -> None:
    assert v.const_value is not None
    arr = np.take(v.const_value.numpy(), idx, axis=axis)
    v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
    v.shape = ir.Shape(arr.shape)


def apply(
    graph: ir.Graph,
    analysis: Analysis,
    kept: dict[int, np.ndarray],
    *,
    silenced: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Remove every channel not in ``kept`` (space id -> sorted kept indices) from the graph.

    Spaces absent from ``kept`` keep all their channels. Returns counts for the report.
    First the rows that read removed channels are zeroed in every sink (they are cut a moment
    later, so this changes nothing in the result); ``silenced`` is called at that point, when
    the model is the exact reference the pruned one must reproduce.
    """
    kept = analysis.complete({s: np.asarray(k, np.int64) for s, k in kept.items()})
    namer = Namer(graph)
    owned: set[ir.Value] = set()
    stats: dict[str, int] = defaultdict(int)
    pruned = {s for s, k in kept.items() if len(k) < analysis.spaces[s].size}
    if not pruned:
        return dict(stats)

    def touches(layout: Layout) -> bool:
        return any(s in pruned for s in layout.spaces())

    if silenced is not None:
        for sink in analysis.sinks:
            if touches(sink.layout):
                w = _own(graph, namer, sink.node, 1, owned)
                assert w.const_value is not None
                arr = w.const_value.numpy().copy()
                drop = np.ones(arr.shape[sink.weight_axis], bool)
                drop[sink.layout.kept_indices(kept)] = False
                index: list[Any] = [slice(None)] * arr.ndim
                index[sink.weight_axis] = drop
                arr[tuple(index)] = 0
                w.const_value = ir.tensor(arr, name=w.name)
        silenced()

    # producers: output channels (a split's parts are cut through the space they came from)
    for s in sorted(pruned):
        space = analysis.spaces[s]
        if space.whole is not None:
            continue
        node, idx = space.producer, kept[s]
        op = node.op_type
        if op == "Conv":
            _take(_own(graph, namer, node, 1, owned), 0, idx)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                _take(_own(graph, namer, node, 2, owned), 0, idx)
        elif op == "Gemm":
            trans_b = int(attr_value(node, "transB", 0))  # type: ignore[arg-type]
            _take(_own(graph, namer, node, 1, owned), 0 if trans_b else 1, idx)
            c = node.inputs[2] if len(node.inputs) > 2 else None
            if c is not None and c.const_value is not None:
                arr = c.const_value.numpy()
                if arr.shape and arr.shape[-1] == space.size and space.size > 1:
                    _take(_own(graph, namer, node, 2, owned), arr.ndim - 1, idx)
        elif op == "MatMul":
            _take(_own(graph, namer, node, 1, owned), 1, idx)
        prev = node.metadata_props.get(CHANNELS_KEY)
        original = json.loads(prev) if prev else {"original": space.size, "kept": None}
        base = np.asarray(original["kept"] if original["kept"] is not None else range(space.size))
        original["kept"] = [int(i) for i in base[idx]]
        node.metadata_props[CHANNELS_KEY] = json.dumps(original, separators=(",", ":"))
        stats["channels_removed"] += space.size - len(idx)
        stats["layers_pruned"] += 1
    # sinks: input rows
    for sink in analysis.sinks:
        if touches(sink.layout):
            _take(
                _own(graph, namer, sink.node, 1, owned),
                sink.weight_axis,
                sink.layout.kept_indices(kept),
            )
            stats["sinks_resized"] += 1
    for sl in analysis.slices:
        if touches(sl.layout):
            _take(
                _own(graph, namer, sl.node, sl.index, owned), sl.axis, sl.layout.kept_indices(kept)
            )
            stats["parameters_sliced"] += 1
    for node, layout in analysis.depthwise:
        if touches(layout):
            idx = layout.kept_indices(kept)
            _take(_own(graph, namer, node, 1, owned), 0, idx)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                _take(_own(graph, namer, node, 2, owned), 0, idx)
            node.attributes["group"] = ir.AttrInt64("group", len(idx))
            stats["depthwise_resized"] += 1
    for node, out_axis, layout in analysis.reshapes:
        if not touches(layout):
            continue
        _own_target(graph, namer, node)
        slot = shape_slot(node, out_axis)
        if slot is None:
            continue
        holder, index, element = slot
        shape_v = _own(graph, namer, holder, index, owned)
        assert shape_v.const_value is not None
        target = shape_v.const_value.numpy().copy()
        if target[element] not in (0, -1):
            target[element] = layout.new_length(kept)
            shape_v.const_value = ir.tensor(target, name=shape_v.name)
            stats["reshapes_fixed"] += 1
    for node, x in analysis.splits:
        if not touches(x):
            continue
        ((whole, _),) = x.segments
        sizes = [len(kept.get(p, range(analysis.spaces[p].size))) for p in analysis.parts[whole]]
        rec = node.metadata_props.get(CHANNELS_KEY)
        original = (
            json.loads(rec)["original"]
            if rec
            else [analysis.spaces[p].size for p in analysis.parts[whole]]
        )
        node.metadata_props[CHANNELS_KEY] = json.dumps({"original": original})
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            v = _own(graph, namer, node, 1, owned)
            v.const_value = ir.tensor(np.asarray(sizes, np.int64), name=v.name)
        else:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
        stats["splits_resized"] += 1
    # value shapes along the channel axis
    for value, layout in analysis.layouts.items():
        if touches(layout) and value.shape is not None and len(value.shape) == layout.rank:
            dims = list(value.shape)
            if isinstance(dims[layout.axis], int):
                dims[layout.axis] = layout.new_length(kept)
                value.shape = ir.Shape(dims)
    return dict(stats)
