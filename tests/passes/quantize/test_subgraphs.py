"""Weight passes inside If/Loop bodies, and reading body tensors for calibration.

Models: a recurrent Loop written the way tf2onnx writes a Keras LSTM it cannot match (the
weights carried through the body unchanged, a scan output per step), and a CNN whose layers
sit in If branches (a PyTorch ``if`` exported by the TorchScript exporter). Checked:
capture-loop-invariants (golden, ORT numerics, idempotence, what it leaves), calibration
through Loop and If (counts per iteration and per branch taken, a body whose tensor changes
shape), qdq-insert, quantize-dynamic, cluster-weights and sparsify in bodies (integer
kernels ONNX Runtime runs inside the bodies, outputs close to float, idempotence, the report).
"""

from __future__ import annotations

import graphopt.passes  # noqa: F401  (registers the passes)
import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.quantize import fusion
from onnx import helper

from graphopt import ir as gir
from graphopt.calib.collect import collect_stats
from graphopt.calib.expose import body_values, merge_iterations
from graphopt.inputs.data import Samples

T, D, H = 6, 24, 32
BOOL = onnx.TensorProto.BOOL


def _rnn(carried_weights: bool = True, weight_output: bool = False) -> ir.Model:
    """h_t = tanh(x_t W + h_{t-1} R) over T steps in a Loop; ``carried_weights``: W and R
    enter as loop-carried state returned unchanged (tf2onnx), else read from outside."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32)
    r = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
    wn, rn = ("w_in", "r_in") if carried_weights else ("W", "R")
    body_nodes = [
        helper.make_node("Gather", ["x", "i"], ["x_t"], name="gather_step", axis=0),
        helper.make_node("MatMul", ["x_t", wn], ["xw"], name="matmul_x"),
        helper.make_node("MatMul", ["h_in", rn], ["hr"], name="matmul_h"),
        helper.make_node("Add", ["xw", "hr"], ["pre"], name="add_gates"),
        helper.make_node("Tanh", ["pre"], ["h_out"], name="tanh"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cond_copy"),
        helper.make_node("Identity", ["h_out"], ["h_scan"], name="scan_copy"),
    ]
    body_in = [pt.vi("i", [], pt.INT64), pt.vi("cond_in", [], BOOL), pt.vi("h_in", [1, H])]
    body_out = [pt.vi("cond_out", [], BOOL), pt.vi("h_out", [1, H])]
    loop_in, loop_out = ["trip", "keep_going", "h0"], ["h_last"]
    if carried_weights:
        body_in += [pt.vi("w_in", [D, H]), pt.vi("r_in", [H, H])]
        body_out += [pt.vi("w_in", [D, H]), pt.vi("r_in", [H, H])]
        loop_in += ["W", "R"]
        loop_out += ["w_last", "r_last"]
    body_out.append(pt.vi("h_scan", [1, H]))
    loop_out.append("hs")
    body = helper.make_graph(body_nodes, "rnn_body", body_in, body_out)
    outputs = [pt.vi("hs", [T, 1, H]), pt.vi("h_last", [1, H])]
    if weight_output:
        outputs.append(pt.vi("w_last", [D, H]))
    inits = [
        pt.init("trip", np.array(T, np.int64)),
        pt.init("keep_going", np.array(True)),
        pt.init("h0", np.zeros((1, H), np.float32)),
        pt.init("W", w),
        pt.init("R", r),
    ]
    nodes = [helper.make_node("Loop", loop_in, loop_out, name="rnn_loop", body=body)]
    return pt.make_model(nodes, [pt.vi("x", [T, 1, D])], outputs, inits)


def _rnn_feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((T, 1, D)).astype(np.float32)} for _ in range(n)]


def _branchy(weights_in_branch: bool = False) -> ir.Model:
    """Conv-Relu-Conv in the then-branch, one Conv in the else-branch, pooled and classified
    in the main graph. ``weights_in_branch``: the then-branch holds its first weight."""
    rng = np.random.default_rng(0)

    def conv_w(o: int, i: int, k: int) -> np.ndarray:
        return (rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)).astype(np.float32)

    w1, w2, w3 = conv_w(16, 3, 3), conv_w(16, 16, 3), conv_w(16, 3, 3)
    then = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="then_conv1", pads=[1] * 4),
            helper.make_node("Relu", ["c1"], ["r1"], name="then_relu1"),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], name="then_conv2", pads=[1] * 4),
            helper.make_node("Relu", ["c2"], ["then_y"], name="then_relu2"),
        ],
        "then",
        [],
        [pt.vi("then_y", [1, 16, 8, 8])],
        initializer=[pt.init("w1", w1)] if weights_in_branch else [],
    )
    other = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w3"], ["c3"], name="else_conv", pads=[1] * 4),
            helper.make_node("Relu", ["c3"], ["else_y"], name="else_relu"),
        ],
        "else",
        [],
        [pt.vi("else_y", [1, 16, 8, 8])],
    )
    fc = (rng.standard_normal((16, 10)) / 4).astype(np.float32)
    inits = [pt.init("w2", w2), pt.init("w3", w3), pt.init("fc", fc)]
    if not weights_in_branch:
        inits.append(pt.init("w1", w1))
    nodes = [
        helper.make_node(
            "If", ["flag"], ["feat"], name="branch", then_branch=then, else_branch=other
        ),
        helper.make_node("GlobalAveragePool", ["feat"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="classify"),
    ]
    inputs = [pt.vi("x", [1, 3, 8, 8]), pt.vi("flag", [], BOOL)]
    return pt.make_model(nodes, inputs, [pt.vi("logits", [1, 10])], inits)


def _branchy_feeds(flags: list[bool], seed: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32), "flag": np.array(f)}
        for f in flags
    ]


def _body(model: ir.Model, op: str, attr: str = "body") -> ir.Graph:
    node = next(n for n in gir.iter_nodes(model) if n.op_type == op)
    return node.attributes[attr].value


# ------------------------------------------------------------ capture-loop-invariants
def test_capture_golden_and_numerics() -> None:
    model = _rnn()
    feeds = _rnn_feeds(3)
    _, p = pt.apply_and_check(model, "capture-loop-invariants", feeds)
    out = model
    loop = next(n for n in out.graph if n.op_type == "Loop")
    assert [v.name for v in loop.inputs] == ["trip", "keep_going", "h0"]
    assert len(loop.outputs) == 2  # h_last and the scan output
    body = _body(out, "Loop")
    assert [v.name for v in body.inputs] == ["i", "cond_in", "h_in"]
    readers = {n.name: [v.name for v in n.inputs] for n in body}
    assert readers["matmul_x"] == ["x_t", "W"] and readers["matmul_h"] == ["h_in", "R"]
    assert out.graph.initializers["W"].is_initializer()
    assert p.stats == {"captured:Loop": 2}
    assert p.details["loops"] == [{"node": "rnn_loop", "captured": ["W", "R"]}]
    pt.assert_idempotent(out, "capture-loop-invariants")


def test_capture_leaves_a_slot_that_is_a_graph_output() -> None:
    model = _rnn(weight_output=True)
    _, p = pt.apply_and_check(model, "capture-loop-invariants", _rnn_feeds(2))
    assert p.stats == {"captured:Loop": 1}  # R; W's final value is a model output
    loop = next(n for n in model.graph if n.op_type == "Loop")
    assert [v.name for v in loop.inputs] == ["trip", "keep_going", "h0", "W"]


def test_capture_is_a_no_op_without_carried_constants() -> None:
    pt.assert_noop(_rnn(carried_weights=False), "capture-loop-invariants")
    pt.assert_noop(_branchy(), "capture-loop-invariants")


# ------------------------------------------------------------ calibration through bodies
def test_merge_iterations_folds_stacked_axes_into_the_first() -> None:
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    assert merge_iterations(a, 0).shape == (2, 3, 4, 5)
    assert merge_iterations(a, 1).shape == (6, 4, 5)
    assert merge_iterations(a, 2).shape == (24, 5)
    assert merge_iterations(np.zeros((0,), np.float32), 1).shape == (0,)


def test_calibration_reads_every_iteration_of_a_loop_body() -> None:
    model = _rnn(carried_weights=False)
    feeds = _rnn_feeds(3)
    names = ["xw", "h_in", "pre"]
    stats = collect_stats(model, Samples(feeds=feeds, source="t"), names, progress=False)
    assert {n: s.count for n, s in stats.items()} == {n: 3 * T * H for n in names}
    # the values are the body's: the last step's h equals the model's h_last output
    _, outs = pt.run_model(model, feeds[:1])
    hs = outs[0][0]
    assert stats["pre"].max >= float(np.arctanh(np.clip(hs.max(), -0.999999, 0.999999))) - 1e-4


def test_calibration_reads_only_the_if_branch_that_ran() -> None:
    model = _branchy()
    feeds = _branchy_feeds([True, True, False])
    names = ["c1", "c2", "c3"]
    stats = collect_stats(model, Samples(feeds=feeds, source="t"), names, progress=False)
    per_feed = 16 * 8 * 8
    assert {n: s.count for n, s in stats.items()} == {
        "c1": 2 * per_feed,
        "c2": 2 * per_feed,
        "c3": per_feed,
    }
    untaken = collect_stats(model, Samples(feeds=feeds[:2], source="t"), ["c3"], progress=False)
    assert untaken["c3"].count == 0


def _growing_loop() -> ir.Model:
    """A body tensor whose shape grows with the iteration: ORT cannot stack it."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [
            helper.make_node("Add", ["i", "one"], ["end"], name="end_add"),
            helper.make_node("Reshape", ["end", "shape1"], ["end1"], name="end_reshape"),
            helper.make_node("Slice", ["x", "zero1", "end1"], ["prefix"], name="prefix_slice"),
            helper.make_node("MatMul", ["prefix", "W"], ["proj"], name="grow_matmul"),
            helper.make_node(
                "ReduceSum", ["proj", "axes0"], ["s_out"], name="grow_sum", keepdims=0
            ),
            helper.make_node("Add", ["s_in", "s_out"], ["acc"], name="acc_add"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="grow_cond"),
        ],
        "grow_body",
        [pt.vi("i", [], pt.INT64), pt.vi("cond_in", [], BOOL), pt.vi("s_in", [H])],
        [pt.vi("cond_out", [], BOOL), pt.vi("acc", [H])],
    )
    inits = [
        pt.init("trip", np.array(T, np.int64)),
        pt.init("keep_going", np.array(True)),
        pt.init("s0", np.zeros(H, np.float32)),
        pt.init("W", rng.standard_normal((D, H)).astype(np.float32)),
        pt.init("one", np.array(1, np.int64)),
        pt.init("shape1", np.array([1], np.int64)),
        pt.init("zero1", np.array([0], np.int64)),
        pt.init("axes0", np.array([0], np.int64)),
    ]
    nodes = [
        helper.make_node("Flatten", ["x3"], ["x"], name="flat_x", axis=2),
        helper.make_node(
            "Loop", ["trip", "keep_going", "s0"], ["total"], name="grow_loop", body=body
        ),
    ]
    return pt.make_model(nodes, [pt.vi("x3", [T, 1, D])], [pt.vi("total", [H])], inits)


