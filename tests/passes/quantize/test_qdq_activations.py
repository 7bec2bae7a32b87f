"""qdq-insert's integer activations: SiLU, HardSwish and squeeze-excite gates stay integer.

* the integer forms against DequantizeLinear -> float activation -> QuantizeLinear over all
  256 inputs, for input ranges a calibration gives (within one output step; a form whose
  bound fails keeps the float form and says why);
* a small CNN with SiLU, HardSwish and a squeeze-excite block: ONNX Runtime's optimized graph
  runs every activation as integer kernels, no float activation between Q/DQ is left, the
  report names each activation's form, outputs stay close to float, a second run changes
  nothing;
* symmetric int8 activations (no saturation at 0) keep the float form with the reason.
"""

from __future__ import annotations

import collections

import graphopt.passes.quantize.insert_qdq  # noqa: F401  (registers qdq-insert)
import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.quantize import fusion, qdq_emit
from graphopt.passes.quantize import qdq_activations as acts
from graphopt.passes.quantize.qdq_params import activation_qparams
from graphopt.passes.quantize.qdq_plan import DEFAULT_CPU_OPS, DEFAULT_OPS, QdqRun

from graphopt import runtime
from graphopt.runtime.target import int8_scheme

U8 = onnx.TensorProto.UINT8
FUNCS = {
    "HardSwish": lambda x, a, b: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "HardSigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
}
#: input ranges as calibration finds them after a Conv: wide, narrow, one-sided
RANGES = [(-10, 20), (-3, 3), (-1, 6), (-20, 2), (-0.5, 0.5), (-6, 6), (-100, 300), (0, 4)]


def _lookup_model(op: str, alpha: float, beta: float, lo: float, hi: float) -> ir.Model:
    """x (uint8, all 256 codes) -> DQ -> op -> Q: the reference qdq-insert rewrites."""
    sx, zx = activation_qparams(lo, hi, "uint8")
    xs = float(sx) * (np.arange(256, dtype=np.float64) - int(zx))
    ys = FUNCS[op](xs, alpha, beta)
    sy, zy = activation_qparams(float(ys.min()), float(ys.max()), "uint8")
    attrs = {} if op == "HardSwish" else {"alpha": alpha, "beta": beta}
    return pt.make_model(
        [
            pt.node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
            pt.node(op, ["xf"], ["yf"], **attrs),
            pt.node("QuantizeLinear", ["yf", "sy", "zy"], ["y"]),
        ],
        [pt.vi("x", [256], U8)],
        [pt.vi("y", [256], U8)],
        [pt.init("sx", sx), pt.init("zx", zx), pt.init("sy", sy), pt.init("zy", zy)],
    )


def _run_codes(model: ir.Model) -> np.ndarray:
    sess = runtime.make_session(model, optimize=True)
    return sess.run(None, {"x": np.arange(256, dtype=np.uint8)})[0].astype(np.int64)


def _qdq_run(act_type: str = "uint8") -> QdqRun:
    return QdqRun(
        scheme=int8_scheme("cpu"),
        act_type=act_type,
        qmax=127,
        op_types=frozenset(DEFAULT_CPU_OPS),
        exclude=frozenset(),
        per_channel=True,
        count=lambda *a, **k: None,
        mark=lambda n: n,
    )


