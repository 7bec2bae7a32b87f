"""qdq-insert smoothing (SmoothQuant): activation outlier channels move into the weights.

A MatMul whose input has a few channels 50x larger than the rest (with small weights, so every
channel matters in the output) loses the small channels under per-tensor activation
quantization; dividing x by s and multiplying W's rows by s is
exact in float and must make the int8 model measurably closer to float.
"""

from __future__ import annotations

import warnings

import graphopt.passes.quantize.insert_qdq  # noqa: F401  (registers qdq-insert)
import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest

from graphopt import runtime
from graphopt.accuracy.budget import Budget
from graphopt.core import get_pass
from graphopt.core.pass_base import PassContext
from graphopt.inputs import data

K, N = 64, 32


def _model() -> tuple[ir.Model, np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    w[:3] *= 0.02  # the outlier channels' rows are small: every channel matters in y
    nodes = [pt.node("MatMul", ["x", "W"], ["h"]), pt.node("Relu", ["h"], ["y"])]
    model = pt.make_model(nodes, [pt.vi("x", [8, K])], [pt.vi("y", [8, N])], [pt.init("W", w)])
    return model, w


def _feeds(count: int, seed: int, outliers: float = 50.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal((8, K)).astype(np.float32)
        x[:, :3] *= outliers  # outlier channels, as in transformer activations
        out.append({"x": x})
    return out


def _quantize(smooth: float, outliers: float = 50.0, **options: object) -> tuple[ir.Model, object]:
    model, _ = _model()
    cls = get_pass("qdq-insert")
    samples = data.Samples(_feeds(8, 1, outliers), "t")
    options.setdefault("budget", "none")  # int8 everywhere: the error is what is measured
    p = cls(cls.Options(smooth=smooth, **options), PassContext(data=samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p(model)
    return model, p


def _cosine(model: ir.Model, outliers: float = 50.0) -> float:
    reference, _ = _model()
    feeds = _feeds(4, 2, outliers)  # held out from calibration
    ref = runtime.run_feeds(runtime.make_session(reference, optimize=False), feeds)
    got = runtime.run_feeds(runtime.make_session(model, optimize=True), feeds)
    return Budget.parse("cosine>=0").measure(ref, got)


def test_smoothing_makes_int8_closer_to_float() -> None:
    plain, _ = _quantize(0.0)
    smoothed, p = _quantize(0.7)
    c_plain, c_smooth = _cosine(plain), _cosine(smoothed)
    print(f"cosine to float: plain {c_plain:.5f}, smoothed {c_smooth:.5f}")
    assert p.stats["smoothed_matmuls"] == 1 and p.details["smoothed_inputs"] == 1
    assert 1 - c_smooth < (1 - c_plain) / 2  # at least halves the error


def test_smoothing_structure_is_exact_in_float() -> None:
    model, _ = _quantize(0.7)
    _, w = _model()
    mm = next(n for n in model.graph if n.op_type == "MatMul")
    x_dq = mm.inputs[0].producer()
    q = x_dq.inputs[0].producer()
    mul = q.inputs[0].producer()
    assert (x_dq.op_type, q.op_type, mul.op_type) == ("DequantizeLinear", "QuantizeLinear", "Mul")
    assert mul.inputs[0].name == "x"
    inv = mul.inputs[1].const_value.numpy()
    assert inv.shape == (K,) and np.all(inv > 0)
    # outlier channels are divided more than the others
    assert inv[:3].max() < inv[3:].min()
    w_dq = mm.inputs[1].producer()
    wq, ws = (v.const_value.numpy() for v in w_dq.inputs[:2])
    deq = wq.astype(np.float64) * ws[None, :]
    want = w.astype(np.float64) / inv[:, None]  # W * s
    assert np.all(np.abs(deq - want) <= ws[None, :] / 2 + 1e-6)
    # the activation scale covers the exact range of x / s on the calibration data
    lo = min(float((f["x"] * inv).min()) for f in _feeds(8, 1))
    hi = max(float((f["x"] * inv).max()) for f in _feeds(8, 1))
    scale = float(q.inputs[1].const_value.numpy())
    zp = int(q.inputs[2].const_value.numpy())
    assert (0 - zp) * scale <= lo + scale and (255 - zp) * scale >= hi - scale
    assert "W" not in model.graph.initializers  # the float weight is gone


def test_smoothing_is_idempotent_and_validated() -> None:
    model, _ = _quantize(0.7)
    cls = get_pass("qdq-insert")
    again = cls(cls.Options(smooth=0.7), PassContext(data=data.Samples(_feeds(2, 1), "t")))
    assert not again(model).modified
    with pytest.raises(ValueError, match="smooth must be in"):
        cls.Options(smooth=1.5)


def test_smoothing_only_where_the_error_estimate_says_it_pays() -> None:
    """Without outlier channels smoothing buys little: the estimate says so and the Mul is
    not paid for; smooth_gain=1 smooths anyway, and the measured error agrees."""
    _, p = _quantize(0.7)
    assert p.details["smoothing_error_gain"]["min"] > 2.0  # outliers: a big estimated gain
    flat, p = _quantize(0.7, outliers=1.0)
    gain = p.details["smoothing_error_gain"]["max"]
    assert gain < 2.0 and p.details["smoothed_inputs"] == 0
    assert p.details["smoothing_not_worth_it"] == 1
    assert not any(n.op_type == "Mul" for n in flat.graph)
    forced, p = _quantize(0.7, outliers=1.0, smooth_gain=1.0)
    assert p.details["smoothed_inputs"] == 1 and any(n.op_type == "Mul" for n in forced.graph)
    err_plain, err_forced = 1 - _cosine(flat, 1.0), 1 - _cosine(forced, 1.0)
    print(f"flat channels: estimated gain {gain:.2f}, measured {err_plain / err_forced:.2f}")
    assert err_forced > err_plain / 2  # smoothing did not halve the error here


def test_error_estimate_matches_simulated_rounding() -> None:
    """int8_matmul_error against fake-quantized numpy on random data (within 20%)."""
    from graphopt.passes.quantize.qdq_smooth import int8_matmul_error

    rng = np.random.default_rng(3)
    x = rng.standard_normal((4096, K)) * np.linspace(0.2, 3.0, K)
    w = rng.standard_normal((K, N)) * 0.1
    lo, hi = x.min(), x.max()
    step = (hi - lo) / 255
    xq = np.round((x - lo) / step) * step + lo
    ws = np.abs(w).max(axis=0) / 127
    wq = np.round(w / ws) * ws
    measured = float(np.mean(np.sum((xq @ wq - x @ w) ** 2, axis=1)))
    estimate = int8_matmul_error(hi - lo, np.mean(x * x, axis=0), w, 127)
    assert 0.8 < measured / estimate < 1.2


def test_smooth_gain_is_validated() -> None:
    with pytest.raises(ValueError, match="smooth_gain"):
        get_pass("qdq-insert").Options(smooth_gain=0.5)
