"""What a sparsity pattern means for one weight: the weight viewed along the axis its layer
sums over, and the masks that zero its least important entries.

``sparsify`` keeps, per layer, the ``n`` most important of every ``m`` weights along that
reduction axis (N:M), the lowest-importance share of each layer (unstructured, layer scope),
or one threshold over all layers' normalised importance (unstructured, global scope).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.errors import DataError
from graphopt.ir import attr_value as _attr


@dataclasses.dataclass
class _Target:
    """A weight ``sparsify`` acts on (a Conv/Gemm/MatMul weight, or a Gather table)."""

    node: ir.Node
    weight: ir.Value
    array: np.ndarray

    @property
    def name(self) -> str:
        return self.weight.name or self.node.name or self.node.op_type

    # ------------------------------------------------------------ reduction-axis views
    def to_rows(self, a: np.ndarray) -> np.ndarray:
        """``a`` (weight-shaped) as [rows, R]: consecutive along R = along the reduction axis."""
        op = self.node.op_type
        if op == "Conv":
            return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])
        if op == "Gemm" and _attr(self.node, "transB", 0):
            return a
        return a.T

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        shape = self.array.shape
        op = self.node.op_type
        if op == "Conv":
            moved = (shape[0], *shape[2:], shape[1])
            return np.moveaxis(rows.reshape(moved), -1, 1)
        if op == "Gemm" and _attr(self.node, "transB", 0):
            return rows
        return rows.T

    # ------------------------------------------------------------ activation statistics
    def channel_sums(self, x: np.ndarray) -> np.ndarray:
        """Sum of squares of the activation ``x`` (input 0) per reduction-axis channel."""
        x = np.asarray(x, np.float64)
        op = self.node.op_type
        if op == "Conv":
            axes = tuple(i for i in range(x.ndim) if i != 1)
        elif op == "Gemm":
            axes = (1,) if _attr(self.node, "transA", 0) else (0,)
        else:
            axes = tuple(range(x.ndim - 1))
        return np.square(x).sum(axis=axes)

    def channel_scale(self, per_channel: np.ndarray) -> np.ndarray:
        """A per-input-channel quantity broadcast to the weight's shape."""
        shape = self.array.shape
        op = self.node.op_type
        if op == "Conv":
            group = int(_attr(self.node, "group", 1))  # type: ignore[arg-type]
            out, cg = shape[0], shape[1]
            if per_channel.shape[0] != cg * group:
                raise DataError(
                    f"{self.node.name}: activation has {per_channel.shape[0]} channels, "
                    f"the weight expects {cg * group}"
                )
            first = (np.arange(out) // (out // group)) * cg
            idx = first[:, None] + np.arange(cg)[None, :]
            return per_channel[idx].reshape(out, cg, *([1] * (len(shape) - 2)))
        if op == "Gemm" and _attr(self.node, "transB", 0):
            return per_channel[None, :]
        return per_channel[:, None]

    def reduction_len(self) -> int:
        op = self.node.op_type
        if op == "Conv":
            return int(self.array.shape[1])
        if op == "Gemm" and _attr(self.node, "transB", 0):
            return int(self.array.shape[1])
        return int(self.array.shape[0])


def nm_holds(rows: np.ndarray, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive values along the last axis has <= n non-zeros."""
    groups = rows.reshape(rows.shape[0], -1, m)
    return bool(((groups != 0).sum(axis=-1) <= n).all())


def nm_mask(importance_rows: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep-mask (bool, same shape) keeping the ``n`` most important of every ``m`` along R."""
    r, k = importance_rows.shape
    groups = importance_rows.reshape(r, k // m, m)
    order = np.argsort(-groups, axis=-1, kind="stable")  # most important first
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return keep.reshape(r, k)


def lowest_mask(importance: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of exactly ``k`` entries with the lowest importance (ties by position)."""
    flat = importance.ravel()
    drop = np.zeros(flat.shape, dtype=bool)
    if k > 0:
        drop[np.argpartition(flat, k - 1, kind="introselect")[:k]] = True
    return drop.reshape(importance.shape)


def apply_layer(t: _Target, importance: np.ndarray, sparsity: float) -> np.ndarray:
    """The weight with exactly ``round(sparsity * size)`` least important entries zeroed."""
    return np.where(lowest_mask(importance, round(sparsity * t.array.size)), np.float32(0), t.array)


def apply_nm(t: _Target, importance: np.ndarray, nm: tuple[int, int]) -> np.ndarray:
    """The weight with only the ``n`` most important of every ``m`` along its reduction axis."""
    rows = t.to_rows(t.array)
    keep = nm_mask(t.to_rows(importance), *nm)
    return t.from_rows(np.where(keep, rows, np.float32(0)))


def apply_global(
    targets: list[_Target], importance: dict[int, np.ndarray], sparsity: float
) -> dict[int, np.ndarray]:
    """The weights under one threshold over every target's mean-normalised importance."""
    normed = []
    for t in targets:
        imp = importance[id(t)]
        mean = float(imp.mean())
        normed.append(imp.ravel() / mean if mean > 0 else imp.ravel())
    flat = np.concatenate(normed)
    drop = lowest_mask(flat, round(sparsity * flat.size))
    out, start = {}, 0
    for t in targets:
        d = drop[start : start + t.array.size].reshape(t.array.shape)
        start += t.array.size
        out[id(t)] = np.where(d, np.float32(0), t.array)
    return out