@pytest.mark.parametrize(
    ("op", "alpha", "beta"),
    [("HardSwish", 1 / 6, 0.5), ("HardSigmoid", 0.2, 0.5), ("HardSigmoid", 1 / 6, 0.5)],
)
@pytest.mark.parametrize(("lo", "hi"), RANGES)
def test_integer_form_within_one_step_of_float_form(
    op: str, alpha: float, beta: float, lo: float, hi: float
) -> None:
    reference = _run_codes(_lookup_model(op, alpha, beta, lo, hi))
    model = _lookup_model(op, alpha, beta, lo, hi)
    run = _qdq_run()
    node = next(n for n in model.graph if n.op_type == op)
    qdq_emit.Emitter(run, model).saturating(node)
    kernels = collections.Counter(n.op_type for n in fusion.optimized_graph(model).graph.node)
    got = _run_codes(model)
    assert np.abs(got - reference).max() <= 1, f"{op} on [{lo}, {hi}]: {got - reference}"
    if run.activation_why:  # a form whose bound fails keeps the float activation
        assert op == "HardSwish" and "rounding" in run.activation_why[node.name]
        assert kernels[op] == 1 or kernels["HardSigmoid"] == 1  # ORT may split HardSwish
        return
    want = {"QLinearAdd": 1} if op == "HardSigmoid" else {"QLinearAdd": 1, "QLinearMul": 1}
    assert {k: kernels[k] for k in ("QLinearAdd", "QLinearMul") if kernels[k]} == want
    assert not kernels[op] and not kernels["DequantizeLinear"]


def test_hardswish_bound_refuses_a_narrow_output_range() -> None:
    # x in [-3, 0.5]: the output range is 0.67 wide while the gate's rounding times |x| (3)
    # can reach 1.3 output steps: the float form stays
    sx, zx = activation_qparams(-3.0, 0.5, "uint8")
    x_range = (float(sx) * (0 - int(zx)), float(sx) * (255 - int(zx)))
    sg = acts.gate_scale(1 / 6, 0.5, x_range[1])
    assert acts.hardswish_error_steps(x_range, sg, (0.5 * 7 / 12 + 0.375) / 255) > 1
    assert acts.hardswish_error_steps((3.5, 20.0), 1 / 255, 0.08) == 0.0  # gate saturated


def _cnn() -> tuple[ir.Model, list[dict[str, np.ndarray]]]:
    """conv -> SiLU -> conv -> HardSwish -> squeeze-excite (GAP, conv, relu, conv,
    HardSigmoid, Mul) -> conv -> output: every activation of the families in the issue."""
    rng = np.random.default_rng(0)

    def w(name: str, co: int, ci: int, k: int) -> onnx.TensorProto:
        a = rng.standard_normal((co, ci, k, k)) / np.sqrt(ci * k * k) * 1.5
        return pt.init(name, a.astype(np.float32))

    def b(name: str, c: int) -> onnx.TensorProto:
        return pt.init(name, rng.standard_normal(c).astype(np.float32) * 0.3)

    nodes = [
        pt.node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        pt.node("Sigmoid", ["c1"], ["s1"]),
        pt.node("Mul", ["c1", "s1"], ["a1"]),
        pt.node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        pt.node("HardSwish", ["c2"], ["a2"]),
        pt.node("GlobalAveragePool", ["a2"], ["p"]),
        pt.node("Conv", ["p", "w3", "b3"], ["c3"]),
        pt.node("Relu", ["c3"], ["r3"]),
        pt.node("Conv", ["r3", "w4", "b4"], ["c4"]),
        pt.node("HardSigmoid", ["c4"], ["g"], alpha=1 / 6, beta=0.5),
        pt.node("Mul", ["a2", "g"], ["se"]),
        pt.node("Conv", ["se", "w5", "b5"], ["y"]),
    ]
    inits = [
        w("w1", 16, 3, 3),
        b("b1", 16),
        w("w2", 16, 16, 3),
        b("b2", 16),
        w("w3", 4, 16, 1),
        b("b3", 4),
        w("w4", 16, 4, 1),
        b("b4", 16),
        w("w5", 8, 16, 1),
        b("b5", 8),
    ]
    model = pt.make_model(nodes, [pt.vi("x", [1, 3, 32, 32])], [pt.vi("y", None)], inits)
    feeds = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    return model, feeds


def test_cpu_defaults_include_the_activations_but_cuda_does_not() -> None:
    for op in ("Sigmoid", "LeakyRelu", "HardSwish", "HardSigmoid"):
        assert op in DEFAULT_CPU_OPS
        assert op not in DEFAULT_OPS


