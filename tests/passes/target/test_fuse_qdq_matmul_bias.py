"""fuse-qdq-matmul-bias: an int8 MatMul and its bias Add become one MatMulIntegerToFloat with
the bias; what ONNX Runtime runs must be unchanged, and the Add gone from its graph."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.quantize import fusion

from graphopt.core.build import MS_DOMAIN
from graphopt.core.pass_base import PassContext
from graphopt.core.registry import get_pass
from graphopt.core.runner import run_pipeline

PASS = "fuse-qdq-matmul-bias"
LAYERS = 2


@pytest.fixture(scope="module")
def quantized_bert() -> ir.Model:
    """tiny_bert in int8 as the cpu-int8 preset leaves it on a CPU where SkipLayerNormalization
    is slower (the residual Adds blocked from it, so the bias Adds stay separate in ORT's
    graph); no guard: int8 everywhere."""
    model = pt.tiny_bert(LAYERS)
    feeds = pt.tiny_bert_feeds(8, seed=1)
    context = pt.make_context(model, data=feeds, target="cpu")
    run_pipeline(
        model,
        "qdq-insert{target=cpu,guard=false,budget=none},avoid-slow-fusions{decide=block}",
        context=context,
        verify_each=False,
    )
    return model


def _optimized_ops(model: ir.Model) -> list[tuple[str, int]]:
    """(op type, input count) of ORT's optimized graph, as deployed."""
    return [(n.op_type, len(n.input)) for n in fusion.optimized_graph(model).graph.node]


def _ort_outputs(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    from graphopt import runtime

    sess = runtime.make_session(model, optimize=True)
    return [out for outs in runtime.run_feeds(sess, feeds) for out in outs]


def test_bias_adds_go_into_the_integer_kernel(quantized_bert: ir.Model) -> None:
    model = pt.copy_model(quantized_bert)
    before_ops = _optimized_ops(model)
    result, p = pt.run_pass(model, PASS)
    assert result.modified
    # per layer: the attention output projection and the two FFN layers
    assert p.stats["fused"] == 3 * LAYERS
    fused = pt.created_by(model, PASS)
    assert len(fused) == 3 * LAYERS
    for node in fused:
        assert node.domain == MS_DOMAIN and node.op_type == "MatMulIntegerToFloat"
        assert len(node.inputs) == 7
        a, b, a_scale, b_scale, a_zp, _, bias = node.inputs
        assert a.producer().op_type == "QuantizeLinear"  # the quantized activation itself
        assert b.const_value is not None and b.dtype == ir.DataType.INT8
        assert bias.const_value is not None and bias.shape == ir.Shape([b.shape[1]])
        assert b_scale.shape == ir.Shape([b.shape[1]])  # per output column
        assert a_scale.const_value is not None and a_zp.dtype == ir.DataType.UINT8
    assert model.opset_imports[MS_DOMAIN] == 1
    # ORT ran those MatMuls as MatMulIntegerToFloat before too, but with a separate Add (or
    # a BiasGelu where the GELU follows; a Gelu now)
    after_ops = _optimized_ops(model)
    with_bias = [op for op in after_ops if op == ("MatMulIntegerToFloat", 7)]
    assert len(with_bias) == 3 * LAYERS
    assert not [op for op in before_ops if op == ("MatMulIntegerToFloat", 7)]
    n_adds = sum(op[0] in ("Add", "BiasGelu") for op in before_ops)
    assert sum(op[0] in ("Add", "BiasGelu") for op in after_ops) == n_adds - 3 * LAYERS


def test_what_onnx_runtime_runs_is_unchanged(quantized_bert: ir.Model) -> None:
    model = pt.copy_model(quantized_bert)
    feeds = pt.tiny_bert_feeds(4, seed=7)
    want = _ort_outputs(model, feeds)
    pt.run_pass(model, PASS)
    got = _ort_outputs(model, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))
    # and within the declared tolerance where verify-each compares (optimizations off)
    pt.assert_same_outputs(quantized_bert, model, get_pass(PASS).tolerance, feeds)


