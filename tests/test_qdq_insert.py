"""qdq-insert: static int8 QDQ on the shipped demo CNN (3 Conv + 2 Gemm), calibrated on DATA.

Golden structure (Q/DQ counts, int8 per-channel weights, shared pairs, provenance, stats),
verify-each against the pass's tolerance through ``run_pipeline``, top-1 accuracy on the 450
held-out digits within one point of float, idempotence, options, the missing-data error, the
opset guard, and that ONNX Runtime CPU fuses the QDQ groups into integer kernels.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings

import graphopt.passes.quantize.insert_qdq as qdq  # registers qdq-insert
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import data, demo, runtime
from graphopt import ir as gir
from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PROVENANCE_KEY, PassContext
from graphopt.errors import PipelineError

PASS = "qdq-insert"
TARGETS = {"/0/Conv": "Conv", "/3/Conv": "Conv", "/7/Conv": "Conv", "/12/Gemm": "Gemm"}
TARGETS["/15/Gemm"] = "Gemm"


def _ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph)


def _demo() -> tuple[ir.Model, data.Samples, np.ndarray]:
    model_path, data_path = demo.demo_files()
    model = gir.load_model(model_path)
    samples = data.load_data(model, data_path, batch=50)
    return model, samples, np.load(data_path)["label"]


def _cleaned() -> tuple[ir.Model, data.Samples]:
    model, samples, _ = _demo()
    run_pipeline(model, "cleanup")
    return model, samples


def _apply(model: ir.Model, samples: data.Samples, **options: object) -> tuple[bool, dict]:
    cls = get_pass(PASS)
    pass_ = cls(cls.Options(**options), PassContext(data=samples.head(4)))
    return bool(pass_(model).modified), dict(pass_.stats)


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
    return {
        "model": model,
        "samples": samples,
        "labels": labels,
        "float_acc": float_acc,
        "report": result.report,
    }


def test_golden_structure(quantized: dict) -> None:
    model = quantized["model"]
    ops = _ops(model)
    assert ops["QuantizeLinear"] == 5  # one per distinct activation input
    assert ops["DequantizeLinear"] == 10  # 5 activations + 5 weights
    assert ops["Conv"] == 3 and ops["Gemm"] == 2
    nodes = {n.name: n for n in model.graph}
    for name in TARGETS:
        node = nodes[name]
        x_dq, w_dq = node.inputs[0].producer(), node.inputs[1].producer()
        assert x_dq.op_type == "DequantizeLinear" and w_dq.op_type == "DequantizeLinear"
        q = x_dq.inputs[0].producer()
        assert q.op_type == "QuantizeLinear"
        assert q.inputs[1] is x_dq.inputs[1] and q.inputs[2] is x_dq.inputs[2]
        scale = q.inputs[1].const_value.numpy()
        zp = q.inputs[2].const_value.numpy()
        assert scale.shape == () and scale.dtype == np.float32 and scale > 0
        assert zp.dtype == np.uint8
        wq = w_dq.inputs[0].const_value.numpy()
        ws = w_dq.inputs[1].const_value.numpy()
        wz = w_dq.inputs[2].const_value.numpy()
        assert wq.dtype == np.int8 and wq.min() >= -127 and wq.max() <= 127
        assert w_dq.attributes["axis"].value == 0  # Conv axis 0; these Gemms have transB=1
        assert ws.shape == (wq.shape[0],) and ws.dtype == np.float32
        assert wz.dtype == np.int8 and wz.shape == ws.shape and not wz.any()
        assert np.abs(wq).max(axis=tuple(range(1, wq.ndim))).min() == 127  # full range used
        assert node.inputs[2].dtype == ir.DataType.FLOAT  # bias stays float (TODO int32)
        for created in (q, x_dq, w_dq):
            assert created.metadata_props[PROVENANCE_KEY] == PASS
    # the graph input is non-negative pixels: its zero point is 0 (uint8 asymmetric)
    assert nodes["/0/Conv"].inputs[0].producer().inputs[2].const_value.numpy() == 0
    # float weights are gone, replaced by int8 ones
    inits = model.graph.initializers
    assert "0.weight" not in inits and "15.weight" not in inits
    int8 = [v for v in inits.values() if v.dtype == ir.DataType.INT8 and v.shape.rank() > 1]
    assert len(int8) == 5
    step = quantized["report"]["passes"][-1]
    assert step["pass"] == PASS and step["modified"]
    assert step["stats"] == {
        "quantized:Conv": 3,
        "quantized:Gemm": 2,
        "qdq_pairs": 5,
        "weights_quantized": 5,
    }
    assert step["verify"]["passed"]  # verify-each against the declared tolerance
    assert step["verify"]["outputs"]["logits"]["cosine"] > 0.999


def test_dequantized_weights_close_to_float() -> None:
    model, samples = _cleaned()
    before = {n.name: n.inputs[1].const_value.numpy() for n in model.graph if n.name in TARGETS}
    _apply(model, samples)
    for n in model.graph:
        if n.name in TARGETS:
            dq = n.inputs[1].producer()
            wq, ws = (v.const_value.numpy() for v in dq.inputs[:2])
            w = wq.astype(np.float32) * ws.reshape(-1, *([1] * (wq.ndim - 1)))
            step = ws.reshape(-1, *([1] * (wq.ndim - 1)))
            assert np.all(np.abs(w - before[n.name]) <= step / 2 + 1e-6)


def test_top1_accuracy_within_one_point(quantized: dict) -> None:
    acc = demo.top1_accuracy(quantized["model"], quantized["samples"], quantized["labels"])
    print(f"top-1 float {quantized['float_acc']:.4f} -> int8 QDQ {acc:.4f}")
    assert acc >= quantized["float_acc"] - 0.01


def test_idempotent(quantized: dict) -> None:
    model = quantized["model"]
    before = _ops(model)
    changed, stats = _apply(model, quantized["samples"])
    assert not changed and not stats
    assert _ops(model) == before


def test_exclude_keeps_node_float() -> None:
    model, samples = _cleaned()
    changed, stats = _apply(model, samples, exclude=["/15/Gemm", "/0/Conv"])
    assert changed
    assert stats == {
        "quantized:Conv": 2,
        "quantized:Gemm": 1,
        "qdq_pairs": 3,
        "weights_quantized": 3,
    }
    nodes = {n.name: n for n in model.graph}
    for name in ("/15/Gemm", "/0/Conv"):
        producers = [v.producer() for v in nodes[name].inputs if v is not None]
        assert not any(p is not None and p.op_type == "DequantizeLinear" for p in producers)
        assert nodes[name].inputs[1].dtype == ir.DataType.FLOAT


def test_op_types_and_per_tensor_and_int8_activations() -> None:
    model, samples = _cleaned()
    _, stats = _apply(model, samples, op_types=["Gemm"], per_channel=False, activation_type="int8")
    assert stats == {"quantized:Gemm": 2, "qdq_pairs": 2, "weights_quantized": 2}
    for n in model.graph:
        if n.op_type == "QuantizeLinear":
            assert n.inputs[2].const_value.numpy().dtype == np.int8
            assert n.inputs[2].const_value.numpy() == 0
        if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None:
            assert n.inputs[1].const_value.numpy().shape == ()
            assert "axis" not in n.attributes


def test_options_refuse_unknown_op_type() -> None:
    with pytest.raises(ValueError, match="cannot quantize"):
        get_pass(PASS).Options(op_types=["Relu"])


def test_missing_data_is_a_pipeline_error() -> None:
    model, samples, _ = _demo()
    with pytest.raises(PipelineError, match="needs calibration data"):
        run_pipeline(model, "cleanup,qdq-insert", samples=samples.head(2))


def test_old_opset_is_skipped() -> None:
    model, samples = _cleaned()
    model.opset_imports[""] = 12
    changed, stats = _apply(model, samples)
    assert not changed and stats == {"skipped:opset": 5}
    assert _ops(model)["QuantizeLinear"] == 0


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


def test_ort_fuses_qdq_into_integer_kernels(quantized: dict, tmp_path) -> None:
    rt = runtime.ort()
    so = runtime.session_options(optimize=True)
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    snap = runtime.Snapshot.of(quantized["model"])
    rt.InferenceSession(
        snap.data if snap.data is not None else str(snap.path),
        sess_options=so,
        providers=["CPUExecutionProvider"],
    )
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    print("ORT optimized graph ops:", dict(ops))
    integer = {"QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger"}
    integer |= {"MatMulIntegerToFloat"}
    assert sum(ops[k] for k in integer) >= 3
    assert ops["QLinearConv"] >= 1


def test_options_are_frozen_dataclass_with_docs() -> None:
    opts = get_pass(PASS).Options()
    assert opts.calibration == "minmax" and opts.activation_type == "uint8"
    assert opts.op_types == ["Conv", "Gemm", "MatMul"] and opts.exclude == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.bins = 3  # type: ignore[misc]