def test_a_body_tensor_that_changes_shape_is_reported_not_fatal() -> None:
    model = _growing_loop()
    feeds = [{"x3": f["x"]} for f in _rnn_feeds(2)]
    unread: dict[str, str] = {}
    stats = collect_stats(
        model, Samples(feeds=feeds, source="t"), ["prefix", "x"], progress=False, unread=unread
    )
    assert "prefix" in unread and "ONNX Runtime could not return it" in unread["prefix"]
    assert stats["x"].count == 2 * T * D  # the main graph's tensors are still calibrated
    _, p = pt.run_pass(
        model, "qdq-insert", data=feeds, check_fusion=False, repair=False, budget="none"
    )
    assert p.details["subgraphs_not_calibrated"].keys() >= {"prefix"}
    assert not any(n.name == "grow_matmul" for n in gir.iter_nodes(model) if n.graph is model.graph)
    assert any("could not be calibrated" in note for note in p.findings.notes)


def test_body_values_names_body_inputs_and_node_outputs() -> None:
    values = body_values(_rnn())
    assert {"i", "cond_in", "h_in", "w_in", "xw", "h_out"} <= values.keys()
    assert "x" not in values and "W" not in values  # the main graph's own


# ------------------------------------------------------------ weight passes in bodies
def test_qdq_insert_quantizes_inside_if_branches() -> None:
    model = _branchy()
    feeds = _branchy_feeds([True, False] * 4)
    ref = pt.copy_model(model)
    _, p = pt.run_pass(model, "qdq-insert", data=feeds, budget="none")
    then, other = _body(model, "If", "then_branch"), _body(model, "If", "else_branch")
    for branch, convs in ((then, 2), (other, 1)):
        dq = [n for n in branch if n.op_type == "DequantizeLinear"]
        assert len(dq) >= 2 * convs  # activation and weight DQs live in the branch
        assert all(n.inputs[1].name in branch.initializers for n in dq)  # their scales too
    report = fusion.check_fusion(model, p.quantized)
    assert report.unfused == []
    assert report.ops.get("QLinearConv") == 3
    assert p.details["subgraphs"] == {"branch/then_branch": 2, "branch/else_branch": 1}
    assert min(pt.output_cosines(ref, model, feeds)) > 0.999
    pt.assert_idempotent(model, "qdq-insert", data=feeds, budget="none")


