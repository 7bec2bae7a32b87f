"""fuse-qdq-sibling-matmuls: int8 MatMuls reading one quantized input become one GEMM and a
Split; with aligned zero points (qdq-insert's doing) the integers are the same as before."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.quantize import fusion
from graphopt.passes.quantize.qdq_params import common_zero_point

from graphopt import runtime
from graphopt.core.pass_base import PassContext
from graphopt.core.registry import get_pass
from graphopt.core.runner import run_pipeline

PASS = "fuse-qdq-sibling-matmuls"
LAYERS = 2


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def quantized_bert() -> tuple[ir.Model, object]:
    model = pt.tiny_bert(LAYERS)
    context = pt.make_context(model, data=pt.tiny_bert_feeds(8, seed=1), target="cpu")
    result = run_pipeline(
        model, "qdq-insert{target=cpu,guard=false,budget=none}", context=context, verify_each=False
    )
    return model, result


def _optimized_ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in fusion.optimized_graph(model).graph.node)


def _ort(model: ir.Model, feeds: list) -> list[np.ndarray]:
    sess = runtime.make_session(model, optimize=True)
    return [o for outs in runtime.run_feeds(sess, feeds) for o in outs]


def _sibling_outputs(model: ir.Model) -> list[list[ir.Node]]:
    """The QuantizeLinears of MatMuls that read one input, grouped by that input."""
    groups: dict[int, list[ir.Node]] = {}
    for n in model.graph:
        if n.op_type == "MatMul" and n.inputs[1].producer().inputs[0].const_value is not None:
            (use,) = n.outputs[0].uses()
            if use.node.op_type == "QuantizeLinear":
                x = n.inputs[0].producer().inputs[0]
                groups.setdefault(id(x), []).append(use.node)
    return [g for g in groups.values() if len(g) > 1]


def test_qdq_insert_gives_siblings_one_zero_point(quantized_bert) -> None:
    model, _ = quantized_bert
    groups = _sibling_outputs(model)
    assert len(groups) == LAYERS and all(len(g) == 3 for g in groups)
    for g in groups:
        zps = {int(q.inputs[2].const_value.numpy()) for q in g}
        assert len(zps) == 1, zps


def test_one_gemm_per_group_and_the_same_outputs(quantized_bert) -> None:
    model = pt.copy_model(quantized_bert[0])
    before = _optimized_ops(model)
    feeds = pt.tiny_bert_feeds(4, seed=7)
    want = _ort(model, feeds)
    result, p = pt.run_pass(model, PASS)
    assert result.modified
    assert p.stats["groups_fused"] == LAYERS and p.stats["matmuls_fused"] == 3 * LAYERS
    splits = pt.nodes_of(model, "Split")
    assert len(splits) == LAYERS and all(len(s.outputs) == 3 for s in splits)
    for split in splits:
        dq = split.inputs[0].producer()
        q = dq.inputs[0].producer()
        mm = q.inputs[0].producer()
        assert (dq.op_type, q.op_type, mm.op_type) == (
            "DequantizeLinear",
            "QuantizeLinear",
            "MatMul",
        )
        weight = mm.inputs[1].producer().inputs[0]
        assert weight.shape == ir.Shape([64, 192]) and weight.dtype == ir.DataType.INT8
        for out in split.outputs:  # each part: Q with the common parameters, then its readers
            (use,) = out.uses()
            assert use.node.op_type == "QuantizeLinear"
            assert use.node.inputs[1] is q.inputs[1] and use.node.inputs[2] is q.inputs[2]
    after = _optimized_ops(model)
    # ORT: one QLinearMatMul per group where there were three, the Split on 8-bit data
    assert after["QLinearMatMul"] == before["QLinearMatMul"] - 2 * LAYERS
    assert after["Split"] == LAYERS
    assert after["DequantizeLinear"] == before["DequantizeLinear"]
    assert after["QuantizeLinear"] == before["QuantizeLinear"]
    got = _ort(model, feeds)
    for g, w in zip(got, want, strict=True):
        assert _cosine(g, w) > 0.99999
        np.testing.assert_allclose(g, w, atol=0.02 * float(np.abs(w).max()))
    pt.assert_same_outputs(quantized_bert[0], model, get_pass(PASS).tolerance, feeds)
    pt.assert_idempotent(model, PASS)


def test_declines_with_reasons(quantized_bert) -> None:
    result, p = pt.run_pass(pt.tiny_bert(1), PASS)
    assert not result.modified and "nothing is int8" in p.declined
    model = pt.copy_model(quantized_bert[0])
    result, p = pt.run_pass(model, PASS, context=PassContext(target="cuda"))
    assert not result.modified and "target cuda" in p.declined


def _two_heads(zero_points: tuple[int, int]) -> ir.Model:
    """x -> Q -> DQ -> two MatMuls (int8 weights [8, 4]) -> Q(s_p, z_p) -> DQ -> Reshape ->
    Q -> DQ -> outputs: siblings whose parameters travel through data movement."""
    rng = np.random.default_rng(0)
    nodes = [
        pt.node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        pt.node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
    ]
    inits = [
        pt.init("xs", np.array(0.02, np.float32)),
        pt.init("xz", np.array(128, np.uint8)),
        pt.init("shape", np.array([2, 3, 2, 2], np.int64)),
    ]
    outputs = []
    for p, zp in zip("ab", zero_points, strict=True):
        w = rng.integers(-127, 128, size=(8, 4)).astype(np.int8)
        nodes += [
            pt.node("DequantizeLinear", [f"W{p}", f"ws{p}"], [f"wd{p}"], axis=1),
            pt.node("MatMul", ["xd", f"wd{p}"], [f"m{p}"]),
            pt.node("QuantizeLinear", [f"m{p}", f"s{p}", f"z{p}"], [f"q{p}"]),
            pt.node("DequantizeLinear", [f"q{p}", f"s{p}", f"z{p}"], [f"d{p}"]),
            pt.node("Reshape", [f"d{p}", "shape"], [f"r{p}"]),
            pt.node("QuantizeLinear", [f"r{p}", f"s{p}", f"z{p}"], [f"rq{p}"]),
            pt.node("DequantizeLinear", [f"rq{p}", f"s{p}", f"z{p}"], [f"y{p}"]),
        ]
        inits += [
            pt.init(f"W{p}", w),
            pt.init(f"ws{p}", rng.uniform(0.002, 0.004, 4).astype(np.float32)),
            pt.init(f"s{p}", np.array(0.05, np.float32)),
            pt.init(f"z{p}", np.array(zp, np.uint8)),
        ]
        outputs.append(pt.vi(f"y{p}", [2, 3, 2, 2]))
    return pt.make_model(nodes, [pt.vi("x", [2, 3, 8])], outputs, inits)


def test_zero_points_that_differ_are_left_unless_growth_is_allowed() -> None:
    model = _two_heads((120, 136))
    original = pt.to_bytes(model)
    result, p = pt.run_pass(model, PASS)
    assert not result.modified and pt.to_bytes(model) == original
    assert "zero_points_differ" in p.declined
    reference = pt.copy_model(model)
    result, p = pt.run_pass(model, PASS, max_scale_growth=1.2)
    assert result.modified and p.stats["matmuls_fused"] == 2
    # the new parameters reached the Q/DQ after the Reshape: ORT drops them there
    for name in ("ya", "yb"):
        dq = next(o for o in model.graph.outputs if o.name == name).producer()
        q = dq.inputs[0].producer()
        assert q.inputs[0].producer().op_type == "Reshape"
        assert int(q.inputs[2].const_value.numpy()) == 128 == int(dq.inputs[2].const_value.numpy())
        assert q.inputs[1] is dq.inputs[1]
    ops = _optimized_ops(model)
    # one integer GEMM; the Reshapes on 8-bit data; the only DQs left make the float outputs
    assert ops["QLinearMatMul"] == 1 and ops["DequantizeLinear"] == 2
    feeds = pt.random_feeds(reference, count=3, seed=2)
    pt.assert_same_outputs(reference, model, get_pass(PASS).tolerance, feeds)


def test_aligned_zero_points_fuse_to_the_same_values() -> None:
    model = _two_heads((128, 128))
    reference, p = pt.apply_and_check(model, PASS)
    assert p.stats["matmuls_fused"] == 2
    feeds = pt.random_feeds(reference, count=3, seed=3)
    for g, w in zip(_ort(model, feeds), _ort(reference, feeds), strict=True):
        np.testing.assert_allclose(g, w, atol=0.05 + 1e-6)  # at most one step (0.05) apart


def test_common_zero_point_keeps_each_range_and_grows_steps_least() -> None:
    parts = [(0.1, 120), (0.2, 136), (0.05, 128)]
    z, scales = common_zero_point(parts)
    assert 120 <= z <= 136
    for (s, zp), new in zip(parts, scales, strict=True):
        assert new >= s
        assert (0 - z) * new <= (0 - zp) * s + 1e-9  # the old range still fits
        assert (255 - z) * new >= (255 - zp) * s - 1e-9
    growth = max(n / s for n, (s, _) in zip(scales, parts, strict=True))
    for other in (z - 2, z + 2):  # a neighbour zero point is no better
        worse = max(max((255 - zp) * s / (255 - other), zp * s / other, s) / s for s, zp in parts)
        assert worse >= growth - 1e-12
    assert common_zero_point([(0.1, 77), (0.3, 77)]) == (77, [0.1, 0.3])


def test_macs_are_counted_through_the_target_passes(quantized_bert) -> None:
    """The MAC estimate (prune-channels, tune, bench_prune) sees the fused and integer-kernel
    MatMuls as the same work, though their new values carry no shapes."""
    from graphopt.passes.sparsify.prune_channels import layer_macs

    model = pt.copy_model(quantized_bert[0])
    before = layer_macs(model)
    assert before > 0
    pt.run_pass(model, PASS)
    pt.run_pass(model, "fuse-qdq-matmul-bias")
    assert pt.nodes_of(model, "MatMulIntegerToFloat")
    assert layer_macs(model) == before
