"""Where the output channels of Conv/Gemm/MatMul layers sit in a tensor, and what the channel
analysis records for the rewrite.

Removing output channel ``c`` of a Conv (or neuron ``c`` of a Gemm/MatMul) is only correct if
every tensor that carries that channel shrinks with it and every op that reads it is rewritten
to match. The analysis (:mod:`.channel_analysis`) tracks, for each float tensor, *where along
which axis* the channels of which producers sit:

* a **space** is the output-channel set of one producer (a Conv with ``group=1``, a Gemm or a
  MatMul with a constant weight); a Split on the channel axis cuts a space into parts;
* a tensor's :class:`Layout` is its channel axis and, along it, ``outer`` repeats of a
  concatenation of spaces (``segments``), each channel holding ``inner`` contiguous elements.
  ``Flatten`` or a merging ``Reshape`` of ``[N, C, H, W]`` gives ``outer=1, inner=H*W``;
  ``Transpose`` then ``Reshape`` as in CREPE's head gives ``outer=H``; ``Concat`` on the
  channel axis joins segments; a Reshape into ``[heads, head_dim]`` makes indices whole heads;
* ops that combine two channel tensors elementwise (a residual ``Add``) **tie** their spaces
  (union-find in :class:`Analysis`): those producers must keep the same channel indices. A
  *group* is a set of tied spaces; pruning chooses one kept-index set per group.

This module holds those records, shared by the analysis and the rewrite
(:mod:`.channel_rewrite`), and the metadata key that remembers which channels a layer kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

#: Node metadata that records, on a producer, which of its original output channels remain.
CHANNELS_KEY = "pkg.graphopt.channels"


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
