"""quantize-recurrent: LSTM -> com.microsoft.DynamicQuantizeLSTM, GRU/RNN left with the reason.

Golden structure (int8 weights transposed to [dirs, size, 4H], per-gate-row scales, zero
points, attributes, provenance), outputs on ONNX Runtime close to float for every LSTM form
(forward, reverse, bidirectional, sequence_lens, peepholes, initial state, clip, other
activations, unused outputs), a long stream with the state carried from call to call, idempotence,
skip reasons, and the timed decision following the numbers it reports.
"""

from __future__ import annotations

import graphopt.passes.quantize.quantize_recurrent as qr  # registers quantize-recurrent
import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest

from graphopt import runtime
from graphopt.accuracy.tolerance import compare_arrays
from graphopt.core.pass_base import PROVENANCE_KEY

PASS = "quantize-recurrent"
SIZE, HID = 24, 32
ALWAYS = {"decide": "always"}  # tests of the rewrite itself do not time


def _lstm_arrays(dirs: int, seed: int = 0, peep: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "W": (rng.standard_normal((dirs, 4 * HID, SIZE)) * 0.3).astype(np.float32),
        "R": (rng.standard_normal((dirs, 4 * HID, HID)) * 0.3).astype(np.float32),
        "B": (rng.standard_normal((dirs, 8 * HID)) * 0.2).astype(np.float32),
    }
    if peep:
        out["P"] = (rng.standard_normal((dirs, 3 * HID)) * 0.2).astype(np.float32)
    return out


def _lstm_model(
    *,
    direction: str = "forward",
    layout: int = 0,
    state_inputs: bool = False,
    seq_lens: bool = False,
    peep: bool = False,
    outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"),
    **attrs: object,
) -> ir.Model:
    dirs = 2 if direction == "bidirectional" else 1
    arrays = _lstm_arrays(dirs, peep=peep)
    x_shape = ["batch", "seq", SIZE] if layout else ["seq", "batch", SIZE]
    state_shape = ["batch", dirs, HID] if layout else [dirs, "batch", HID]
    inputs = [pt.vi("X", x_shape)]
    names = ["X", "W", "R", "B", "", "", "", ""]
    if seq_lens:
        inputs.append(pt.vi("lens", ["batch"], onnx.TensorProto.INT32))
        names[4] = "lens"
    if state_inputs:
        inputs += [pt.vi("h0", state_shape), pt.vi("c0", state_shape)]
        names[5:7] = ["h0", "c0"]
    if peep:
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    node_outputs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")]
    while node_outputs[-1] == "":
        node_outputs.pop()
    if layout:
        attrs["layout"] = 1
    node = onnx.helper.make_node(
        "LSTM", names, node_outputs, name="lstm", hidden_size=HID, direction=direction, **attrs
    )
    return pt.make_model(
        [node],
        inputs,
        [pt.vi(o, None) for o in outputs],
        [pt.init(k, v) for k, v in arrays.items()],
    )


def _feeds(model: ir.Model, batch: int = 3, seq: int = 9, count: int = 2) -> list[pt.Feed]:
    rng = np.random.default_rng(5)
    feeds = []
    for _ in range(count):
        feed: pt.Feed = {}
        for v in model.graph.inputs:
            if v.name == "lens":
                feed["lens"] = rng.integers(1, seq + 1, batch).astype(np.int32)
                continue
            dims = [
                d if isinstance(d, int) else {"batch": batch, "seq": seq}[str(d)] for d in v.shape
            ]
            feed[v.name] = rng.standard_normal(dims).astype(np.float32)
        feeds.append(feed)
    return feeds


def test_golden_structure() -> None:
    model = _lstm_model(direction="bidirectional", state_inputs=True, clip=5.0)
    arrays = _lstm_arrays(2)
    _, p = pt.apply_and_check(model, PASS, feeds=_feeds(model), **ALWAYS)
    assert pt.op_counts(model) == {"DynamicQuantizeLSTM": 1}
    assert p.stats == {"quantized:LSTM": 1}
    assert model.opset_imports["com.microsoft"] == 1
    (node,) = model.graph
    assert node.domain == "com.microsoft" and node.metadata_props[PROVENANCE_KEY] == PASS
    assert {k: a.value for k, a in node.attributes.items()} == {
        "hidden_size": HID,
        "direction": "bidirectional",
        "clip": 5.0,
    }
    assert [v.name if v is not None else "" for v in node.inputs[3:8]] == ["B", "", "h0", "c0", ""]
    for (q, scale, zp), w in zip(
        ((node.inputs[1], node.inputs[8], node.inputs[9]),
         (node.inputs[2], node.inputs[10], node.inputs[11])),
        (arrays["W"], arrays["R"]),
        strict=True,
    ):  # fmt: skip
        qa, sa, za = (v.const_value.numpy() for v in (q, scale, zp))
        assert qa.dtype == np.int8 and qa.shape == (2, w.shape[2], 4 * HID)  # [dirs, K, 4H]
        assert sa.dtype == np.float32 and sa.shape == (2, 4 * HID)  # one per gate row
        assert za.dtype == np.int8 and za.shape == sa.shape and not za.any()
        assert np.abs(qa).max(axis=1).min() == 127  # every gate row uses the full range
        deq = qa.astype(np.float32) * sa[:, None, :]
        assert np.all(np.abs(deq - w.transpose(0, 2, 1)) <= sa[:, None, :] / 2 + 1e-6)
    assert not {"W", "R"} & set(model.graph.initializers)  # the float weights are gone
    assert [o.name for o in model.graph.outputs] == ["Y", "Y_h", "Y_c"]


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"direction": "reverse"},
        {"direction": "bidirectional", "state_inputs": True},
        {"seq_lens": True, "state_inputs": True},
        {"peep": True, "direction": "bidirectional"},
        {"input_forget": 1, "clip": 3.0},
        {"activations": ["HardSigmoid", "Tanh", "Tanh"]},
        {"outputs": ("Y_h",)},
        {"outputs": ("Y_c",)},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "forward",
)
def test_outputs_close_to_float_on_ort(form: dict[str, object]) -> None:
    model = _lstm_model(**form)  # type: ignore[arg-type]
    before = pt.copy_model(model)
    pt.apply_and_check(model, PASS, feeds=_feeds(model), **ALWAYS)
    assert pt.op_counts(model)["DynamicQuantizeLSTM"] == 1 and not pt.nodes_of(model, "LSTM")
    cos = pt.output_cosines(before, model, _feeds(before, batch=4, seq=12, count=3))
    assert min(cos) >= 0.999, cos


