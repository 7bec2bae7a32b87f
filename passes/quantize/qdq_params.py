"""Scales and zero points of qdq-insert: activations from calibrated ranges, weights from data.

The arithmetic of quantization (which integers stand for which floats) kept apart from the
graph surgery that writes it (:mod:`.qdq_emit`), so it can be read and tested on arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize.qdq_plan import SHARED, QdqPlan

from graphopt.calib import TensorStats, compute_ranges, load_or_collect
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const


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


def weight_axis(node: ir.Node) -> int:
    """The output-channel axis of a Conv/Gemm/MatMul weight (per-channel quantization)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return 1  # MatMul, W is [K, N]


def quantize_constant(a: np.ndarray, activation_type: str) -> tuple[np.ndarray, ...]:
    """(q, scale, zero point) of a constant input of Add/Mul/Concat: per tensor, like an
    activation."""
    scale, zp = activation_qparams(
        float(a.min(initial=0)), float(a.max(initial=0)), activation_type
    )
    info = np.iinfo(zp.dtype)
    q = np.clip(np.rint(a.astype(np.float64) / float(scale)) + int(zp), info.min, info.max)
    return q.astype(zp.dtype), scale, zp


def quantize_table(a: np.ndarray, activation_type: str) -> tuple[np.ndarray, ...]:
    """(q, scale, zero point) of an embedding table: the gathered rows keep its parameters,
    so it takes the activations' type."""
    if activation_type == "uint8":
        scale, zp = activation_qparams(float(a.min()), float(a.max()), "uint8")
        q = np.clip(np.rint(a.astype(np.float64) / float(scale)) + int(zp), 0, 255)
        q = q.astype(np.uint8)
    else:
        q, scale = quantize_weight(a, None, 127)
        zp = np.array(0, np.int8)
    return q, np.asarray(scale, np.float32), zp


def quantize_bias(b: np.ndarray, sx: float, sw: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """int32 (q, scale) of a bias with scale ``s_x * s_w``, the int32 accumulator's scale;
    None where the weight's scales do not match the bias."""
    scale = (sx * sw.astype(np.float64)).astype(np.float32)
    if scale.ndim == 0:
        scale = np.full(b.shape, scale, np.float32)
    if scale.shape != b.shape:
        return None
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)
    q = np.clip(np.rint(b.astype(np.float64) / safe), -(2**31), 2**31 - 1).astype(np.int32)
    return q, scale


#: the quantized softmax output's levels: uint8 probabilities in steps of 1/255
SOFTMAX_LEVELS = 256


def softmax_input_range(stats: TensorStats) -> tuple[float, float]:
    """The range of a last-axis Softmax's input: [smallest row maximum - tail, maximum].

    Softmax is shift-invariant per row, so what matters is each value's distance below its
    row's maximum. A value more than ``ln(256 * row length)`` below it weighs less than one
    output step even summed over the whole row, so it may saturate to the range's floor.
    That is also where attention masks go (-3.4e38, -1e4, -inf): a plain min/max range
    would spend every level on the mask and leave the scores one level. The maximum is
    never clipped: it is the row's largest probability.
    """
    if not math.isfinite(stats.row_max_min) or stats.row_len < 2:
        return stats.minmax()
    tail = math.log(SOFTMAX_LEVELS * stats.row_len)
    lo = max(stats.min, stats.row_max_min - tail)
    return lo, stats.max


