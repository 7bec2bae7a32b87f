"""quantize-dynamic: MatMul/Gemm with constant weights -> com.microsoft.DynamicQuantizeMatMul.

Golden structure on small synthetic models (ops, int8 weights, per-column scales, folded Gemm
attributes, bias, opset import, provenance, stats), outputs on ONNX Runtime CPU close to float,
idempotence, options, skip reasons, and the shipped demo CNN through ``run_pipeline`` (top-1
within one point of float, smaller file).
"""

from __future__ import annotations

import warnings

import graphopt.passes.quantize.quantize_dynamic as qd  # registers quantize-dynamic
import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.accuracy.tolerance import compare_arrays
from graphopt.cli import demo
from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PROVENANCE_KEY
from graphopt.inputs import data

PASS = "quantize-dynamic"
K, H, N = 64, 48, 32


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((K, H)).astype(np.float32) / 8,
        "w2": rng.standard_normal((N, H)).astype(np.float32) / 8,  # Gemm transB=1: [N, H]
        "b2": rng.standard_normal(N).astype(np.float32),
        "w3": rng.standard_normal((N, N)).astype(np.float32) / 8,  # Gemm transB=0: [K, N]
        "b3": rng.standard_normal((1, N)).astype(np.float32),
    }


def _model() -> ir.Model:
    """x[batch, K] -> MatMul -> Relu -> Gemm(transB=1, C[N]) -> Gemm(alpha, beta, C[1, N])."""
    w = _weights()
    return pt.make_model(
        [
            pt.node("MatMul", ["x", "w1"], ["h"]),
            pt.node("Relu", ["h"], ["r"]),
            pt.node("Gemm", ["r", "w2", "b2"], ["g"], transB=1),
            pt.node("Gemm", ["g", "w3", "b3"], ["y"], alpha=0.5, beta=2.0),
        ],
        [pt.vi("x", ["batch", K])],
        [pt.vi("y", ["batch", N])],
        [pt.init(k, v) for k, v in w.items()],
    )


def _feeds(model: ir.Model, batch: int = 16) -> list[pt.Feed]:
    return pt.random_feeds(model, count=2, dims={"batch": batch})


def test_golden_structure() -> None:
    model = _model()
    w = _weights()
    _, p = pt.apply_and_check(model, PASS, feeds=_feeds(model))
    assert pt.op_counts(model) == {"DynamicQuantizeMatMul": 3, "Relu": 1}
    assert model.opset_imports["com.microsoft"] == 1
    assert p.stats == {
        "quantized:MatMul": 1,
        "quantized:Gemm": 2,
        "weights_quantized": 3,
    }
    nodes = {n.name: n for n in model.graph}
    expect = {  # node -> (float [K, N] weight it computes with, bias or None)
        "h_node_DynamicQuantizeMatMul": (w["w1"], None),
        "g_node_DynamicQuantizeMatMul": (w["w2"].T, w["b2"]),
        "y_node_DynamicQuantizeMatMul": (0.5 * w["w3"], 2.0 * w["b3"].ravel()),
    }
    for name, (wf, bias) in expect.items():
        node = nodes[name]
        assert node.domain == "com.microsoft"
        assert node.metadata_props[PROVENANCE_KEY] == PASS
        q, scale, zp = (v.const_value.numpy() for v in node.inputs[1:4])
        assert q.dtype == np.int8 and q.shape == wf.shape
        assert scale.dtype == np.float32 and scale.shape == (wf.shape[1],)  # per column
        assert zp.dtype == np.int8 and zp.shape == scale.shape and not zp.any()
        assert q.min() >= -127 and q.max() <= 127
        assert np.abs(q).max(axis=0).min() == 127  # every column uses the full range
        # dequantized weight within half a step of the float one
        assert np.all(np.abs(q * scale - wf) <= scale / 2 + 1e-6)
        if bias is None:
            assert len(node.inputs) == 4
        else:
            b = node.inputs[4].const_value.numpy()
            assert b.shape == (wf.shape[1],) and b.dtype == np.float32
            np.testing.assert_allclose(b, bias, rtol=1e-6)
    # the 1-D Gemm bias is shared, not copied; float weights and the [1, N] bias are gone
    assert nodes["g_node_DynamicQuantizeMatMul"].inputs[4].name == "b2"
    inits = model.graph.initializers
    assert not {"w1", "w2", "w3", "b3"} & set(inits)
    assert model.graph.outputs[0].name == "y"
    assert all(v.dtype in (ir.DataType.INT8, ir.DataType.FLOAT) for v in inits.values())