def test_long_stream_with_state_carried_across_calls() -> None:
    """A streaming model: 200 calls of 4 steps, Y_h/Y_c of each call fed to the next. The
    error a quantized state makes must not grow along the stream."""
    model = _lstm_model(state_inputs=True)
    before = pt.copy_model(model)
    pt.run_pass(model, PASS, **ALWAYS)
    sess_f, sess_q = (runtime.make_session(m) for m in (before, model))
    rng = np.random.default_rng(7)
    state_f = state_q = (np.zeros((1, 1, HID), np.float32),) * 2
    cos = []
    for step in range(200):
        x = (rng.standard_normal((4, 1, SIZE)) * (1 + np.sin(step / 10))).astype(np.float32)
        yf, hf, cf = sess_f.run(None, {"X": x, "h0": state_f[0], "c0": state_f[1]})
        yq, hq, cq = sess_q.run(None, {"X": x, "h0": state_q[0], "c0": state_q[1]})
        state_f, state_q = (hf, cf), (hq, cq)
        cos.append(compare_arrays(yq, yf)["cosine"])
    assert min(cos) >= 0.999, min(cos)
    assert np.mean(cos[-50:]) >= np.mean(cos[:50]) - 1e-4  # no drift along the stream


def test_idempotent() -> None:
    model = _lstm_model(direction="bidirectional")
    pt.run_pass(model, PASS, **ALWAYS)
    pt.assert_idempotent(model, PASS, **ALWAYS)


def test_per_direction_scales() -> None:
    model = _lstm_model(direction="bidirectional")
    before = pt.copy_model(model)
    pt.run_pass(model, PASS, per_channel=False, **ALWAYS)
    (node,) = model.graph
    assert node.inputs[8].const_value.numpy().shape == (2,)
    assert node.inputs[11].const_value.numpy().shape == (2,)
    assert min(pt.output_cosines(before, model, _feeds(before))) >= 0.995


def test_gru_rnn_left_float_with_the_reason_and_exclude() -> None:
    rng = np.random.default_rng(3)
    f32 = np.float32
    model = pt.make_model(
        [
            onnx.helper.make_node("GRU", ["X", "Wg", "Rg"], ["Yg"], name="gru", hidden_size=HID),
            onnx.helper.make_node("RNN", ["X", "Wr", "Rr"], ["Yr"], name="rnn", hidden_size=HID),
        ],
        [pt.vi("X", ["seq", 1, SIZE])],
        [pt.vi("Yg", None), pt.vi("Yr", None)],
        [
            pt.init("Wg", rng.standard_normal((1, 3 * HID, SIZE)).astype(f32)),
            pt.init("Rg", rng.standard_normal((1, 3 * HID, HID)).astype(f32)),
            pt.init("Wr", rng.standard_normal((1, HID, SIZE)).astype(f32)),
            pt.init("Rr", rng.standard_normal((1, HID, HID)).astype(f32)),
        ],
    )
    result, p = pt.run_pass(model, PASS)
    assert not result.modified
    assert p.stats == {"skipped:no_int8_kernel": 2}
    assert "no LSTM" in p.declined and "2 no_int8_kernel" in p.declined
    assert any("no int8 kernel" in n for n in p.render_notes())

    model = _lstm_model()
    result, p = pt.run_pass(model, PASS, exclude=["lstm"], **ALWAYS)
    assert not result.modified and p.stats == {"skipped:excluded": 1}

    # batch-first (opset 14 layout=1): ONNX Runtime runs neither the LSTM nor a contrib form
    model = _lstm_model(layout=1)
    result, p = pt.run_pass(model, PASS, **ALWAYS)
    assert not result.modified and p.stats == {"skipped:batch_first_layout": 1}


