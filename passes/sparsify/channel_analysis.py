"""Channel dependency analysis: which output channels of which layers must be removed together,
and which cannot be removed safely.

The walk goes once through the graph in topological order, building the :class:`Analysis`
records of :mod:`.channel_layout`:

* **producers** open a space: a Conv with ``group=1``, a Gemm, a MatMul with a constant
  weight;
* **sinks** read the channels and reduce over them: Conv (``group=1``), Gemm, MatMul with a
  constant weight, ConvTranspose; their weights lose the matching input rows;
* channel-wise ops (Relu and other unary ops, BatchNormalization, pooling, Pad, Resize,
  depthwise Conv, per-channel constants of Add/Mul) pass the layout on and are rewritten by
  slicing their parameters; elementwise ops of two channel tensors tie their spaces;
* attention heads: MatMuls of two activations tie the channels on their batch axes (Q with K
  in ``QK^T``, the probabilities with V); the Reshapes around them are followed by
  :mod:`.channel_axes`, with the shapes of :func:`.channel_shapes.symbolic_shapes`;
* a Split on the channel axis cuts the space it reads into parts, pruned independently.

Anything else that reads a channel tensor (LayerNormalization or Softmax over the channel
axis, Shape, a Split of tied channels, a Reshape split into anything but [heads, head_dim], a
graph output, a non-constant second operand the pass cannot slice, an op it does not know)
marks every space in that tensor's layout **unsafe**, with the reason; unsafe groups are left
alone and reported. The analysis only reads the graph; :func:`.channel_rewrite.apply`
rewrites it for the chosen kept indices.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from graphopt.passes.sparsify.channel_axes import LayoutWalker
from graphopt.passes.sparsify.channel_layout import Analysis, Layout, Sink, Slice
from graphopt.passes.sparsify.channel_shapes import axes_of, const_ints, rank_of

from graphopt.core.ops import WEIGHTED
from graphopt.ir import attr_value, const_array

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
_CHANNEL_NORM = frozenset({"BatchNormalization", "InstanceNormalization"})


class _Analyzer(LayoutWalker):
    """The walk: producers, sinks and channel-wise ops on top of the axis handlers."""

    def __init__(
        self, graph: ir.Graph, shapes: dict[str, list[int | str | None]] | None = None
    ) -> None:
        super().__init__(graph, shapes)
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
            if not ins and node.op_type not in WEIGHTED:
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
        rank = rank_of(node.outputs[0]) or (w.ndim if w is not None else None)
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
        rank = rank_of(node.outputs[0]) or rank_of(node.inputs[0])
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
        out_rank = rank_of(node.outputs[0])
        ranks = [rank_of(v) for v in node.inputs]
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
        out_rank = rank_of(node.outputs[0])
        ranks = [rank_of(v) for v in node.inputs if v is not None]
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
        pads = [int(p) for p in pads] if pads is not None else const_ints(node.inputs[1])  # type: ignore[union-attr]
        axes = axes_of(node, 3) if len(node.inputs) > 3 else []
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


def analyze(graph: ir.Graph, shapes: dict[str, list[int | str | None]] | None = None) -> Analysis:
    """Channel spaces, layouts, ties and rewrite records of ``graph`` (read only).

    ``shapes`` (see :func:`symbolic_shapes`) overrides the values' recorded shapes by name.
    """
    return _Analyzer(graph, shapes).run()