def test_outputs_close_to_float_on_ort() -> None:
    model = _model()
    before = pt.copy_model(model)
    pt.run_pass(model, PASS)
    feeds = _feeds(before, batch=32)
    cos = pt.output_cosines(before, model, feeds)
    print("quantize-dynamic cosines vs float:", cos)
    assert min(cos) >= 0.999
    # ORT's own graph optimizations keep the result (the kernel is what optimized ORT runs)
    sess = runtime.make_session(model, optimize=True)
    got = runtime.run_feeds(sess, feeds)
    _, want = pt.run_model(before, feeds)
    assert compare_arrays(got[0][0], want[0][0])["cosine"] >= 0.999


def test_matmul_with_3d_activation_and_shared_weight() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((K, K)).astype(np.float32)
    model = pt.make_model(
        [pt.node("MatMul", ["x", "w"], ["a"]), pt.node("MatMul", ["a", "w"], ["y"])],
        [pt.vi("x", [2, "seq", K])],
        [pt.vi("y", [2, "seq", K])],
        [pt.init("w", w)],
    )
    before = pt.copy_model(model)
    _, p = pt.apply_and_check(model, PASS, feeds=_feeds(model))
    assert p.stats == {"quantized:MatMul": 2, "weights_quantized": 1}
    a, b = pt.nodes_of(model, "DynamicQuantizeMatMul")
    assert a.inputs[1] is b.inputs[1] and a.inputs[2] is b.inputs[2]  # one int8 copy
    assert min(pt.output_cosines(before, model, pt.random_feeds(before, dims={"seq": 7}))) >= 0.999


def test_idempotent() -> None:
    model = _model()
    pt.run_pass(model, PASS)
    pt.assert_idempotent(model, PASS)


def test_per_tensor_and_reduce_range() -> None:
    model = _model()
    before = pt.copy_model(model)
    _, p = pt.run_pass(model, PASS, per_channel=False, reduce_range=True)
    assert p.stats["weights_quantized"] == 3
    for node in pt.nodes_of(model, "DynamicQuantizeMatMul"):
        q, scale, zp = (v.const_value.numpy() for v in node.inputs[1:4])
        assert scale.shape == () and zp.shape == ()
        assert np.abs(q).max() == 63  # 7-bit weights
    assert min(pt.output_cosines(before, model, _feeds(before))) >= 0.99


def test_exclude_and_op_types() -> None:
    model = _model()
    _, p = pt.run_pass(model, PASS, exclude=["g_node"])
    assert p.stats == {
        "quantized:MatMul": 1,
        "quantized:Gemm": 1,
        "weights_quantized": 2,
        "skipped:excluded": 1,
    }
    assert [n.name for n in pt.nodes_of(model, "Gemm")] == ["g_node"]
    assert "w2" in model.graph.initializers

    model = _model()
    _, p = pt.run_pass(model, PASS, op_types=["Gemm"])
    assert p.stats == {"quantized:Gemm": 2, "weights_quantized": 2}
    assert pt.op_counts(model)["MatMul"] == 1


def test_skip_reasons() -> None:
    rng = np.random.default_rng(2)
    f = rng.standard_normal
    model = pt.make_model(
        [
            pt.node("MatMul", ["x", "x2"], ["aa"]),  # activation x activation
            pt.node("Gemm", ["xt", "wk", "bias"], ["ta"], transA=1),
            pt.node("Gemm", ["x", "wk", "per_row"], ["pr"]),  # C [M, N]: per-row bias
            pt.node("Gemm", ["x", "wk", "x_bias"], ["rb"]),  # C computed at run time
            pt.node("MatMul", ["x", "w3d"], ["r3"]),  # 3-D weight
            pt.node("MatMul", ["h", "w16"], ["hf"]),  # float16 weight
        ],
        [
            pt.vi("x", [4, K]),
            pt.vi("x2", [K, 4]),
            pt.vi("xt", [K, 4]),
            pt.vi("x_bias", [N]),
            pt.vi("h", [4, K], onnx.TensorProto.FLOAT16),
        ],
        [pt.vi(o, None) for o in ("aa", "ta", "pr", "rb", "r3")]
        + [pt.vi("hf", None, onnx.TensorProto.FLOAT16)],
        [
            pt.init("wk", f((K, N)).astype(np.float32)),
            pt.init("bias", f(N).astype(np.float32)),
            pt.init("per_row", f((4, N)).astype(np.float32)),
            pt.init("w3d", f((2, K, N)).astype(np.float32)),
            pt.init("w16", f((K, N)).astype(np.float16)),
        ],
    )
    result, p = pt.run_pass(model, PASS)
    assert not result.modified
    assert p.stats == {
        "skipped:weight_not_constant": 1,
        "skipped:transA": 1,
        "skipped:bias_shape": 1,
        "skipped:bias_not_constant": 1,
        "skipped:weight_rank": 1,
        "skipped:weight_dtype": 1,
    }
    assert "com.microsoft" not in model.opset_imports
    assert not pt.created_by(model, PASS)