def test_weights_computed_at_run_time_are_left_with_the_reason() -> None:
    arrays = _lstm_arrays(1)
    model = pt.make_model(
        [
            pt.node("Mul", ["W", "gain"], ["Wg"]),
            onnx.helper.make_node("LSTM", ["X", "Wg", "R"], ["Y"], name="lstm", hidden_size=HID),
        ],
        [pt.vi("X", ["seq", 1, SIZE]), pt.vi("gain", [1])],
        [pt.vi("Y", None)],
        [pt.init("W", arrays["W"]), pt.init("R", arrays["R"])],
    )
    result, p = pt.run_pass(model, PASS, **ALWAYS)
    assert not result.modified and p.stats == {"skipped:weight_not_constant": 1}


def test_measured_decision_follows_the_reported_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _lstm_model()
    _, p = pt.run_pass(model, PASS, rounds=1, probe_seq=8)
    (t,) = p.details["timings"]
    assert t["node"] == "lstm" and t["shape"] == [8, 1, SIZE, HID, 1]
    assert t["float_us"] > 0 and t["int8_us"] > 0
    assert t["int8"] == (t["int8_us"] < 0.9 * t["float_us"])
    assert bool(pt.nodes_of(model, "DynamicQuantizeLSTM")) == t["int8"]
    assert any(n.startswith("lstm: ") for n in p.render_notes())

    # the decision, with the timing replaced: slower int8 keeps float and says so
    monkeypatch.setattr(qr, "probe_lstm", lambda *a, **k: (100.0, 120.0))
    model = _lstm_model()
    result, p = pt.run_pass(model, PASS)
    assert not result.modified and p.stats == {"skipped:int8_not_faster": 1}
    assert "no LSTM times faster as int8" in p.declined
    monkeypatch.setattr(qr, "probe_lstm", lambda *a, **k: (100.0, 50.0))
    model = _lstm_model()
    result, p = pt.run_pass(model, PASS)
    assert result.modified and p.details["timings"][0]["shape"][0] == 32  # probe_seq default


def test_static_sequence_length_is_timed_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(qr, "probe_lstm", lambda *a, **k: seen.append(a) or (1.0, 2.0))
    model = _lstm_model()
    model.graph.inputs[0].shape = ir.Shape([1, 2, SIZE])  # a streaming call of one step
    pt.run_pass(model, PASS)
    assert seen[0][:5] == (1, 2, SIZE, HID, 1)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="margin"):
        qr.QuantizeRecurrentOptions(margin=1.5)
    with pytest.raises(ValueError, match="probe_seq"):
        qr.QuantizeRecurrentOptions(probe_seq=0)


def _if_model() -> ir.Model:
    """cond ? LSTM(weights inside the branch) : LSTM(weights of the outer graph)."""
    h = onnx.helper
    a, b = _lstm_arrays(1, seed=1), _lstm_arrays(1, seed=2)
    out = [pt.vi("Y", None)]
    then = h.make_graph(
        [h.make_node("LSTM", ["X", "W_in", "R_in", "B_in"], ["Y_then"], name="lstm_then",
                     hidden_size=HID)],
        "then", [], [pt.vi("Y_then", None)],
        [pt.init("W_in", a["W"]), pt.init("R_in", a["R"]), pt.init("B_in", a["B"])],
    )  # fmt: skip
    other = h.make_graph(
        [h.make_node("LSTM", ["X", "W", "R", "B"], ["Y_else"], name="lstm_else",
                     hidden_size=HID)],
        "else", [], [pt.vi("Y_else", None)],
    )  # fmt: skip
    return pt.make_model(
        [h.make_node("If", ["cond"], ["Y"], name="branch", then_branch=then, else_branch=other)],
        [pt.vi("X", ["seq", 1, SIZE]), pt.vi("cond", [], onnx.TensorProto.BOOL)],
        out,
        [pt.init(k, v) for k, v in b.items()],
    )


def test_lstms_inside_if_branches() -> None:
    """Both branches are rewritten: weights held by the branch and weights of the outer graph
    (whose float copies go once nothing reads them), on either branch at run time."""
    from graphopt import ir as gir

    model = _if_model()
    before = pt.copy_model(model)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 1, SIZE)).astype(np.float32)
    feeds = [{"X": x, "cond": np.array(c)} for c in (True, False)]
    _, p = pt.apply_and_check(model, PASS, feeds=feeds, **ALWAYS)
    assert p.stats == {"quantized:LSTM": 2, "quantized_in_subgraphs": 2}
    ops = [n.op_type for n in gir.iter_nodes(model)]
    assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
    assert not {"W", "R"} & set(model.graph.initializers)
    then = model.graph.node(0).attributes["then_branch"].value
    assert not {"W_in", "R_in"} & set(then.initializers)  # replaced where they were held
    names = [v.name for g in gir.iter_graphs(model) for v in g.initializers.values()]
    assert len(names) == len(set(names))  # new names unique across scopes
    assert min(pt.output_cosines(before, model, feeds)) >= 0.999
    pt.assert_idempotent(model, PASS, **ALWAYS)
