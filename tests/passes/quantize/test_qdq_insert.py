"""qdq-insert: static int8 QDQ placed for the target's integer kernels, calibrated on DATA.

* the shipped demo CNN (3 Conv + 2 Gemm, each followed by a Relu except the last Gemm, plus a
  MaxPool and a Flatten): golden structure derived from the float graph (Q/DQ on every
  Conv/Gemm input, int32 biases with scale ``s_x * s_w``, Conv outputs quantized after the
  absorbed Relu, MaxPool/Flatten sharing their input's parameters), the pass's ``details``,
  ONNX Runtime's optimized graph (only integer Conv/Gemm kernels), verify-each, top-1 within
  one point of float, idempotence, exclude, options, the missing-data error and the opset guard;
* the target-aware scheme (:mod:`graphopt.runtime.target`) with fabricated CPUs;
* small synthetic models: an attention block, an embedding table, a residual CNN block, a
  quantized Conv producing graph outputs;
* repair of groups ONNX Runtime does not fuse (found empirically and simulated), and
  ``xfail(strict=True)`` tests of known gaps in the fusion check and the repair.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import warnings

import graphopt.passes.quantize.insert_qdq as qdq  # registers qdq-insert
import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.quantize import fusion

import graphopt.runtime.target as gtarget
from graphopt import ir as gir
from graphopt.cli import demo
from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PROVENANCE_KEY, PassContext
from graphopt.errors import PipelineError
from graphopt.inputs import data

PASS = "qdq-insert"
ABSORBABLE = ("Relu", "Clip")
DATA_MOVEMENT = ("MaxPool", "Flatten", "Reshape", "Transpose")
ACT_DTYPE = {"uint8": np.uint8, "int8": np.int8}
# The demo's golden structure (Relus absorbed, MaxPool/Flatten in the integer region) is the
# asymmetric-uint8 placement of x86 CPUs; ARM gets symmetric int8 and no absorbed Relus.
uint8_cpu = pytest.mark.skipif(
    gtarget.int8_scheme("cpu").activation_type != "uint8",
    reason="this CPU's scheme is not asymmetric uint8 (ARM)",
)
FLOAT_KERNELS = frozenset({"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "NhwcFusedConv"})


# ------------------------------------------------------------------------------ helpers
def _ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph)


def _arr(v: ir.Value) -> np.ndarray:
    assert v.const_value is not None, f"{v.name} is not a constant"
    return v.const_value.numpy()


def _op(v: ir.Value | None) -> str | None:
    p = v.producer() if v is not None else None
    return p.op_type if p is not None else None


def _consumers(v: ir.Value) -> list[str]:
    return [u.node.op_type for u in v.uses()]


def _quantize_node(v: ir.Value) -> ir.Node | None:
    """The QuantizeLinear reading ``v`` (there must be at most one)."""
    qs = [u.node for u in v.uses() if u.node.op_type == "QuantizeLinear"]
    assert len(qs) <= 1, f"{v.name} is quantized {len(qs)} times"
    return qs[0] if qs else None


def _act_dq(v: ir.Value) -> ir.Node:
    """``v`` is DequantizeLinear(QuantizeLinear(x)) with one shared (scale, zero point)."""
    dq = v.producer()
    assert dq is not None and dq.op_type == "DequantizeLinear", f"{v.name} is not dequantized"
    q = dq.inputs[0].producer()
    assert q is not None and q.op_type == "QuantizeLinear"
    assert q.inputs[1] is dq.inputs[1] and q.inputs[2] is dq.inputs[2]
    return dq


def _qparams(node: ir.Node) -> tuple[float, int, np.dtype]:
    """(scale, zero point, zero-point dtype) of a per-tensor Q or DQ node."""
    s, z = _arr(node.inputs[1]), _arr(node.inputs[2])
    assert s.shape == () and z.shape == ()
    return float(s), int(z), z.dtype


def _int_attr(node: ir.Node, name: str) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else 0


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _min_cosine(ref: ir.Model, got: ir.Model, feeds: list[dict]) -> float:
    names_r, out_r = pt.run_model(ref, feeds)
    names_g, out_g = pt.run_model(got, feeds)
    assert names_r == names_g
    return min(_cos(a, b) for ra, ga in zip(out_r, out_g) for a, b in zip(ra, ga, strict=True))


def _apply(
    model: ir.Model, samples: data.Samples, ctx_target: str = "cpu", **options: object
) -> qdq.InsertQdqPass:
    """Run the pass in place; ``ctx_target`` is the run's target (what target=auto follows)."""
    cls = get_pass(PASS)
    pass_ = cls(cls.Options(**options), PassContext(data=samples, target=ctx_target))
    pass_.modified = bool(pass_(model).modified)
    return pass_


def _optimized_ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in fusion.optimized_graph(model).graph.node)


def _float_kernels_reading_dq(model: ir.Model) -> list[str]:
    """Float Conv/Gemm/MatMul kernels in ORT's optimized graph that read a DequantizeLinear."""
    proto = fusion.optimized_graph(model)
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        f"{n.name} ({n.op_type})"
        for n in proto.graph.node
        if n.op_type in FLOAT_KERNELS and any(i in dq_out for i in n.input)
    ]


def _assert_no_dangling_qdq(model: ir.Model) -> None:
    """Every Q feeds a DQ, every DQ is read (or a graph output), every initializer is used."""
    outputs = set(model.graph.outputs)
    for n in model.graph:
        if n.op_type == "QuantizeLinear":
            assert set(_consumers(n.outputs[0])) == {"DequantizeLinear"}, n.name
        if n.op_type == "DequantizeLinear":
            assert n.outputs[0].uses() or n.outputs[0] in outputs, f"{n.name} is read by nobody"
    assert pt.used_initializers(model) == set(model.graph.initializers)


# ------------------------------------------------------------------------------ the demo
def _demo() -> tuple[ir.Model, data.Samples, np.ndarray]:
    model_path, data_path = demo.demo_files()
    model = gir.load_model(model_path)
    samples = data.load_data(model, data_path, batch=50)
    return model, samples, np.load(data_path)["label"]


def _cleaned() -> tuple[ir.Model, data.Samples]:
    model, samples, _ = _demo()
    run_pipeline(model, "cleanup")
    return model, samples


@pytest.fixture(scope="module")
def quantized() -> dict:
    model, samples, labels = _demo()
    float_acc = demo.top1_accuracy(model, samples, labels)
    with warnings.catch_warnings():  # numpy warns about the infinite atol of the tolerance
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_pipeline(
            model,
            "cleanup,qdq-insert",
            context=PassContext(data=samples.head(4)),
            samples=samples.head(2),
        )
    reference, _ = _cleaned()
    return {
        "model": model,
        "float": reference,  # the cleaned float model the pass started from
        "samples": samples,
        "labels": labels,
        "float_acc": float_acc,
        "report": result.report,
    }