def test_cnn_activations_run_as_integer_kernels() -> None:
    model, feeds = _cnn()
    original = pt.copy_model(model)
    _, p = pt.run_pass(model, "qdq-insert", data=feeds, target="cpu", budget="none")
    forms = p.details["activations"]
    assert forms == {
        "s1_node": f"SiLU: {acts.INTEGER_SILU}",
        "a2_node": f"HardSwish: {acts.INTEGER_ADD_MUL}",
        "g_node": f"HardSigmoid: {acts.INTEGER_ADD}",
    }
    assert p.stats["activation_integer:HardSwish"] == 1
    assert p.stats["activation_integer:HardSigmoid"] == 1
    assert any("activations:" in n for n in p.render_notes())
    # golden: the activations are gone from the graph, written as Add/Mul between Q/DQ
    ops = pt.op_counts(model)
    assert not ops["HardSwish"] and not ops["HardSigmoid"]
    assert set(pt.used_initializers(model)) == set(model.graph.initializers)
    # ONNX Runtime runs all of it in integers: no float activation, no Q/DQ inside
    kernels = collections.Counter(n.op_type for n in fusion.optimized_graph(model).graph.node)
    assert kernels["QLinearSigmoid"] == 1
    assert kernels["QLinearMul"] == 3  # SiLU, HardSwish, the excite Mul
    assert kernels["QLinearAdd"] == 2  # HardSwish's and the gate's offsets
    assert kernels["QLinearGlobalAveragePool"] == 1
    assert kernels["QLinearConv"] == 5
    for float_op in ("Sigmoid", "HardSwish", "HardSigmoid", "Mul", "Add"):
        assert not kernels[float_op], float_op
    assert kernels["QuantizeLinear"] == 1 and kernels["DequantizeLinear"] == 1
    # numerics: close to float (int8 with a random CNN), run as ORT deploys it
    ref = pt.run_model(original, feeds)[1]
    got = pt.run_model(model, feeds)[1]
    a, c = np.concatenate([r[0].ravel() for r in ref]), np.concatenate([g[0].ravel() for g in got])
    assert float(a @ c / np.linalg.norm(a) / np.linalg.norm(c)) > 0.995
    pt.assert_idempotent(model, "qdq-insert", data=feeds, target="cpu", budget="none")


def test_symmetric_activations_keep_the_float_form_with_the_reason() -> None:
    model, feeds = _cnn()
    _, p = pt.run_pass(
        model, "qdq-insert", data=feeds, target="cpu", budget="none", activation_type="int8"
    )
    forms = p.details["activations"]
    # the float form between Q/DQ is not an integer kernel: the fusion repair then keeps
    # it float, and the report gives the root cause
    assert forms["a2_node"] == (
        "HardSwish: float (symmetric int8 activations cannot saturate at 0 (uint8 only))"
    )
    assert forms["g_node"].startswith("HardSigmoid: float (symmetric int8")
    assert pt.op_counts(model)["HardSwish"] == 1


def test_excluded_activation_reports_float() -> None:
    model, feeds = _cnn()
    _, p = pt.run_pass(
        model, "qdq-insert", data=feeds, target="cpu", budget="none", exclude=["a2_node"]
    )
    assert p.details["activations"]["a2_node"] == "HardSwish: float"
    assert p.details["activations"]["s1_node"] == f"SiLU: {acts.INTEGER_SILU}"