def test_qdq_insert_quantizes_the_steps_of_a_tf2onnx_style_loop() -> None:
    model = _rnn()
    feeds = _rnn_feeds(4)
    ref = pt.copy_model(model)
    pt.run_pass(model, "capture-loop-invariants")
    _, p = pt.run_pass(model, "qdq-insert", data=feeds, budget="none")
    body = _body(model, "Loop")
    assert {n.name for n in body if n.op_type == "MatMul"} == {"matmul_x", "matmul_h"}
    report = fusion.check_fusion(model, p.quantized)
    assert "matmul_x" in report.fused and not report.unfused
    # ORT folds h R + x W into one float FusedGemm (MatMulAddFusion) before its QDQ
    # fusion sees the int8 MatMul: the repair gives it its float inputs back, and says so
    assert p.details.get("kept_float", {}).get("matmul_h") in (None, "unfused")
    assert p.stats["in_subgraphs"] == len(p.quantized) >= 1
    assert min(pt.output_cosines(ref, model, feeds)) > 0.999


def test_an_if_branch_data_never_took_stays_float_with_the_reason() -> None:
    model = _branchy()
    feeds = _branchy_feeds([True] * 4)
    _, p = pt.run_pass(model, "qdq-insert", data=feeds, budget="none")
    assert "c3" in p.details["no_finite_values"]
    other = _body(model, "If", "else_branch")
    conv = next(n for n in other if n.op_type == "Conv")
    assert conv.inputs[1].name == "w3"  # float weight, no DQ
    assert any("If branch DATA never took" in note for note in p.findings.notes)