def activation_ranges(
    model: ir.Model,
    samples: Any,
    names: list[str],
    *,
    bins: int,
    calibration: str,
    symmetric: bool,
    cache: str | None = None,
    softmax_inputs: frozenset[str] = frozenset(),
    unread: dict[str, str] | None = None,
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """One streamed calibration run (or the statistics ``cache`` holds for this model and
    data): the (min, max) chosen for each tensor of ``names``; a Softmax input's range
    comes from its rows (:func:`softmax_input_range`) whatever the method.

    Also returns the tensors that held no finite value on DATA (a ``full(-inf)`` mask, or
    an If branch DATA never took): they have no range, so they are not quantization
    candidates. ``unread`` gets the If/Loop/Scan body tensors that could not be read, and why.
    """
    stats = load_or_collect(
        model,
        samples,
        cache,
        tensors=names,
        bins=bins,
        progress=False,
        unread=unread,
        histogram=calibration != "minmax",  # minmax reads the extremes alone
        rows=softmax_inputs,
    )
    empty = sorted(name for name, s in stats.items() if s.count == 0)
    finite = {name: s for name, s in stats.items() if s.count > 0}
    ranges = compute_ranges(finite, calibration, symmetric=symmetric)
    for name in softmax_inputs & ranges.keys():
        ranges[name] = softmax_input_range(stats[name])
    return ranges, empty


def common_zero_point(
    parts: list[tuple[float, int]], dtype: np.dtype | type = np.uint8
) -> tuple[int, list[float]]:
    """The zero point ``z`` that coarsens the quantized tensors ``[(scale, zero_point)]``
    least when they must share one, and each one's new scale: the smallest that keeps its
    representable range, ``[(qmin - zp) scale, (qmax - zp) scale]``, with ``z``."""
    info = np.iinfo(dtype)
    qmin, qmax = int(info.min), int(info.max)
    best: tuple[float, int, list[float]] | None = None
    for z in range(qmin + 1, qmax):
        scales = [
            max((qmax - zp) * s / (qmax - z), (qmin - zp) * s / (qmin - z), s) for s, zp in parts
        ]
        growth = max(new / s for new, (s, _) in zip(scales, parts, strict=True))
        if best is None or growth < best[0] - 1e-12:
            best = (growth, z, scales)
    assert best is not None
    return best[1], best[2]


#: most a tensor's quantization step may grow to share its siblings' zero point
SIBLING_MAX_GROWTH = 1.15


def align_sibling_zero_points(
    graph: ir.Graph, ranges: dict[str, tuple[float, float]], activation_type: str
) -> int:
    """Give the outputs of MatMuls that read one input with constant 2-D weights (attention's
    query, key and value projections) one zero point, widening each range as little as it
    takes (at most :data:`SIBLING_MAX_GROWTH` of its step), so ``fuse-qdq-sibling-matmuls``
    can run them as one integer GEMM with the same integers. Returns the tensors changed."""
    if activation_type != "uint8":
        return 0  # symmetric int8: every zero point is 0 already
    groups: dict[int, list[str]] = {}
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        wa = _const(w)
        if x is None or wa is None or wa.ndim != 2 or y.name not in ranges:
            continue
        groups.setdefault(id(x), []).append(y.name)  # type: ignore[arg-type]
    changed = 0
    for names in groups.values():
        if len(names) < 2:
            continue
        params = [activation_qparams(*ranges[n], activation_type) for n in names]
        parts = [(float(s), int(z)) for s, z in params]
        if len({z for _, z in parts}) == 1:
            continue
        z, scales = common_zero_point(parts)
        if max(new / s for new, (s, _) in zip(scales, parts, strict=True)) > SIBLING_MAX_GROWTH:
            continue
        for name, new in zip(names, scales, strict=True):
            ranges[name] = (-z * new, (255 - z) * new)
            changed += 1
    return changed


def param_roots(plan: QdqPlan) -> dict[ir.Value, ir.Value]:
    """Each quantized activation tensor -> the tensor whose range gives its parameters.

    Data movement shares its input's parameters; embedding outputs are their own roots:
    their parameters are the table's, not calibrated.
    """
    roots: dict[ir.Value, ir.Value] = {}
    for n in plan.nodes:
        for i in plan.inputs[n]:
            v = n.inputs[i]
            if v is not None and _const(v) is None:
                roots.setdefault(v, v)
    for n in plan.nodes:  # graph order: a shared op's input root is known before it
        for y in plan.all_outputs(n):
            if n.op_type in SHARED and n not in plan.embedding:
                x = n.inputs[0]
                assert x is not None
                roots[y] = roots.get(x, x)
            else:
                roots[y] = y
    return roots