def test_split_keeps_the_region_integer() -> None:
    """YOLOv8's C2f: conv -> SiLU -> Split -> (conv, conv -> SiLU) -> Concat -> conv. The Split
    shares its input's parameters on every output, so ORT runs it on uint8 and the SiLU
    before it stays integer."""
    rng = np.random.default_rng(1)

    def w(name: str, co: int, ci: int) -> onnx.TensorProto:
        return pt.init(name, (rng.standard_normal((co, ci, 1, 1)) / np.sqrt(ci)).astype(np.float32))

    nodes = [
        pt.node("Conv", ["x", "w1"], ["c1"]),
        pt.node("Sigmoid", ["c1"], ["s1"]),
        pt.node("Mul", ["c1", "s1"], ["a1"]),
        pt.node("Split", ["a1", "sizes"], ["p", "q"], axis=1),
        pt.node("Conv", ["q", "w2"], ["c2"]),
        pt.node("Sigmoid", ["c2"], ["s2"]),
        pt.node("Mul", ["c2", "s2"], ["a2"]),
        pt.node("Concat", ["p", "q", "a2"], ["cat"], axis=1),
        pt.node("Conv", ["cat", "w3"], ["y"]),
    ]
    inits = [w("w1", 8, 3), w("w2", 4, 4), w("w3", 6, 12), pt.init("sizes", np.array([4, 4]))]
    model = pt.make_model(nodes, [pt.vi("x", [1, 3, 16, 16])], [pt.vi("y", None)], inits)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    original = pt.copy_model(model)
    _, p = pt.run_pass(model, "qdq-insert", data=feeds, target="cpu", budget="none")
    assert p.stats["quantized:Split"] == 1
    assert p.details["activations"] == {
        "s1_node": f"SiLU: {acts.INTEGER_SILU}",
        "s2_node": f"SiLU: {acts.INTEGER_SILU}",
    }
    split = pt.nodes_of(model, "Split")[0]
    scales = {
        float(np.asarray(u.node.inputs[1].const_value.numpy()))
        for o in split.outputs
        for u in o.uses()
        if u.node.op_type == "QuantizeLinear"
    }
    assert len(scales) == 1  # every output carries its input's scale
    kernels = collections.Counter(n.op_type for n in fusion.optimized_graph(model).graph.node)
    assert kernels["Split"] == 1 and kernels["QLinearConcat"] == 1
    assert kernels["QuantizeLinear"] == 1 and kernels["DequantizeLinear"] == 1
    assert not p.details["fusion_final"]["unfused"]
    ref = pt.run_model(original, feeds)[1]
    got = pt.run_model(model, feeds)[1]
    a, c = np.concatenate([r[0].ravel() for r in ref]), np.concatenate([g[0].ravel() for g in got])
    assert float(a @ c / np.linalg.norm(a) / np.linalg.norm(c)) > 0.995
    pt.assert_idempotent(model, "qdq-insert", data=feeds, target="cpu", budget="none")


def test_budget_search_writes_each_plan_once_and_decides_the_same(monkeypatch) -> None:
    """A node of an integer region back in float returns the region to float, so the search's
    trials repeat plans; a repeated plan is neither written nor measured again, and the
    nodes that end float are the ones writing every trial picks."""
    from graphopt.passes.quantize import qdq_accept

    def search(model: ir.Model, feeds: list) -> dict:
        _, p = pt.run_pass(
            model, "qdq-insert", data=feeds, target="cpu", budget="cosine>=0.99999", guard=False
        )
        return {**p.details["budget"], "kept": p.details.get("kept_float")}

    model, feeds = _cnn()
    deduped = search(model, feeds)
    assert deduped["trials_written"] < deduped["trials_planned"], deduped
    assert deduped["trials_measured"] <= deduped["trials_written"] + 1  # + the whole plan

    def write_every_trial(self, floats: dict, run: QdqRun) -> None:
        self.asked += 1

    monkeypatch.setattr(qdq_accept._Plans, "get", write_every_trial)
    model, feeds = _cnn()
    every = search(model, feeds)
    assert every["trials_written"] == every["trials_planned"]
    for key in ("kept_float", "kept", "final", "sensitivity", "met", "trials_measured"):
        assert deduped[key] == every[key], key