def test_idempotent_and_says_why_on_a_second_run(quantized_bert: ir.Model) -> None:
    model = pt.copy_model(quantized_bert)
    pt.run_pass(model, PASS)
    pt.assert_idempotent(model, PASS)
    _, p = pt.run_pass(model, PASS)
    assert f"({3 * LAYERS} already fused)" in p.declined


def test_float_model_and_cuda_target_decline_with_a_reason(quantized_bert: ir.Model) -> None:
    float_model = pt.tiny_bert(1)
    result, p = pt.run_pass(float_model, PASS)
    assert not result.modified and "follows qdq-insert" in p.declined
    model = pt.copy_model(quantized_bert)
    original = pt.to_bytes(model)
    result, p = pt.run_pass(model, PASS, context=PassContext(target="cuda"))
    assert not result.modified and "target cuda" in p.declined
    assert pt.to_bytes(model) == original


def _qdq_linear(
    *, bias: np.ndarray, w_axis: int = 1, w_scale_shape: tuple[int, ...] = (4,)
) -> ir.Model:
    """x [2, 3, 8] -> Q -> DQ -> MatMul(DQ(W int8 [8, 4])) -> Add(bias) -> y."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, size=(8, 4)).astype(np.int8)
    nodes = [
        pt.node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        pt.node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        pt.node("DequantizeLinear", ["W", "ws", "wz"], ["wd"], axis=w_axis),
        pt.node("MatMul", ["xd", "wd"], ["mm"]),
        pt.node("Add", ["mm", "bias"], ["y"]),
    ]
    inits = [
        pt.init("xs", np.array(0.02, np.float32)),
        pt.init("xz", np.array(128, np.uint8)),
        pt.init("W", w),
        pt.init("ws", rng.uniform(0.001, 0.01, w_scale_shape).astype(np.float32)),
        pt.init("wz", np.zeros(w_scale_shape, np.int8)),
        pt.init("bias", bias),
    ]
    y_shape = list(np.broadcast_shapes((2, 3, 4), np.shape(bias)))
    return pt.make_model(nodes, [pt.vi("x", [2, 3, 8])], [pt.vi("y", y_shape)], inits)


@pytest.mark.parametrize(
    "bias", [np.arange(4, dtype=np.float32), np.full((1, 1, 4), 0.5, np.float32), np.float32(2)]
)
def test_golden_single_matmul(bias: np.ndarray) -> None:
    model = _qdq_linear(bias=np.asarray(bias))
    original, p = pt.apply_and_check(model, PASS)
    assert p.stats["fused"] == 1
    assert pt.op_sequence(model) == ["QuantizeLinear", "MatMulIntegerToFloat"]
    (node,) = pt.nodes_of(model, "MatMulIntegerToFloat")
    names = [v.name if v is not None else None for v in node.inputs[:6]]
    assert names == ["xq", "W", "xs", "ws", "xz", "wz"]
    np.testing.assert_array_equal(
        node.inputs[6].const_value.numpy(), np.broadcast_to(np.asarray(bias).ravel(), (4,))
    )
    assert node.outputs[0].name == "y"  # the graph output keeps its name
    assert "mm" not in {v.name for n in model.graph for v in n.outputs}
    # one layer: the integer GEMM is the float simulation's arithmetic, up to rounding
    feeds = pt.random_feeds(original, count=3, seed=1)
    want = _ort_outputs(original, feeds)
    got = _ort_outputs(model, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"bias": np.ones((3, 4), np.float32)}, "bias_shape"),  # varies per row
        ({"bias": np.ones((1, 1, 1, 4), np.float32)}, "bias_rank"),  # broadcasts the output up
        ({"bias": np.ones(4, np.float32), "w_axis": 0, "w_scale_shape": (8,)}, "weight_"),
    ],
)
def test_forms_the_kernel_cannot_take_are_left_with_a_reason(kwargs: dict, reason: str) -> None:
    model = _qdq_linear(**kwargs)
    original = pt.to_bytes(model)
    result, p = pt.run_pass(model, PASS)
    assert not result.modified and pt.to_bytes(model) == original
    assert reason in p.declined and any(k.startswith(f"skipped:{reason}") for k in p.stats)