def test_quantize_dynamic_in_a_loop_body_keeps_weights_outside() -> None:
    model = _rnn()
    feeds = _rnn_feeds(3)
    ref = pt.copy_model(model)
    pt.run_pass(model, "capture-loop-invariants")
    _, p = pt.apply_and_check(model, "quantize-dynamic", feeds)
    out = model
    body = _body(out, "Loop")
    assert [n.op_type for n in body].count("DynamicQuantizeMatMul") == 2
    assert {"W_quantized", "R_quantized"} <= out.graph.initializers.keys()
    assert "W" not in out.graph.initializers and "R" not in out.graph.initializers
    assert p.details["subgraphs"] == {"rnn_loop/body": 2}
    assert min(pt.output_cosines(ref, out, feeds)) > 0.999


def test_quantize_dynamic_declines_on_carried_weights_until_cleanup() -> None:
    model = _rnn()
    _, p = pt.run_pass(model, "quantize-dynamic")
    assert p.declined and "weight_not_constant" in p.declined
    assert "inside If/Loop bodies left alone" not in p.declined


def test_cluster_weights_decodes_a_branch_weight_in_its_branch() -> None:
    model = _branchy(weights_in_branch=True)
    feeds = _branchy_feeds([True, False])
    _, p = pt.apply_and_check(model, "cluster-weights", feeds, min_size=100)
    then = _body(model, "If", "then_branch")
    assert "w1" not in then.initializers  # replaced by its codebook and indices, decoded here
    assert any(n.op_type == "Reshape" and n.outputs[0].name == "w1" for n in then)
    assert p.details["subgraphs"] == {"branch/then_branch": 1}


@pytest.mark.parametrize("criterion", ["magnitude", "activation"])
def test_sparsify_reaches_branch_layers(criterion: str) -> None:
    model = _branchy()
    feeds = _branchy_feeds([True, False, True, False])
    _, p = pt.run_pass(
        model, "sparsify", data=feeds, criterion=criterion, min_size=100, skip_first_last=False
    )
    layers = {d["node"]: d["sparsity"] for d in p.details["layers"].values()}
    assert {"then_conv1", "then_conv2", "else_conv"} <= layers.keys()
    assert all(s >= 0.49 for s in layers.values())
    assert p.stats["in_subgraphs"] == 3


def test_the_budget_tells_trials_apart_by_their_bodies() -> None:
    """Trials that differ only inside a branch are measured each (the trial cache once keyed
    on the main graph alone: every node looked harmless and the budget failed)."""
    model = _branchy()
    feeds = _branchy_feeds([True, False] * 4)
    _, p = pt.run_pass(model, "qdq-insert", data=feeds, budget="cosine>=0.9999999")
    budget = p.details["budget"]
    assert any(v > 0 for v in budget["sensitivity"].values()), budget
    assert budget["met"] and budget["final"] > budget["quantized_all"]
