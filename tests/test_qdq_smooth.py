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

from graphopt import data, runtime
from graphopt.budget import Budget
from graphopt.core import get_pass
from graphopt.core.pass_base import PassContext

K, N = 64, 32


def _model() -> tuple[ir.Model, np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    w[:3] *= 0.02  # the outlier channels' rows are small: every channel matters in y
    nodes = [pt.node("MatMul", ["x", "W"], ["h"]), pt.node("Relu", ["h"], ["y"])]
    model = pt.make_model(nodes, [pt.vi("x", [8, K])], [pt.vi("y", [8, N])], [pt.init("W", w)])
    return model, w


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal((8, K)).astype(np.float32)
        x[:, :3] *= 50.0  # outlier channels, as in transformer activations
        out.append({"x": x})
    return out


def _quantize(smooth: float) -> tuple[ir.Model, object]:
    model, _ = _model()
    cls = get_pass("qdq-insert")
    p = cls(cls.Options(smooth=smooth), PassContext(data=data.Samples(_feeds(8, 1), "t")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p(model)
    return model, p


def _cosine(model: ir.Model) -> float:
    reference, _ = _model()
    feeds = _feeds(4, 2)  # held out from calibration
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