def test_gemm_without_bias_and_scalar_bias() -> None:
    rng = np.random.default_rng(3)
    model = pt.make_model(
        [
            pt.node("Gemm", ["x", "w"], ["a"], transB=1),
            pt.node("Gemm", ["a", "v", "c"], ["y"], beta=0.5),
        ],
        [pt.vi("x", ["batch", K])],
        [pt.vi("y", ["batch", N])],
        [
            pt.init("w", rng.standard_normal((H, K)).astype(np.float32)),
            pt.init("v", rng.standard_normal((H, N)).astype(np.float32)),
            pt.init("c", np.array([1.5], np.float32)),
        ],
    )
    _, p = pt.apply_and_check(model, PASS, feeds=_feeds(model))
    assert p.stats == {"quantized:Gemm": 2, "weights_quantized": 2}
    a, y = pt.nodes_of(model, "DynamicQuantizeMatMul")
    assert len(a.inputs) == 4
    np.testing.assert_allclose(y.inputs[4].const_value.numpy(), np.full(N, 0.75, np.float32))


def test_options() -> None:
    opts = get_pass(PASS).Options()
    assert opts.op_types == ["MatMul", "Gemm"] and opts.per_channel and not opts.reduce_range
    with pytest.raises(ValueError, match="cannot quantize Conv"):
        get_pass(PASS).Options(op_types=["Conv"])
    assert get_pass(PASS).tolerance.min_cosine == 0.99


def test_quantize_symmetric_int8_helper() -> None:
    w = np.array([[1.0, -2.0], [-0.5, 0.0]], np.float32)
    q, s = qd.quantize_symmetric_int8(w, per_channel=True)
    np.testing.assert_allclose(s, [1 / 127, 2 / 127], rtol=1e-6)
    assert q.tolist() == [[127, -127], [-64, 0]]
    q, s = qd.quantize_symmetric_int8(np.zeros((3, 2), np.float32), per_channel=False)
    assert s == 1.0 and not q.any()


# ------------------------------------------------------------------ the shipped demo CNN
@pytest.fixture(scope="module")
def demo_run() -> dict:
    model_path, data_path = demo.demo_files()
    model = gir.load_model(model_path)
    samples = data.load_data(model, data_path, batch=50)
    labels = np.load(data_path)["label"]
    float_acc = demo.top1_accuracy(model, samples, labels)
    file_bytes = model_path.stat().st_size
    cleaned = pt.copy_model(model)
    run_pipeline(cleaned, "cleanup")
    float_bytes = len(gir.serialize(cleaned))  # the float model after the lossless cleanup
    with warnings.catch_warnings():  # numpy warns about the infinite atol of the tolerance
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_pipeline(model, "cleanup,quantize-dynamic", samples=samples.head(2))
    return {
        "model": model,
        "acc": demo.top1_accuracy(model, samples, labels),
        "float_acc": float_acc,
        "file_bytes": file_bytes,
        "float_bytes": float_bytes,
        "bytes": len(gir.serialize(model)),
        "report": result.report,
    }


def test_demo_accuracy_and_size(demo_run: dict) -> None:
    print(
        f"demo top-1 float {demo_run['float_acc']:.4f} -> dynamic int8 {demo_run['acc']:.4f}; "
        f"bytes {demo_run['file_bytes']} (file), {demo_run['float_bytes']} (cleanup) "
        f"-> {demo_run['bytes']}"
    )
    assert demo_run["acc"] >= demo_run["float_acc"] - 0.01
    assert demo_run["bytes"] < demo_run["float_bytes"] <= demo_run["file_bytes"]
    model = demo_run["model"]
    assert pt.op_counts(model)["DynamicQuantizeMatMul"] == 2
    assert pt.op_counts(model)["Gemm"] == 0
    step = demo_run["report"]["passes"][-1]
    assert step["pass"] == PASS and step["modified"]
    assert step["stats"] == {"quantized:Gemm": 2, "weights_quantized": 2}
    assert step["verify"]["passed"]
    assert step["verify"]["outputs"]["logits"]["cosine"] > 0.999
