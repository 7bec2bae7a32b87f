"""quantize-attention: com.microsoft Attention -> QAttention, masks proven by probing.

The model is what fuse-ort-kernels leaves of a BERT layer: a packed Attention whose additive
``attention_bias`` is an exporter's mask chain, ``(1 - mask) * -10000`` broadcast to
[batch, 1, query, key], then an output projection. Golden structure, ORT numerics on padded
feeds, the mask proof's refusals, the timing decision (scripted) and idempotence.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest
from onnx import TensorProto, helper

from graphopt import runtime

SEQ, HIDDEN, HEADS = 16, 32, 4


def _model(bias: str = "mask", fill: float = -10000.0, concat: bool = False) -> ir.Model:
    """x [1, SEQ, HIDDEN], mask [1, SEQ] int64 -> Attention -> MatMul -> y. ``bias``: "mask"
    (the padding-mask chain), "causal" (a constant causal bias) or "none"; ``concat``: the
    q/k/v weights and biases packed by Concat nodes, as fuse-ort-kernels leaves dynamo's."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((HIDDEN, 3 * HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    w[:, 3] *= 8.0  # an outlier column, as LayerNorm outputs meet them
    b = (rng.standard_normal(3 * HIDDEN) * 0.1).astype(np.float32)
    wo = (rng.standard_normal((HIDDEN, 8)) / np.sqrt(HIDDEN)).astype(np.float32)
    inits = [pt.init("wo", wo)]
    nodes = []
    if concat:
        for k, part in enumerate("qkv"):
            cols = slice(k * HIDDEN, (k + 1) * HIDDEN)
            inits += [pt.init(f"w{part}", w[:, cols]), pt.init(f"b{part}", b[cols])]
        nodes += [
            pt.node("Concat", ["wq", "wk", "wv"], ["w"], axis=1),
            pt.node("Concat", ["bq", "bk", "bv"], ["b"], axis=0),
        ]
    else:
        inits += [pt.init("w", w), pt.init("b", b)]
    attention_inputs = ["x", "w", "b"]
    if bias == "mask":
        inits += [
            pt.init("one", np.array(1.0, np.float32)),
            pt.init("fill", np.array(fill, np.float32)),
            pt.init("axes", np.array([1, 2], np.int64)),
            pt.init("shape", np.array([1, 1, SEQ, SEQ], np.int64)),
        ]
        nodes += [
            pt.node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
            pt.node("Sub", ["one", "mf"], ["inv"]),
            pt.node("Mul", ["inv", "fill"], ["add"]),
            pt.node("Unsqueeze", ["add", "axes"], ["add4"]),
            pt.node("Expand", ["add4", "shape"], ["bias"]),
        ]
        attention_inputs += ["", "", "bias"]
    elif bias == "zeros":  # the dynamo exporter's all-true SDPA mask: zeros from shapes
        inits += [
            pt.init("zero", np.zeros((1, 1, 1, 1), np.float32)),
            pt.init("axes", np.array([0, 1], np.int64)),
        ]
        nodes += [
            pt.node("Shape", ["x"], ["xs"], start=1, end=2),
            pt.node("Concat", ["xs", "xs"], ["ss"], axis=0),
            pt.node("Unsqueeze", ["ss", "axes"], ["ss4"]),  # not a shape: exercise the walk
            pt.node("Expand", ["zero", "ss"], ["bias0"]),
            pt.node("Identity", ["bias0"], ["bias"]),
        ]
        attention_inputs += ["", "", "bias"]
    elif bias == "causal":
        causal = np.triu(np.full((SEQ, SEQ), -10000.0, np.float32), 1)[None, None]
        inits.append(pt.init("bias", causal))
        attention_inputs += ["", "", "bias"]
    nodes += [
        helper.make_node(
            "Attention", attention_inputs, ["att"], domain="com.microsoft", num_heads=HEADS
        ),
        pt.node("MatMul", ["att", "wo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, HIDDEN]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [1, SEQ]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, 8])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    return ir.serde.deserialize_model(proto)


def _feeds(count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    feeds = []
    for k in range(count):
        mask = np.ones((1, SEQ), np.int64)
        mask[:, SEQ - 3 * k :] = 0 if k else 1  # padded tails of 0, 3, 6, 9 tokens
        x = rng.standard_normal((1, SEQ, HIDDEN)).astype(np.float32)
        x[..., 5] *= 20.0  # an outlier channel: what smoothing is for
        feeds.append({"x": x, "mask": mask})
    return feeds


def _unmasked_cosines(before: ir.Model, after: ir.Model, feeds: list) -> list[float]:
    """Cosine of the outputs at real (unpadded) positions, per feed."""
    out = []
    for feed in feeds:
        a = runtime.make_session(before).run(None, feed)[0]
        b = runtime.make_session(after).run(None, feed)[0]
        keep = feed["mask"][0] == 1
        a, b = a[0, keep].ravel(), b[0, keep].ravel()
        out.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    return out


def test_padding_mask_is_proven_and_attention_runs_as_qattention() -> None:
    model, feeds = _model(), _feeds()
    original = pt.copy_model(model)
    result, p = pt.run_pass(model, "quantize-attention", data=feeds, decide="always")
    assert result.modified, p.declined
    # golden: QAttention reads the uint8 input, int8 weight, the mask as int32
    ops = pt.op_counts(model)
    assert ops["QAttention"] == 1 and not ops["Attention"], ops
    assert ops["DynamicQuantizeLinear"] == 1
    created = [n.op_type for n in pt.created_by(model, "quantize-attention")]
    assert sorted(created) == ["Cast", "DynamicQuantizeLinear", "Mul", "QAttention"]  # Mul: x / s
    assert not ops["Expand"] and not ops["Sub"]  # the exporter's mask chain is gone
    (qa,) = pt.nodes_of(model, "QAttention")
    assert pt.initializer_array(model, qa.inputs[1].name).dtype == np.int8
    assert qa.inputs[5].producer().op_type == "Cast"
    assert qa.inputs[5].producer().inputs[0].name == "mask"
    assert qa.attributes["mask_filter_value"].value == pytest.approx(-10000.0)
    assert qa.attributes["num_heads"].value == HEADS
    mask = p.details["masks"]["bias"]
    assert mask["source"] == "mask" and mask["fill"] == -10000.0 and mask["probes"] == 3
    assert p.details["smoothed"] == 1 and p.stats["quantized:Attention"] == 1
    assert "w" not in model.graph.initializers  # the float weight left with the Attention
    onnx.checker.check_model(ir.serde.serialize_model(model))
    # numerics: as ORT runs it, on padded feeds, the real positions stay close to float
    assert min(_unmasked_cosines(original, model, feeds)) > 0.995
    pt.assert_idempotent(model, "quantize-attention", data=feeds, decide="always")


def test_fill_value_is_read_not_assumed() -> None:
    model, feeds = _model(fill=-3.4028234663852886e38), _feeds()
    original = pt.copy_model(model)
    _, p = pt.run_pass(model, "quantize-attention", data=feeds, decide="always")
    assert p.details["masks"]["bias"]["fill"] == pytest.approx(-3.4028234663852886e38)
    assert min(_unmasked_cosines(original, model, feeds)) > 0.995


def test_smoothing_helps_an_outlier_channel() -> None:
    feeds = _feeds()
    plain, smoothed = _model(), _model()
    original = pt.copy_model(plain)
    pt.run_pass(plain, "quantize-attention", data=feeds, decide="always", smooth=0.0)
    pt.run_pass(smoothed, "quantize-attention", data=feeds, decide="always", smooth=0.7)
    assert "Mul" not in [n.op_type for n in pt.created_by(plain, "quantize-attention")]
    worst_plain = min(_unmasked_cosines(original, plain, feeds))
    worst_smoothed = min(_unmasked_cosines(original, smoothed, feeds))
    assert worst_smoothed > worst_plain


def test_a_causal_bias_is_not_taken_for_a_mask() -> None:
    model = _model(bias="causal")
    before = pt.to_bytes(model)
    result, p = pt.run_pass(model, "quantize-attention", data=_feeds(), decide="always")
    assert not result.modified and pt.to_bytes(model) == before
    assert "attention_bias_not_a_padding_mask" in p.declined
    assert "constant" in p.details["masks"]["bias"]["not_a_padding_mask"]


def test_no_mask_converts_without_data() -> None:
    model = _model(bias="none")
    result, p = pt.run_pass(model, "quantize-attention", decide="always")
    assert result.modified and pt.op_counts(model)["QAttention"] == 1
    assert "smoothed" not in p.details  # no DATA: the input is quantized as it comes


def test_kept_float_where_it_does_not_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(sessions, feed, *, rounds=5, **_):
        return [[0.010, 0.0101] for _ in range(rounds)]

    monkeypatch.setattr(runtime, "interleaved_latency", fake)
    model = _model()
    before = pt.to_bytes(model)
    result, p = pt.run_pass(model, "quantize-attention", data=_feeds())
    assert not result.modified and pt.to_bytes(model) == before
    assert "not faster" in p.declined and p.details["timing"]["retimed"]


def test_declines_without_attention() -> None:
    model = pt.make_model(
        [pt.node("MatMul", ["x", "w"], ["y"])],
        [pt.vi("x", [1, 4])],
        [pt.vi("y", None)],
        [pt.init("w", np.ones((4, 2), np.float32))],
    )
    result, p = pt.run_pass(model, "quantize-attention")
    assert not result.modified and "fuse-ort-kernels" in p.declined


def test_weights_packed_by_concat_are_read_as_constants() -> None:
    model, feeds = _model(concat=True), _feeds()
    original = pt.copy_model(model)
    result, p = pt.run_pass(model, "quantize-attention", data=feeds, decide="always")
    assert result.modified, p.declined
    ops = pt.op_counts(model)
    assert ops["QAttention"] == 1 and not ops["Concat"], ops  # the packing went with it
    assert min(_unmasked_cosines(original, model, feeds)) > 0.995


def test_a_bias_of_zeros_from_shapes_means_no_mask() -> None:
    model, feeds = _model(bias="zeros"), _feeds()
    original = pt.copy_model(model)
    result, p = pt.run_pass(model, "quantize-attention", data=feeds, decide="always")
    assert result.modified, p.declined
    (qa,) = pt.nodes_of(model, "QAttention")
    assert len(qa.inputs) < 6 or qa.inputs[5] is None
    assert p.stats["zero_bias_dropped"] == 1 and p.details["masks"]["bias"]["source"] == ""
    ref = pt.run_model(original, feeds)[1]
    got = pt.run_model(model, feeds)[1]
    for a, b in zip(ref, got, strict=True):
        a, b = a[0].ravel(), b[0].ravel()
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.995
