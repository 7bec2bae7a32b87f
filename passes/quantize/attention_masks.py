"""Proving that an attention bias is a padding mask, for quantize-attention.

``com.microsoft.QAttention`` takes a ``mask_index`` (an int32 [batch, sequence] mask and the
value its zeros add), not the additive ``attention_bias`` that exporters' masks become
(TorchScript's ``(1 - m) * min``, the dynamo exporter's ``And``/``Where`` chain). A bias is
taken for a mask only where probe feeds show it: one integer graph input ``M``, and the bias
equal to ``c`` where ``M`` is 0 and to 0 elsewhere, for every head and query position, in
every padding pattern tried. Anything else (causal, relative position) is :class:`NotAMask`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import runtime
from graphopt.ir import Pristine
from graphopt.ir import const_array as _const


@dataclasses.dataclass(frozen=True)
class PaddingMask:
    """A proven padding mask: the integer graph input and the value its zeros add."""

    source: str
    fill: float


class NotAMask(Exception):
    """An attention_bias that is not (provably) a padding mask; the message says why."""


def _inputs_read(model: ir.Model, value: ir.Value, *, shapes: bool) -> list[ir.Value]:
    """The graph inputs ``value`` is computed from; ``shapes=False``: not counting those
    only a Shape node reads (their values do not matter)."""
    inputs = set(model.graph.inputs)
    seen: set[ir.Value] = set()
    stack, found = [value], []
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in inputs:
            found.append(v)
            continue
        producer = v.producer()
        if producer is not None and (shapes or producer.op_type != "Shape"):
            stack.extend(i for i in producer.inputs if i is not None)
    return found


def _integer_sources(model: ir.Model, value: ir.Value) -> list[ir.Value]:
    """The integer or bool rank-2 graph inputs ``value`` is computed from."""
    return [
        v
        for v in _inputs_read(model, value, shapes=True)
        if v.dtype is not None
        and (v.dtype.is_integer() or v.dtype == ir.DataType.BOOL)
        and v.shape is not None
        and len(v.shape) == 2
    ]


def _padding_patterns(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Masks of ``shape`` [batch, sequence]: none padded, the last quarter padded, every other
    position after the first padded (a mask need not be a suffix)."""
    seq = shape[1]
    full = np.ones(shape, np.int64)
    tail = full.copy()
    tail[:, seq - max(1, seq // 4) :] = 0 if seq > 1 else 1
    holes = full.copy()
    holes[:, 1::2] = 0
    return [full, tail, holes]


def _check_padding(bias: np.ndarray, mask: np.ndarray, fill: float | None) -> float | None:
    """The fill value of ``bias`` as the additive form of ``mask`` (checked exactly, broadcast
    over heads and query positions); raises :class:`NotAMask` where it is not."""
    if bias.ndim != 4 or bias.shape[0] not in (1, mask.shape[0]) or bias.shape[-1] != mask.shape[1]:
        raise NotAMask(f"its shape {list(bias.shape)} is not [batch, heads, query, key]")
    if bias.shape[0] != mask.shape[0] and mask.shape[0] != 1:
        raise NotAMask("it does not vary with the batch")
    masked = (mask == 0)[:, None, None, :]
    masked = np.broadcast_to(masked, (mask.shape[0], *bias.shape[1:]))
    full = np.broadcast_to(bias, masked.shape)
    if np.any(full[~masked] != 0):
        raise NotAMask("it is not 0 where the mask is 1 (a causal or position bias?)")
    values = np.unique(full[masked])
    if values.size == 0:
        return fill
    if values.size != 1 or (fill is not None and values[0] != fill):
        raise NotAMask("it does not add one value where the mask is 0")
    return float(values[0])


def prove(
    model: ir.Model,
    bias: ir.Value,
    feed: dict[str, np.ndarray],
    run: Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]],
) -> tuple[PaddingMask, int]:
    """The graph input whose zeros the bias adds ``c`` for, proven on probe feeds; the
    first of the integer [batch, sequence] inputs it is computed from that passes (token
    ids reach a mask through its shape only, and fail)."""
    constant = _const(bias)
    if constant is not None:
        if np.any(constant):
            raise NotAMask("it is a constant (a causal or position bias?)")
        return PaddingMask("", 0.0), 0
    sources = _integer_sources(model, bias)
    if not sources:
        # the dynamo exporter's SDPA writes an all-true mask as a bias of zeros, computed
        # from shapes only: no mask at all
        if not _inputs_read(model, bias, shapes=False) and not np.any(run([bias.name], feed)[0]):
            return PaddingMask("", 0.0), 1
        raise NotAMask("it is not computed from an integer [batch, sequence] graph input")
    why = ""
    for source in sources:
        m = np.asarray(feed[source.name])
        patterns = _padding_patterns(m.shape)
        try:
            fill: float | None = None
            for pattern in patterns:
                (got,) = run([bias.name], {**feed, source.name: pattern.astype(m.dtype)})
                fill = _check_padding(np.asarray(got), pattern, fill)
        except NotAMask as exc:
            why = f"'{source.name}': {exc}"
            continue
        if fill is None or fill == 0.0 or not np.isfinite(fill):
            why = f"'{source.name}': its zeros do not add one finite non-zero value"
            continue
        return PaddingMask(source.name or "", fill), len(patterns)
    raise NotAMask(f"not a padding mask of any integer input ({why})")


class Probe:
    """A session of the model that also returns the values the pass reads (the
    biases it proves, the inputs it smooths): built once per run, when first needed."""

    def __init__(self, model: ir.Model, names: set[str | None]) -> None:
        self.model = model
        self.computed = {v.name for n in model.graph for v in n.outputs if v.name in names}
        self.sess: Any = None

    def run(self, wanted: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not wanted:
            return []
        if self.sess is None:
            probe = Pristine(self.model).copy()
            by_name = {v.name: v for n in probe.graph for v in n.outputs}
            for name in sorted(self.computed):  # type: ignore[type-var]
                probe.graph.outputs.append(by_name[name])
            # optimized: an int8 model runs its integer kernels, not float copies of every
            # dequantized weight (MiniLM: +230 MB unoptimized)
            self.sess = runtime.make_session(probe, optimize=True)
        return self.sess.run(wanted, feed)