def _expected_demo_counts(reference: ir.Model) -> dict[str, int]:
    """What the placement rules give on a Conv/Gemm(+Relu)/MaxPool/Flatten chain."""
    ops = _ops(reference)
    anchors = ops["Conv"] + ops["Gemm"]
    # every Relu follows a Conv/Gemm whose output is quantized: it is absorbed
    relus = [n for n in reference.graph if n.op_type == "Relu"]
    assert all(_op(n.inputs[0]) in ("Conv", "Gemm") for n in relus)
    shared = ops["MaxPool"] + ops["Flatten"]
    # quantized activations: the graph input, each Relu output, each MaxPool/Flatten output
    pairs = len(reference.graph.inputs) + len(relus) + shared
    return {"anchors": anchors, "relus": len(relus), "shared": shared, "pairs": pairs}


@uint8_cpu
def test_golden_structure(quantized: dict) -> None:
    model, reference = quantized["model"], quantized["float"]
    want = _expected_demo_counts(reference)
    ops, ref_ops = _ops(model), _ops(reference)
    for op in ("Conv", "Gemm", "Relu", "MaxPool", "Flatten"):
        assert ops[op] == ref_ops[op]  # nothing float disappears, Relus stay in the graph
    assert ops["QuantizeLinear"] == want["pairs"]
    # activations + weights + biases (all demo Conv/Gemm have a bias)
    assert ops["DequantizeLinear"] == want["pairs"] + 2 * want["anchors"]
    ref_nodes = {n.name: n for n in reference.graph}
    anchors = [n for n in model.graph if n.op_type in ("Conv", "Gemm")]
    assert len(anchors) == want["anchors"]
    for node in anchors:
        x_dq = _act_dq(node.inputs[0])
        w_dq, b_dq = node.inputs[1].producer(), node.inputs[2].producer()
        assert w_dq.op_type == "DequantizeLinear" and b_dq.op_type == "DequantizeLinear"
        sx, _, zx_type = _qparams(x_dq)
        assert sx > 0 and zx_type == ACT_DTYPE[gtarget.int8_scheme("cpu").activation_type]
        # weights: int8, per output channel, symmetric, full range
        wq, ws, wz = (_arr(v) for v in w_dq.inputs)
        w_float = _arr(ref_nodes[node.name].inputs[1])
        axis = 0 if node.op_type == "Conv" else (1 - _int_attr(node, "transB"))
        assert w_dq.attributes["axis"].value == axis
        assert wq.dtype == np.int8 and wq.shape == w_float.shape
        assert ws.shape == (w_float.shape[axis],) and ws.dtype == np.float32
        assert wz.dtype == np.int8 and wz.shape == ws.shape and not wz.any()
        others = tuple(i for i in range(wq.ndim) if i != axis)
        assert (np.abs(wq.astype(np.int32)).max(axis=others) == 127).all()
        # bias: int32, scale s_x * s_w per channel, zero point 0, within half a step
        bq, bs, bz = (_arr(v) for v in b_dq.inputs)
        b_float = _arr(ref_nodes[node.name].inputs[2])
        assert bq.dtype == np.int32 and bz.dtype == np.int32 and not bz.any()
        assert b_dq.attributes["axis"].value == 0 and bs.shape == b_float.shape
        np.testing.assert_allclose(bs, np.float32(sx) * ws, rtol=1e-6)
        assert np.all(np.abs(bq * bs.astype(np.float64) - b_float) <= bs / 2 + 1e-7)
        for created in (x_dq, x_dq.inputs[0].producer(), w_dq, b_dq):
            assert created.metadata_props[PROVENANCE_KEY] == PASS
    # the graph input is non-negative pixels: its zero point is 0 (uint8 asymmetric)
    first = model.graph.inputs[0]
    assert _qparams(_quantize_node(first))[1] == 0


@uint8_cpu
def test_conv_outputs_are_quantized_after_the_absorbed_relu(quantized: dict) -> None:
    model = quantized["model"]
    for conv in (n for n in model.graph if n.op_type == "Conv"):
        y = conv.outputs[0]
        # the Conv output itself is not quantized: the Relu right after it is absorbed
        assert _consumers(y) == ["Relu"], f"{conv.name}: {_consumers(y)}"
        relu_out = next(iter(y.uses())).node.outputs[0]
        q = _quantize_node(relu_out)
        assert q is not None, f"{conv.name}'s Relu output is not quantized"
        scale, zp, zp_type = _qparams(q)
        # a Relu output is >= 0: asymmetric uint8 puts 0 at zero point 0 (ORT drops the Relu)
        assert zp_type == np.uint8 and zp == 0 and scale > 0
        # all readers of the Relu output go through the pair
        assert _consumers(relu_out) == ["QuantizeLinear"]
    # the last Gemm feeds the graph output: it stays float (QGemm produces float directly)
    last = model.graph.outputs[0].producer()
    assert last.op_type == "Gemm" and _quantize_node(last.outputs[0]) is None


@uint8_cpu
def test_data_movement_shares_its_input_parameters(quantized: dict) -> None:
    model = quantized["model"]
    movers = [n for n in model.graph if n.op_type in ("MaxPool", "Flatten")]
    assert len(movers) == 2
    for n in movers:
        dq_in = _act_dq(n.inputs[0])
        q_out = _quantize_node(n.outputs[0])
        assert q_out is not None, f"{n.name}'s output is not quantized"
        assert _qparams(dq_in) == _qparams(q_out), n.name


def test_outputs_keep_names_and_types(quantized: dict) -> None:
    model, reference = quantized["model"], quantized["float"]

    def sig(m: ir.Model) -> list:
        return [(o.name, o.dtype, str(o.shape)) for o in m.graph.outputs]

    assert sig(model) == sig(reference)
    names, _ = pt.run_model(model, quantized["samples"].head(1).feeds)
    assert names == [o.name for o in reference.graph.outputs]


@uint8_cpu
def test_stats_details_and_report(quantized: dict) -> None:
    want = _expected_demo_counts(quantized["float"])
    step = quantized["report"]["passes"][-1]
    assert step["pass"] == PASS and step["modified"]
    stats = step["stats"]
    ref_ops = _ops(quantized["float"])
    assert stats["quantized:Conv"] == ref_ops["Conv"]
    assert stats["quantized:Gemm"] == ref_ops["Gemm"]
    assert stats["quantized:MaxPool"] == ref_ops["MaxPool"]
    assert stats["quantized:Flatten"] == ref_ops["Flatten"]
    assert stats["weights_quantized"] == want["anchors"]
    assert stats["bias_int32"] == want["anchors"]
    assert stats["relu_absorbed"] == want["relus"]
    assert stats["qdq_pairs"] == want["pairs"]
    assert stats["fused"] == want["anchors"] + want["shared"]
    assert "unfused" not in stats and not any(k.startswith("repaired") for k in stats)
    details = step["details"]
    scheme = gtarget.int8_scheme("cpu")
    assert details["target"] == "cpu"
    assert details["isa"] == gtarget.detect_cpu().isa() == scheme.isa
    assert details["activation_type"] == scheme.activation_type
    assert details["weight_bits"] == (7 if scheme.reduce_range else 8)
    assert details["fusion"]["unfused"] == 0
    assert details["fusion"]["fused"] == want["anchors"] + want["shared"]
    assert step["verify"]["passed"]  # verify-each against the declared tolerance
    assert step["verify"]["outputs"]["logits"]["cosine"] > 0.999


