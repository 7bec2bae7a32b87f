"""The graph walk's state, and how a layout follows the channel axis through ops that move,
merge, split or normalize over axes.

:class:`LayoutWalker` holds what the walk has found so far (an :class:`Analysis` being built)
and the questions every handler asks: a value's dims, tying two layouts, marking spaces
unsafe. Its ``op_*`` handlers cover Transpose, Unsqueeze/Squeeze, reductions, Softmax and
LayerNormalization, Flatten/Reshape (into and out of ``[heads, head_dim]``), Split and
Concat: ops whose output carries the input's channels along a different axis, or rejects
them. The producers, sinks and channel-wise ops are in :mod:`.channel_analysis`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.channel_layout import Analysis, Layout, Space
from graphopt.passes.sparsify.channel_shapes import (
    as_dims,
    axes_of,
    const_ints,
    reshape_run,
    resolve_target,
    shape_slot,
    unify,
)

from graphopt.ir import attr_value


class LayoutWalker:
    """Tracks channel layouts through the graph; handlers for the axis-moving ops."""

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

    # ---------------------------------------------------------------- axis-moving ops
    def op_Transpose(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = ins[0][2]
        perm = attr_value(node, "perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(x.rank)))  # type: ignore[call-overload]
        self.set(node.outputs[0], x.with_axis(x.rank, perm.index(x.axis)))

    def op_Unsqueeze(self, node: ir.Node, ins: list[tuple[int, ir.Value, Layout]]) -> None:
        x = next((lay for i, _, lay in ins if i == 0), None)
        if x is None:
            return
        axes = axes_of(node, 1)
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
        axes = axes_of(node, 1)
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
        axes = axes_of(node, 1)
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
        target = const_ints(node.inputs[1])
        if dims is None or int(attr_value(node, "allowzero", 0)):  # type: ignore[arg-type]
            self.reject(node, [x], "input shape unknown")
            return
        ins_d = as_dims(dims, "in")
        if target is not None:
            outs = resolve_target(ins_d, target)
        else:  # computed: the output's (symbolic) shape says what it holds
            out_dims = self.dims(node.outputs[0])
            outs = unify(ins_d, as_dims(out_dims, "out")) if out_dims is not None else None
        run = reshape_run(ins_d, outs, x.axis) if outs is not None else None
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
        sizes = const_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
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