@uint8_cpu
def test_ort_runs_only_integer_conv_and_gemm(quantized: dict) -> None:
    ops = _optimized_ops(quantized["model"])
    ref_ops = _ops(quantized["float"])
    print("ORT optimized graph ops:", dict(ops))
    assert not FLOAT_KERNELS & set(ops), dict(ops)
    assert ops["QLinearConv"] == ref_ops["Conv"]
    assert ops["QGemm"] == ref_ops["Gemm"]


def test_details_attribute_on_the_pass() -> None:
    model, samples = _cleaned()
    p = _apply(model, samples.head(4))
    assert p.modified
    assert p.details["target"] == "cpu" and p.details["fusion"]["unfused"] == 0
    assert {"isa", "activation_type", "weight_bits", "why"} <= set(p.details)


def test_dequantized_weights_close_to_float() -> None:
    model, samples = _cleaned()
    before = {n.name: _arr(n.inputs[1]) for n in model.graph if n.op_type in ("Conv", "Gemm")}
    _apply(model, samples.head(4))
    for n in model.graph:
        if n.name in before:
            dq = n.inputs[1].producer()
            axis = dq.attributes["axis"].value
            wq, ws = _arr(dq.inputs[0]), _arr(dq.inputs[1])
            step = ws.reshape([-1 if i == axis else 1 for i in range(wq.ndim)])
            w = wq.astype(np.float32) * step
            assert np.all(np.abs(w - before[n.name]) <= step / 2 + 1e-6), n.name


def test_top1_accuracy_within_one_point(quantized: dict) -> None:
    acc = demo.top1_accuracy(quantized["model"], quantized["samples"], quantized["labels"])
    print(f"top-1 float {quantized['float_acc']:.4f} -> int8 QDQ {acc:.4f}")
    assert acc >= quantized["float_acc"] - 0.01


def test_idempotent(quantized: dict) -> None:
    model = quantized["model"]
    before = pt.to_bytes(model)
    p = _apply(model, quantized["samples"].head(4))
    assert not p.modified and not p.stats
    assert pt.to_bytes(model) == before


@uint8_cpu
def test_exclude_keeps_node_float() -> None:
    model, samples = _cleaned()
    p = _apply(model, samples.head(4), exclude=["/15/Gemm", "/0/Conv"])
    assert p.modified
    assert p.stats["quantized:Conv"] == 2 and p.stats["quantized:Gemm"] == 1
    nodes = {n.name: n for n in model.graph}
    for name in ("/15/Gemm", "/0/Conv"):
        # weight and bias stay float; /15/Gemm reads /12/Gemm's output through its DQ, since
        # a QGemm with a Relu after it always quantizes its output (else ORT makes a float
        # FusedGemm on dequantized weights)
        inputs = nodes[name].inputs[1:] if name == "/15/Gemm" else nodes[name].inputs
        assert not any(_op(v) == "DequantizeLinear" for v in inputs)
        assert nodes[name].inputs[1].dtype == ir.DataType.FLOAT
        assert nodes[name].inputs[1].const_value is not None
    # /0/Conv is float: its Relu is not absorbed, /3/Conv's input is quantized after it
    assert _consumers(nodes["/0/Conv"].outputs[0]) == ["Relu"]
    assert _op(nodes["/3/Conv"].inputs[0]) == "DequantizeLinear"
    assert (
        _act_dq(nodes["/3/Conv"].inputs[0]).inputs[0].producer().inputs[0].producer()
        is (nodes["/2/Relu"])
    )
    # /12/Gemm's Relu is absorbed: its output is quantized although /15/Gemm is float
    assert _consumers(nodes["/14/Relu"].outputs[0]) == ["QuantizeLinear"]
    assert _op(nodes["/15/Gemm"].inputs[0]) == "DequantizeLinear"


def test_op_types_per_tensor_int8_activations() -> None:
    model, samples = _cleaned()
    p = _apply(
        model,
        samples.head(4),
        op_types=["Gemm"],
        per_channel=False,
        activation_type="int8",
        check_fusion=False,
        repair=False,
    )
    assert p.stats["quantized:Gemm"] == 2 and "quantized:Conv" not in p.stats
    assert p.details["activation_type"] == "int8" and "fusion" not in p.details
    assert all(
        not any(_op(v) == "DequantizeLinear" for v in n.inputs)
        for n in model.graph
        if n.op_type == "Conv"
    )
    for n in model.graph:
        if n.op_type == "QuantizeLinear":
            assert _qparams(n)[1:] == (0, np.int8)
        if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None:
            if _arr(n.inputs[0]).dtype == np.int8:  # weights: one scale, no axis
                assert _arr(n.inputs[1]).shape == ()
                assert "axis" not in n.attributes


def test_options_refuse_unknown_op_type_and_repair_without_check() -> None:
    opts = get_pass(PASS).Options
    with pytest.raises(ValueError, match="cannot quantize"):
        opts(op_types=["Relu"])
    with pytest.raises(ValueError, match="check_fusion"):
        opts(repair=True, check_fusion=False)
    opts(repair=False, check_fusion=False)  # fine


def test_missing_data_is_a_pipeline_error() -> None:
    model, samples, _ = _demo()
    with pytest.raises(PipelineError, match="needs calibration data"):
        run_pipeline(model, "cleanup,qdq-insert", samples=samples.head(2))


@uint8_cpu
def test_old_opset_is_skipped() -> None:
    model, samples = _cleaned()
    want = _expected_demo_counts(model)
    model.opset_imports[""] = 12
    p = _apply(model, samples.head(4))
    assert not p.modified and dict(p.stats) == {"skipped:opset": want["anchors"] + want["shared"]}
    assert _ops(model)["QuantizeLinear"] == 0 and _ops(model)["DequantizeLinear"] == 0


def test_activation_qparams_represent_zero_exactly() -> None:
    for lo, hi in [(-1.3, 2.7), (0.0, 5.0), (-4.0, 0.0), (0.0, 0.0), (-1e-3, 100.0)]:
        scale, zp = qdq.activation_qparams(lo, hi, "uint8")
        assert zp.dtype == np.uint8 and scale > 0
        q0 = np.clip(np.rint(0.0 / scale) + int(zp), 0, 255)  # QuantizeLinear(0.0)
        assert q0 == int(zp) and (q0 - int(zp)) * scale == 0.0  # 0.0 round-trips exactly
        assert lo >= (0 - int(zp)) * float(scale) - float(scale)  # the range is covered
        assert hi <= (255 - int(zp)) * float(scale) + float(scale)
    scale, zp = qdq.activation_qparams(-2.0, 1.0, "int8")
    assert zp == 0 and zp.dtype == np.int8 and np.isclose(scale, 2.0 / 127)


def test_options_are_frozen_dataclass_with_defaults() -> None:
    opts = get_pass(PASS).Options()
    assert opts.calibration == "minmax" and opts.target == "auto"
    assert opts.activation_type == "auto" and opts.reduce_range == "auto"
    assert opts.check_fusion and opts.repair and opts.exclude == []
    assert "Softmax" not in opts.op_types  # opt-in (the demo tests show what the default does)
    assert set(opts.op_types) <= qdq.SUPPORTED
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.bins = 3  # type: ignore[misc]


# ------------------------------------------------------------------------------ targets
def _cpu(arch: str, *flags: str) -> gtarget.CpuFeatures:
    return gtarget.CpuFeatures(arch=arch, model="fabricated", flags=frozenset(flags))


@pytest.mark.parametrize(
    ("cpu", "isa"),
    [
        (_cpu("x86_64", "avx2", "avx512f", "avx512_vnni"), "vnni"),
        (_cpu("x86_64", "avx2", "avx_vnni"), "vnni"),
        (_cpu("x86_64", "avx2", "avx512f", "avx512_vnni", "amx_int8"), "amx"),
    ],
)
def test_scheme_vnni_and_amx_are_uint8_full_range(cpu: gtarget.CpuFeatures, isa: str) -> None:
    s = gtarget.int8_scheme("cpu", cpu)
    assert (s.target, s.isa, s.activation_type, s.reduce_range) == ("cpu", isa, "uint8", False)


@pytest.mark.parametrize(
    ("cpu", "isa"),
    [(_cpu("x86_64", "avx", "avx2", "fma"), "avx2"), (_cpu("x86_64", "avx2", "avx512f"), "avx512")],
)
def test_scheme_without_vnni_reduces_range(cpu: gtarget.CpuFeatures, isa: str) -> None:
    s = gtarget.int8_scheme("cpu", cpu)
    assert (s.isa, s.activation_type, s.reduce_range) == (isa, "uint8", True)


def test_scheme_arm_is_uint8_and_cuda_symmetric_int8() -> None:
    arm = gtarget.int8_scheme("cpu", _cpu("aarch64", "asimd", "asimddp"))
    assert (arm.isa, arm.activation_type, arm.reduce_range) == ("arm-dot", "uint8", False)
    for t in ("cuda", "tensorrt"):
        s = gtarget.int8_scheme(t, _cpu("x86_64", "avx2"))  # the CPU does not matter
        assert (s.target, s.activation_type, s.reduce_range) == (t, "int8", False)


def test_reduce_range_auto_on_avx2_gives_7_bit_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gtarget, "detect_cpu", lambda: _cpu("x86_64", "avx", "avx2", "fma"))
    model, samples = _cleaned()
    before = {n.name: _arr(n.inputs[1]) for n in model.graph if n.op_type in ("Conv", "Gemm")}
    p = _apply(model, samples.head(4))
    assert p.details["isa"] == "avx2" and p.details["weight_bits"] == 7
    assert p.details["activation_type"] == "uint8"
    for n in model.graph:
        if n.name in before:
            dq = n.inputs[1].producer()
            wq, ws = _arr(dq.inputs[0]), _arr(dq.inputs[1])
            axis = dq.attributes["axis"].value
            others = tuple(i for i in range(wq.ndim) if i != axis)
            assert wq.min() >= -63 and wq.max() <= 63, n.name
            assert (np.abs(wq.astype(np.int32)).max(axis=others) == 63).all()  # 7 bits used
            step = ws.reshape([-1 if i == axis else 1 for i in range(wq.ndim)])
            assert np.all(np.abs(wq * step - before[n.name]) <= step / 2 + 1e-6)
    # the explicit option wins over the CPU
    model2, _ = _cleaned()
    p2 = _apply(model2, samples.head(4), reduce_range="false")
    assert p2.details["weight_bits"] == 8
    assert (
        max(
            int(np.abs(_arr(v).astype(np.int32)).max())
            for v in model2.graph.initializers.values()
            if v.dtype == ir.DataType.INT8 and v.shape.rank() > 1
        )
        == 127
    )


def test_fabricated_arm_cpu_gives_uint8_with_full_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gtarget, "detect_cpu", lambda: _cpu("aarch64", "asimd", "asimddp"))
    model, samples = _cleaned()
    # ORT here is not ARM: do not let the fusion check judge an ARM scheme
    p = _apply(model, samples.head(4), check_fusion=False, repair=False)
    assert p.details["isa"] == "arm-dot" and p.details["activation_type"] == "uint8"
    assert p.details["weight_bits"] == 8
    qs = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert qs and all(_qparams(q)[2] == np.uint8 for q in qs)


@pytest.mark.parametrize("how", ["option", "context"])
def test_cuda_target_is_symmetric_int8_everywhere(how: str) -> None:
    model, samples = _cleaned()
    reference = pt.copy_model(model)
    if how == "option":
        p = _apply(model, samples.head(4), target="cuda")
    else:  # target=auto follows the run's target
        p = _apply(model, samples.head(4), ctx_target="cuda")
    assert p.modified and p.details["target"] == "cuda"
    assert p.details["activation_type"] == "int8"
    assert "fusion" not in p.details  # the CPU fusion check does not apply to CUDA
    qs = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert len(qs) >= _expected_demo_counts(reference)["anchors"]
    for n in qs:
        assert _qparams(n)[1:] == (0, np.int8), n.name
    for n in model.graph:
        if n.op_type == "DequantizeLinear":
            z = _arr(n.inputs[2])
            assert z.dtype in (np.int8, np.int32) and not z.any(), n.name
    # every Conv/Gemm still reads dequantized int8 input and weights
    for n in model.graph:
        if n.op_type in ("Conv", "Gemm"):
            assert _qparams(_act_dq(n.inputs[0]))[2] == np.int8
            assert _arr(n.inputs[1].producer().inputs[0]).dtype == np.int8
    # still computes the same thing (run on the CPU EP)
    assert _min_cosine(reference, model, samples.head(2).feeds) >= 0.99


# ------------------------------------------------------------------------------ synthetic
def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _quantize_synthetic(
    model: ir.Model, calib: data.Samples, **options: object
) -> tuple[ir.Model, qdq.InsertQdqPass]:
    reference = pt.copy_model(model)
    p = _apply(model, calib, **options)
    assert p.modified
    return reference, p


def _attention_block(divide: float | None = None) -> ir.Model:
    """x -> {q,k,v} = Reshape(MatMul(x, W) + b) -> Transpose; softmax(q k^T) v -> out proj.

    ``divide``: the scores are divided by this constant before the Softmax (1/sqrt(d)).
    """
    rng = np.random.default_rng(0)
    b, s, d, h = 2, 8, 16, 2
    nodes, inits = [], []
    for p in "qkv":
        inits += [pt.init(f"W{p}", _w(rng, d, d)), pt.init(f"b{p}", _w(rng, d))]
        nodes += [
            pt.node("MatMul", ["x", f"W{p}"], [f"{p}_mm"]),
            pt.node("Add", [f"{p}_mm", f"b{p}"], [f"{p}_add"]),
            pt.node("Reshape", [f"{p}_add", "heads"], [f"{p}_r"]),
        ]
    inits += [
        pt.init("heads", np.array([b, s, h, d // h], np.int64)),
        pt.init("merge", np.array([b, s, d], np.int64)),
        pt.init("Wo", _w(rng, d, d)),
        pt.init("bo", _w(rng, d)),
        *([] if divide is None else [pt.init("sqrt_d", np.array(divide, np.float32))]),
    ]
    nodes += [
        pt.node("Transpose", ["q_r"], ["q_t"], perm=[0, 2, 1, 3]),
        pt.node("Transpose", ["k_r"], ["k_t"], perm=[0, 2, 3, 1]),
        pt.node("Transpose", ["v_r"], ["v_t"], perm=[0, 2, 1, 3]),
        pt.node("MatMul", ["q_t", "k_t"], ["scores" if divide is None else "raw"]),
        *([] if divide is None else [pt.node("Div", ["raw", "sqrt_d"], ["scores"])]),
        pt.node("Softmax", ["scores"], ["probs"], axis=-1),
        pt.node("MatMul", ["probs", "v_t"], ["ctx"]),
        pt.node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        pt.node("Reshape", ["ctx_t", "merge"], ["ctx_r"]),
        pt.node("MatMul", ["ctx_r", "Wo"], ["o_mm"]),
        pt.node("Add", ["o_mm", "bo"], ["y"]),
    ]
    return pt.make_model(nodes, [pt.vi("x", [b, s, d])], [pt.vi("y", [b, s, d])], inits)


@pytest.mark.parametrize("divide", [2.0, math.sqrt(8.0)])
def test_attention_scale_goes_into_the_dequantization_scale(divide: float) -> None:
    model = _attention_block(divide)
    calib = data.random_feeds(model, count=8, seed=1)
    reference, p = _quantize_synthetic(model, calib)
    assert p.stats["folded_scalar_Div"] == 1
    assert not [n for n in model.graph if n.op_type == "Div"]
    mm = next(n for n in model.graph if n.name == "raw_node")
    (use,) = list(mm.outputs[0].uses())
    assert use.node.op_type == "QuantizeLinear"  # the scores' Q: Softmax is int8 on the CPU
    ((dq, _),) = list(use.node.outputs[0].uses())
    assert [u.node.op_type for u in dq.outputs[0].uses()] == ["Softmax"]
    a_dq, b_dq = (v.producer() for v in mm.inputs)
    assert a_dq.op_type == b_dq.op_type == "DequantizeLinear"
    q = a_dq.inputs[0].producer()  # the shared quantized q_t, read with its own scale
    s_q = float(q.inputs[1].const_value.numpy())
    assert float(a_dq.inputs[1].const_value.numpy()) == pytest.approx(s_q / divide, rel=1e-6)
    assert p.details["fusion_final"]["unfused"] == 0
    assert _min_cosine(reference, model, calib.head(2).feeds) >= 0.99
    again = _apply(model, calib)
    assert not again.modified


def test_attention_block() -> None:
    model = _attention_block()
    reference, p = _quantize_synthetic(model, data.random_feeds(model, count=8, seed=1))
    nodes = {n.name: n for n in model.graph}
    ref_nodes = list(reference.graph)
    # activation x activation MatMuls (no constant input): both inputs quantized
    act_mm = [
        n.name
        for n in ref_nodes
        if n.op_type == "MatMul" and all(v.const_value is None for v in n.inputs)
    ]
    assert len(act_mm) == 2
    for name in act_mm:
        for v in nodes[name].inputs:
            _act_dq(v)
    # the output projection is a 2-D MatMul + bias Add: ORT's MatMulAddFusion turns it into a
    # float Gemm before any QDQ fusion, so the fusion check reports it and repair keeps it float
    assert p.details["fusion"]["unfused_nodes"] == {"o_mm_node": "Gemm"}
    assert p.details["kept_float"] == {"o_mm_node": "unfused"}
    assert p.stats["repaired:MatMul"] == 1
    o_mm = nodes["o_mm_node"]
    assert o_mm.inputs[1].name == "Wo" and o_mm.inputs[1].const_value is not None
    # Reshape/Transpose between quantized nodes are in the region, sharing parameters; the two
    # feeding the (now float) output projection have no quantized consumer and stay float
    movers = [n.name for n in ref_nodes if n.op_type in ("Reshape", "Transpose")]
    assert len(movers) == 8
    to_float = {"ctx_t_node", "ctx_r_node"}
    for name in movers:
        n = nodes[name]
        q = _quantize_node(n.outputs[0])
        if name in to_float:
            assert q is None, f"{name}'s output is quantized for a float consumer"
            continue
        assert q is not None, f"{name}'s output is not quantized"
        assert _qparams(_act_dq(n.inputs[0])) == _qparams(q), name
    # the q/k/v bias Adds feed quantized Reshapes: quantized (both inputs dequantized)
    for p_ in "qkv":
        add = nodes[f"{p_}_add_node"]
        assert all(_op(v) == "DequantizeLinear" for v in add.inputs)
        assert _quantize_node(add.outputs[0]) is not None
    # the output Add feeds the graph output: float, and so is the MatMul before it
    out_add = model.graph.outputs[0].producer()
    assert out_add.op_type == "Add" and out_add.name == "y_node"
    assert not any(_op(v) == "DequantizeLinear" for v in out_add.inputs)
    assert out_add.inputs[1].name == "bo" and out_add.inputs[1].dtype == ir.DataType.FLOAT
    assert _quantize_node(out_add.inputs[0]) is None
    # on the CPU the Softmax is int8 (QLinearSoftmax): its input quantized after the float
    # scores MatMul output, which no quantized node produces
    assert _quantize_node(nodes["scores_node"].outputs[0]) is not None
    assert p.stats["quantized:MatMul(activations)"] == 2
    assert p.stats["quantized:MatMul"] == 3 and p.stats["quantized:Add"] == 3
    assert p.stats["quantized:Softmax"] == 1
    ops = _optimized_ops(model)
    assert ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] >= 4
    assert ops["QLinearAdd"] == 3 and ops["QLinearSoftmax"] == 1 and not ops["Softmax"]
    assert _min_cosine(reference, model, pt.random_feeds(model, count=4, seed=2)) >= 0.99
    again = _apply(model, data.random_feeds(model, count=2, seed=1))
    assert not again.modified and not again.stats


def _masked_attention(mask_value: float) -> ir.Model:
    """softmax(scores + mask) @ v, where the mask puts ``mask_value`` on padded keys, as
    Hugging Face exports do (finfo.min), older ones (-1e4) and others (-inf)."""
    rng = np.random.default_rng(5)
    b, h, s, d = 2, 2, 16, 8
    keep = np.ones((b, 1, 1, s), np.float32)
    keep[0, ..., 11:] = 0
    keep[1, ..., 6:] = 0
    mask = np.where(keep > 0, 0.0, mask_value).astype(np.float32)
    nodes = [
        pt.node("MatMul", ["q", "Wk"], ["scores"]),
        pt.node("Add", ["scores", "mask"], ["masked"]),
        pt.node("Softmax", ["masked"], ["probs"], axis=-1),
        pt.node("MatMul", ["probs", "Wv"], ["y"]),
    ]
    inits = [
        pt.init("Wk", _w(rng, d, s, scale=1.0)),
        pt.init("Wv", _w(rng, s, d, scale=1.0)),
        pt.init("mask", mask),
    ]
    return pt.make_model(nodes, [pt.vi("q", [b, h, s, d])], [pt.vi("y", [b, h, s, d])], inits)


@pytest.mark.parametrize("mask_value", [float(np.finfo(np.float32).min), -1e4, -np.inf])
def test_masked_softmax_range_comes_from_rows_not_the_mask(mask_value: float) -> None:
    """A min/max range over scores + mask would give the scores one level of 256; the range
    from the rows keeps the softmax within its output step."""
    model = _masked_attention(mask_value)
    calib = data.random_feeds(model, count=8, seed=1)
    reference, p = _quantize_synthetic(model, calib, budget="none")
    q = _quantize_node(next(n for n in model.graph if n.op_type == "Add").outputs[0])
    assert q is not None
    scale = float(q.inputs[1].const_value.numpy())
    assert scale < 0.2, f"the mask took the range: scale {scale}"
    assert p.stats["quantized:Softmax"] == 1
    assert _optimized_ops(model)["QLinearSoftmax"] == 1
    assert _min_cosine(reference, model, calib.head(4).feeds) >= 0.995
    assert not _apply(model, calib, budget="none").modified


def test_softmax_stays_float_for_cuda_and_off_the_last_axis() -> None:
    model = _masked_attention(-1e4)
    calib = data.random_feeds(model, count=4, seed=1)
    cuda = pt.copy_model(model)
    p = _apply(cuda, calib, target="cuda", budget="none")
    assert "quantized:Softmax" not in p.stats
    softmax = next(n for n in cuda.graph if n.op_type == "Softmax")
    assert softmax.inputs[0].producer().op_type == "Add"
    other = pt.copy_model(model)
    next(n for n in other.graph if n.op_type == "Softmax").attributes["axis"] = ir.AttrInt64(
        "axis", 2
    )
    p = _apply(other, calib, budget="none")
    assert "quantized:Softmax" not in p.stats


def test_softmax_input_range_from_row_statistics() -> None:
    from graphopt.passes.quantize.qdq_params import softmax_input_range

    from graphopt.calib import TensorStats

    x = np.full((3, 64), np.finfo(np.float32).min, np.float32)
    x[0, :10] = np.linspace(-2.0, 9.0, 10)
    x[1, :4] = np.linspace(-1.0, 1.5, 4)  # the smallest row maximum: 1.5
    x[2, :] = 0.0  # a constant row says nothing about the range
    lo, hi = softmax_input_range(TensorStats().update(x))
    assert hi == 9.0
    assert lo == pytest.approx(1.5 - math.log(256 * 64))
    lo, hi = softmax_input_range(TensorStats().update(np.array([[0.0, 1.0]], np.float32)))
    assert (lo, hi) == (0.0, 1.0)  # the data's own minimum is above the tail


def _embedding(then_matmul: bool) -> tuple[ir.Model, np.ndarray]:
    """ids -> Gather(table float[1000, 64]) [-> MatMul(W)] -> y."""
    rng = np.random.default_rng(0)
    table = _w(rng, 1000, 64, scale=1.0)
    nodes = [pt.node("Gather", ["table", "ids"], ["emb" if then_matmul else "y"], axis=0)]
    inits = [pt.init("table", table)]
    out = [2, 5, 64]
    if then_matmul:
        nodes.append(pt.node("MatMul", ["emb", "W"], ["y"]))
        inits.append(pt.init("W", _w(rng, 64, 32, scale=0.2)))
        out = [2, 5, 32]
    model = pt.make_model(nodes, [pt.vi("ids", [2, 5], pt.INT64)], [pt.vi("y", out)], inits)
    return model, table


def _check_embedding(model: ir.Model, reference: ir.Model, table: np.ndarray) -> None:
    gather = next(n for n in model.graph if n.op_type == "Gather")
    dq = gather.inputs[0].producer()
    assert dq is not None and dq.op_type == "DequantizeLinear"
    q, scale, zp = (_arr(v) for v in dq.inputs)
    want = np.uint8 if gtarget.int8_scheme("cpu").activation_type == "uint8" else np.int8
    assert q.dtype == want and q.shape == table.shape and scale.shape == ()
    deq = (q.astype(np.float64) - zp.astype(np.float64)) * float(scale)
    assert np.all(np.abs(deq - table) <= float(scale) / 2 + 1e-6)
    assert "table" not in model.graph.initializers  # the float copy is gone
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT
    feeds = data.random_feeds(model, count=3, seed=2, int_high=1000).feeds
    assert _min_cosine(reference, model, feeds) >= 0.999


def test_gather_embedding_table_feeding_a_matmul() -> None:
    model, table = _embedding(then_matmul=True)
    calib = data.random_feeds(model, count=4, seed=1, int_high=1000)
    reference, p = _quantize_synthetic(model, calib)
    assert p.stats["quantized:Gather(embedding)"] == 1 and p.stats["quantized:MatMul"] == 1
    _check_embedding(model, reference, table)
    # the gathered rows reach the MatMul quantized with the table's own parameters
    gather = next(n for n in model.graph if n.op_type == "Gather")
    mm = next(n for n in model.graph if n.op_type == "MatMul")
    assert _qparams(_act_dq(mm.inputs[0])) == _qparams(gather.inputs[0].producer())


def test_gather_embedding_table_alone() -> None:
    model, table = _embedding(then_matmul=False)
    calib = data.random_feeds(model, count=4, seed=1, int_high=1000)
    reference, _ = _quantize_synthetic(model, calib)
    _check_embedding(model, reference, table)


def _conv(name: str, x: str, y: str, cin: int, cout: int, rng: np.random.Generator) -> tuple:
    node = pt.node("Conv", [x, f"{name}_w", f"{name}_b"], [y], pads=[1, 1, 1, 1])
    inits = [pt.init(f"{name}_w", _w(rng, cout, cin, 3, 3)), pt.init(f"{name}_b", _w(rng, cout))]
    return node, inits


def _residual_block() -> ir.Model:
    """Conv->Relu = h; h->Conv->Relu->Conv = r; Relu(h + r) -> Conv -> y."""
    rng = np.random.default_rng(0)
    c = 8
    c0, i0 = _conv("c0", "x", "c0_out", 3, c, rng)
    c1, i1 = _conv("c1", "h", "c1_out", c, c, rng)
    c2, i2 = _conv("c2", "h1", "r", c, c, rng)
    c3, i3 = _conv("c3", "s", "y", c, 4, rng)
    nodes = [
        c0,
        pt.node("Relu", ["c0_out"], ["h"]),
        c1,
        pt.node("Relu", ["c1_out"], ["h1"]),
        c2,
        pt.node("Add", ["h", "r"], ["sum"]),
        pt.node("Relu", ["sum"], ["s"]),
        c3,
    ]
    inits = [*i0, *i1, *i2, *i3]
    return pt.make_model(nodes, [pt.vi("x", [2, 3, 6, 6])], [pt.vi("y", [2, 4, 6, 6])], inits)


@uint8_cpu
def test_residual_add_is_quantized() -> None:
    model = _residual_block()
    reference, p = _quantize_synthetic(model, data.random_feeds(model, count=8, seed=1))
    add = next(n for n in model.graph if n.op_type == "Add")
    for v in add.inputs:  # h (after c0's absorbed Relu) and r (c2's output)
        _act_dq(v)
    # its Relu is absorbed: the Relu output is quantized, zero point 0
    assert _consumers(add.outputs[0]) == ["Relu"]
    q = _quantize_node(next(iter(add.outputs[0].uses())).node.outputs[0])
    assert q is not None and _qparams(q)[1] == 0
    assert p.stats["quantized:Add"] == 1 and p.stats["quantized:Conv"] == 4
    assert p.details["fusion"]["unfused"] == 0
    ops = _optimized_ops(model)
    assert ops["QLinearAdd"] == 1 and ops["QLinearConv"] == 4
    assert not FLOAT_KERNELS & set(ops) and "Add" not in ops
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert _min_cosine(reference, model, pt.random_feeds(model, count=4, seed=2)) >= 0.99


def test_graph_outputs_of_quantized_convs_keep_their_names() -> None:
    rng = np.random.default_rng(1)
    n1, i1 = _conv("c1", "x", "y1", 3, 4, rng)
    n2, i2 = _conv("c2", "y1", "c2_out", 4, 4, rng)
    model = pt.make_model(
        [n1, n2, pt.node("Relu", ["c2_out"], ["y2"])],
        [pt.vi("x", [2, 3, 5, 5])],
        [pt.vi("y1", [2, 4, 5, 5]), pt.vi("y2", [2, 4, 5, 5])],
        [*i1, *i2],
    )
    reference, p = _quantize_synthetic(model, data.random_feeds(model, count=8, seed=1))
    assert p.stats["quantized:Conv"] == 2
    assert [(o.name, o.dtype, str(o.shape)) for o in model.graph.outputs] == [
        (o.name, o.dtype, str(o.shape)) for o in reference.graph.outputs
    ]
    for out in model.graph.outputs:
        assert _op(out) == "DequantizeLinear", out.name  # the quantized value, still named
        _act_dq(out)
    convs = {n.name: n for n in model.graph if n.op_type == "Conv"}
    # c1's output is quantized once; c2 reads the same dequantized tensor as the graph output
    assert _consumers(convs["y1_node"].outputs[0]) == ["QuantizeLinear"]
    assert convs["c2_out_node"].inputs[0] is model.graph.outputs[0]
    names, _ = pt.run_model(model, pt.random_feeds(model, count=1))
    assert names == ["y1", "y2"]
    assert _min_cosine(reference, model, pt.random_feeds(model, count=4, seed=2)) >= 0.99
    again = _apply(model, data.random_feeds(model, count=2, seed=1))
    assert not again.modified and [o.name for o in model.graph.outputs] == ["y1", "y2"]


# ------------------------------------------------------------------------------ repair
def _two_branches() -> ir.Model:
    """x -> Conv -> Relu -> r (fuses), z -> Gemm(alpha=0.5) -> y (ORT has no QGemm for it)."""
    rng = np.random.default_rng(2)
    conv, inits = _conv("c", "x", "c_out", 3, 4, rng)
    return pt.make_model(
        [
            conv,
            pt.node("Relu", ["c_out"], ["r"]),
            pt.node("Gemm", ["z", "W2", "b2"], ["y"], alpha=0.5, transB=1),
        ],
        [pt.vi("x", [2, 3, 5, 5]), pt.vi("z", [4, 16])],
        [pt.vi("r", [2, 4, 5, 5]), pt.vi("y", [4, 8])],
        [*inits, pt.init("W2", _w(rng, 8, 16)), pt.init("b2", _w(rng, 8))],
    )


def test_unfused_gemm_stays_quantized_without_repair() -> None:
    model = _two_branches()
    _, p = _quantize_synthetic(model, data.random_feeds(model, count=4, seed=1), repair=False)
    # precondition: ONNX Runtime does not fuse this Gemm (if it learns to, find another case)
    assert p.details["fusion"]["unfused_nodes"] == {"y_node": "Gemm"}
    assert p.stats["unfused"] == 1 and p.stats["fused"] == 1
    gemm = model.graph.outputs[1].producer()
    assert _op(gemm.inputs[0]) == "DequantizeLinear" and _op(gemm.inputs[1]) == "DequantizeLinear"
    assert "kept_float" not in p.details and not any(k.startswith("repaired") for k in p.stats)


def test_repair_gives_unfused_gemm_its_float_inputs_back() -> None:
    model = _two_branches()
    reference, p = _quantize_synthetic(model, data.random_feeds(model, count=4, seed=1))
    assert p.stats["repaired:Gemm"] == 1
    assert p.details["kept_float"] == {"y_node": "unfused"}
    assert p.details["fusion_after_repair"]["unfused"] == 0
    assert p.details["fusion_final"]["unfused"] == 0 and "unfused" not in p.stats
    ref = {n.name: n for n in reference.graph}
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert gemm.inputs[0] is model.graph.inputs[1]  # z itself, no Q/DQ
    for i in (1, 2):
        assert _op(gemm.inputs[i]) is None
        np.testing.assert_array_equal(_arr(gemm.inputs[i]), _arr(ref["y_node"].inputs[i]))
    assert not any(u.node.op_type == "QuantizeLinear" for u in model.graph.inputs[1].uses())
    _assert_no_dangling_qdq(model)
    # the Conv branch is still integer
    conv = next(n for n in model.graph if n.op_type == "Conv")
    _act_dq(conv.inputs[0])
    ops = _optimized_ops(model)
    assert ops["QLinearConv"] == 1 and _float_kernels_reading_dq(model) == []
    feeds = pt.random_feeds(model, count=3, seed=2)
    _, want = pt.run_model(reference, feeds)
    _, got = pt.run_model(model, feeds)
    for w_, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g[1], w_[1], rtol=1e-6, atol=1e-6)  # y: float again
        assert _cos(g[0], w_[0]) >= 0.99  # r: int8 Conv
    again = _apply(model, data.random_feeds(model, count=2, seed=1))
    assert not again.modified


def _report_unfused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """ONNX Runtime "does not fuse" ``name``: every fusion check reports it unfused."""
    real = fusion.check_fusion

    def fake(model: ir.Model, nodes: object, ep: str = "cpu") -> fusion.FusionReport:
        report = real(model, nodes, ep)
        if name in report.fused:
            report.fused.remove(name)
            report.unfused.append(name)
        return report

    monkeypatch.setattr(fusion, "check_fusion", fake)


@uint8_cpu
def test_repair_of_a_demo_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    _report_unfused(monkeypatch, "/3/Conv")
    model, samples = _cleaned()
    reference = pt.copy_model(model)
    p = _apply(model, samples.head(4))
    assert p.stats["repaired:Conv"] == 1 and p.details["kept_float"] == {"/3/Conv": "unfused"}
    ref = {n.name: n for n in reference.graph}
    nodes = {n.name: n for n in model.graph}
    for i in (1, 2):
        assert _op(nodes["/3/Conv"].inputs[i]) is None
        np.testing.assert_array_equal(
            _arr(nodes["/3/Conv"].inputs[i]), _arr(ref["/3/Conv"].inputs[i])
        )
    for name in ("/0/Conv", "/7/Conv", "/12/Gemm", "/15/Gemm"):
        assert _op(nodes[name].inputs[1]) == "DequantizeLinear", name
    _assert_no_dangling_qdq(model)
    assert _min_cosine(reference, model, samples.head(2).feeds) >= 0.99
    # without repair the same report leaves it quantized
    model2, _ = _cleaned()
    p2 = _apply(model2, samples.head(4), repair=False)
    assert p2.stats["unfused"] == 1 and "repaired:Conv" not in p2.stats
    assert _op(next(n for n in model2.graph if n.name == "/3/Conv").inputs[1]) == (
        "DequantizeLinear"
    )


# ------------------------------------------------------------------------------ known gaps
def _matmul_bias() -> ir.Model:
    rng = np.random.default_rng(3)
    return pt.make_model(
        [pt.node("MatMul", ["x", "W"], ["h"]), pt.node("Add", ["h", "b"], ["y"])],
        [pt.vi("x", [4, 16])],
        [pt.vi("y", [4, 8])],
        [pt.init("W", _w(rng, 16, 8)), pt.init("b", _w(rng, 8))],
    )


def _gemm_relu() -> ir.Model:
    rng = np.random.default_rng(4)
    return pt.make_model(
        [
            pt.node("Gemm", ["x", "W", "b"], ["h"], alpha=0.5, transB=1),
            pt.node("Relu", ["h"], ["y"]),
        ],
        [pt.vi("x", [4, 16])],
        [pt.vi("y", [4, 8])],
        [pt.init("W", _w(rng, 8, 16)), pt.init("b", _w(rng, 8))],
    )


@pytest.mark.parametrize("case", ["matmul+bias", "gemm+relu", "demo-exclude-last-gemm"])
def test_renamed_unfused_nodes_are_reported_and_repaired(case: str) -> None:
    if case == "demo-exclude-last-gemm":
        model, samples = _cleaned()
        p = _apply(model, samples.head(4), exclude=["/15/Gemm"])
    else:
        model = _matmul_bias() if case == "matmul+bias" else _gemm_relu()
        p = _apply(model, data.random_feeds(model, count=4, seed=1))
    # no float Conv/Gemm/MatMul in ORT's graph pays for DequantizeLinear inputs (except the
    # node the user excluded: it reads the int8 output of the QGemm before it) ...
    allowed = ["/15/Gemm (Gemm)"] if case == "demo-exclude-last-gemm" else []
    assert _float_kernels_reading_dq(model) == allowed
    # ... and the final check classifies every node that stayed quantized
    final = p.details["fusion_final"]
    assert final["fused"] + final["unfused"] == len(p.quantized)


@uint8_cpu
def test_repair_replans_what_fed_the_repaired_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """/12/Gemm goes back to float: the Flatten before it was quantized only for it."""
    _report_unfused(monkeypatch, "/12/Gemm")
    model, samples = _cleaned()
    reference = pt.copy_model(model)
    p = _apply(model, samples.head(4))
    assert p.stats["repaired:Gemm"] == 1 and p.details["kept_float"] == {"/12/Gemm": "unfused"}
    nodes = {n.name: n for n in model.graph}
    assert _op(nodes["/12/Gemm"].inputs[0]) == "Flatten"  # no Q/DQ in between any more
    assert _op(nodes["/12/Gemm"].inputs[1]) is None
    assert _op(nodes["/15/Gemm"].inputs[1]) == "DequantizeLinear"  # still int8
    assert _quantize_node(nodes["/10/Flatten"].outputs[0]) is None
    assert "/10/Flatten" not in p.quantized
    assert _op(nodes["/7/Conv"].inputs[1]) == "DequantizeLinear"  # a Conv output stays int8
    _assert_no_dangling_qdq(model)
    assert _min_cosine(reference, model, samples.head(2).feeds) >= 0.99


def test_nodes_kept_float_by_an_earlier_run_are_named_in_the_reason() -> None:
    """A second run on a model whose every quantizable node an earlier run kept float (budget,
    guard) declines with that reason, not "no float32 activation"."""
    model, samples = _cleaned()
    for node in model.graph:
        if node.op_type in ("Conv", "Gemm"):
            node.metadata_props[qdq.KEPT_FLOAT_KEY] = "sensitivity"
    p = _apply(model, samples.head(2))
    assert not p.modified
    assert p.declined == "every quantizable node was kept float by an earlier run"


def test_a_tensor_without_finite_values_stays_float() -> None:
    """A mask built with full(-inf) and concatenated to scores gave "no finite values were
    collected for this tensor", exit 3: it is simply not a quantization candidate."""
    rng = np.random.default_rng(0)
    model = pt.make_model(
        [
            pt.node("MatMul", ["x", "w"], ["h"]),
            pt.node("Shape", ["h"], ["shp"]),
            pt.node(
                "ConstantOfShape",
                ["shp"],
                ["neg"],
                value=onnx.numpy_helper.from_array(np.array([-np.inf], np.float32)),
            ),
            pt.node("Concat", ["h", "neg"], ["cat"], axis=-1),
            pt.node("Softmax", ["cat"], ["sm"], axis=-1),
            pt.node("MatMul", ["sm", "w2"], ["y"]),
        ],
        [pt.vi("x", [8, 16])],
        [pt.vi("y", [8, 16])],
        [
            pt.init("w", rng.standard_normal((16, 16)).astype(np.float32)),
            pt.init("w2", rng.standard_normal((32, 16)).astype(np.float32)),
        ],
    )
    feeds = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(4)]
    ref = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    p = _apply(model, data.Samples(feeds, "test"), guard=False, budget="none")
    assert p.modified
    assert p.details["no_finite_values"] == ["neg"]
    assert p.stats["kept_float:no_finite_values"] == 1
    assert any("no finite value" in n for n in p.render_notes())
    assert "neg" not in {n.inputs[0].name for n in pt.nodes_of(model, "QuantizeLinear")}
    assert _min_cosine(ref, model, feeds) > 0.99
