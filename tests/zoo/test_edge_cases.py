"""Every registered pass and preset on tiny models shaped the way other exporters write them.

Each model is small, real enough for every pass to find work (Conv, BatchNorm, MatMul, Gemm,
Gather), and carries one property that has broken graphopt on real exports: unnamed nodes,
dims stored as -1, symbolic dims, a 0-d input, opset 11, an If subgraph, Constant-node weights,
several outputs, integer inputs, a weight shared by two nodes, weights listed as inputs,
opset 6 at IR version 3.

Each (model, pipeline) cell runs ``graphopt optimize`` in-process with DATA. It passes when the
run either works, with every pass that left the model alone saying why, or stops with a
graphopt error (exit 1-3: a clear refusal). It fails on an internal error (a traceback's
worth of bug), on a verification failure (a pass broke the model), and on a lossy pass that
changed nothing without a reason (a silent no-op).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cli_testing
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import errors
from graphopt.core import registry
from graphopt.core.pipeline import PRESETS

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
SAMPLES = 6


def _w(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)


def _weights() -> dict[str, np.ndarray]:
    # big enough (>= 4096 values in the middle layers) for sparsify, cluster-weights and
    # prune-channels to act with their defaults
    return {
        "conv_w": _w((32, 3, 3, 3), 1),
        "conv_b": _w((32,), 2),
        "conv2_w": _w((32, 32, 3, 3), 16),
        "bn_scale": (1 + 0.1 * _w((32,), 3)).astype(np.float32),
        "bn_bias": _w((32,), 4),
        "bn_mean": 0.1 * _w((32,), 5),
        "bn_var": (1 + np.abs(_w((32,), 6))).astype(np.float32),
        "fc1_w": _w((32, 128), 7),
        "fc1_b": _w((128,), 8),
        "fc2_w": _w((4, 128), 9),  # Gemm transB
        "fc2_b": _w((4,), 10),
    }


def _cnn_nodes(x: str, y: str, features: str = "features") -> list[onnx.NodeProto]:
    """Conv -> Relu -> Conv -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> MatMul+Add
    -> Relu -> Gemm."""
    n = helper.make_node
    return [
        n("Conv", [x, "conv_w", "conv_b"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "conv2_w"], ["c"], name="conv2", pads=[1, 1, 1, 1]),
        n(
            "BatchNormalization",
            ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            ["b"],
            name="bn",
        ),
        n("Relu", ["b"], ["r"], name="relu"),
        n("GlobalAveragePool", ["r"], ["p"], name="gap"),
        n("Flatten", ["p"], [features], name="flatten"),
        n("MatMul", [features, "fc1_w"], ["m"], name="fc1"),
        n("Add", ["m", "fc1_b"], ["a"], name="fc1_bias"),
        n("Relu", ["a"], ["h"], name="relu2"),
        n("Gemm", ["h", "fc2_w", "fc2_b"], [y], name="fc2", transB=1),
    ]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, int, list | None]],
    outputs: list[tuple[str, int, list | None]],
    inits: dict[str, np.ndarray],
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "edge",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        [numpy_helper.from_array(a, k) for k, a in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _image_data(shape: tuple[int, ...] = (SAMPLES, 1, 3, 8, 8)) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


Case = Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]


def plain() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    proto = _model(_cnn_nodes("x", "y"), [("x", F, [1, 3, 8, 8])], [("y", F, [1, 4])], _weights())
    return proto, _image_data()


def unnamed_nodes():
    proto, data = plain()
    for node in proto.graph.node:
        node.name = ""
    return proto, data


def dims_minus_one():
    proto = _model(
        _cnn_nodes("x", "y"), [("x", F, [-1, 3, -1, -1])], [("y", F, [-1, 4])], _weights()
    )
    return proto, _image_data((SAMPLES, 1, 3, 8, 8))


def symbolic_dims():
    proto = _model(
        _cnn_nodes("x", "y"),
        [("x", F, ["batch", 3, "height", "width"])],
        [("y", F, ["batch", 4])],
        _weights(),
    )
    return proto, _image_data((SAMPLES, 2, 3, 12, 10))


def scalar_input():
    """A 0-d int64 input (as a sample rate or a step count) scales the output."""
    nodes = [
        *_cnn_nodes("x", "y0"),
        helper.make_node("Cast", ["gain"], ["g"], name="cast", to=F),
        helper.make_node("Mul", ["y0", "g"], ["y"], name="scale"),
    ]
    proto = _model(
        nodes, [("x", F, [1, 3, 8, 8]), ("gain", I64, [])], [("y", F, [1, 4])], _weights()
    )
    data = _image_data()
    data["gain"] = np.arange(1, SAMPLES + 1, dtype=np.int64)
    return proto, data


def opset_11():
    """Opset 11 (Paddle, old PyTorch): Unsqueeze/Squeeze axes are attributes."""
    nodes = _cnn_nodes("x", "f0", features="feat")
    nodes[-1] = helper.make_node("Gemm", ["h", "fc2_w", "fc2_b"], ["g"], name="fc2", transB=1)
    nodes += [
        helper.make_node("Unsqueeze", ["g"], ["u"], name="unsqueeze", axes=[1]),
        helper.make_node("Squeeze", ["u"], ["y"], name="squeeze", axes=[1]),
    ]
    proto = _model(nodes, [("x", F, [1, 3, 8, 8])], [("y", F, [1, 4])], _weights(), opset=11)
    return proto, _image_data()


def if_subgraph():
    """An If whose branches multiply by their own constant weights."""
    n = helper.make_node
    branch_w = {"then_w": _w((32, 4), 11), "else_w": _w((32, 4), 12)}

    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [n("MatMul", ["features", f"{name}_w"], [f"{name}_y"], name=f"{name}_mm")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", F, [1, 4])],
            [numpy_helper.from_array(branch_w[f"{name}_w"], f"{name}_w")],
        )

    nodes = [
        *_cnn_nodes("x", "unused")[:7],
        n("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
        n("Greater", ["total", "zero"], ["cond"], name="positive"),
        n(
            "If",
            ["cond"],
            ["y"],
            name="branch",
            then_branch=branch("then"),
            else_branch=branch("else"),
        ),
    ]
    weights = {**_weights(), "zero": np.array(0, np.float32)}
    proto = _model(nodes, [("x", F, [1, 3, 8, 8])], [("y", F, [1, 4])], weights)
    data = _image_data()
    data["x"][::2] = np.abs(data["x"][::2])  # both branches taken
    data["x"][1::2] = -np.abs(data["x"][1::2])
    return proto, data


def constant_weights():
    """Weights as Constant nodes instead of initializers (Paddle, old exporters)."""
    proto, data = plain()
    consts = [
        helper.make_node("Constant", [], [t.name], value=t)  # unnamed, as Paddle writes them
        for t in proto.graph.initializer
    ]
    del proto.graph.initializer[:]
    nodes = consts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto, data


def weights_as_inputs():
    """Initializers listed among the graph inputs (IR < 4, PyTorch 1.x)."""
    proto, data = plain()
    for t in proto.graph.initializer:
        proto.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return proto, data


def opset_6_ir3():
    """Opset 6, IR version 3, weights listed as inputs (Caffe2 and PyTorch 0.x exports): ONNX
    Runtime has no BatchNormalization(6) kernel, so graphopt lifts it to opset 7 at load."""
    proto, data = weights_as_inputs()
    for node in proto.graph.node:
        if node.op_type in ("Add", "Gemm"):  # broadcasting was opt-in before opset 7
            node.attribute.append(helper.make_attribute("broadcast", 1))
        if node.op_type == "BatchNormalization":
            node.attribute.append(helper.make_attribute("is_test", 1))
    proto.opset_import[0].version = 6
    proto.ir_version = 3
    return proto, data


def several_outputs():
    nodes = _cnn_nodes("x", "y")
    proto = _model(
        nodes,
        [("x", F, [1, 3, 8, 8])],
        [("y", F, [1, 4]), ("features", F, [1, 32]), ("h", F, [1, 128])],
        _weights(),
    )
    return proto, _image_data()


def integer_inputs():
    """Token ids into an embedding table, a mask, mean-pooled, then a MatMul."""
    n = helper.make_node
    nodes = [
        n("Gather", ["table", "ids"], ["emb"], name="embed"),
        n("Cast", ["mask"], ["maskf"], name="mask_cast", to=F),
        n("Unsqueeze", ["maskf", "axis2"], ["mask3"], name="mask_unsqueeze"),
        n("Mul", ["emb", "mask3"], ["masked"], name="mask_mul"),
        n("ReduceMean", ["masked"], ["pooled"], name="pool", axes=[1], keepdims=0),
        n("MatMul", ["pooled", "proj"], ["y"], name="proj_mm"),
    ]
    inits = {
        "table": _w((128, 64), 13),
        "proj": _w((64, 64), 14),
        "axis2": np.array([2], np.int64),
    }
    proto = _model(
        nodes,
        [("ids", I64, ["batch", "sequence"]), ("mask", BOOL, ["batch", "sequence"])],
        [("y", F, ["batch", 64])],
        inits,
    )
    rng = np.random.default_rng(0)
    data = {
        "ids": rng.integers(0, 128, (SAMPLES, 1, 10)).astype(np.int64),
        "mask": rng.random((SAMPLES, 1, 10)) < 0.8,
    }
    return proto, data


def shared_weight():
    """One weight read by two MatMuls (tied projections)."""
    n = helper.make_node
    nodes = [
        n("MatMul", ["a", "w"], ["pa"], name="mm_a"),
        n("MatMul", ["b", "w"], ["pb"], name="mm_b"),
        n("Add", ["pa", "pb"], ["s"], name="add"),
        n("Relu", ["s"], ["y"], name="relu"),
    ]
    proto = _model(
        nodes,
        [("a", F, [2, 64]), ("b", F, [2, 64])],
        [("y", F, [2, 128])],
        {"w": _w((64, 128), 15)},
    )
    rng = np.random.default_rng(0)
    data = {k: rng.standard_normal((SAMPLES, 2, 64)).astype(np.float32) for k in ("a", "b")}
    return proto, data


CASES: dict[str, Case] = {
    f.__name__: f
    for f in (
        plain,
        unnamed_nodes,
        dims_minus_one,
        symbolic_dims,
        scalar_input,
        opset_11,
        if_subgraph,
        constant_weights,
        weights_as_inputs,
        opset_6_ir3,
        several_outputs,
        integer_inputs,
        shared_weight,
    )
}
PIPELINES = [*registry.all_passes(), *PRESETS]


@pytest.fixture(scope="module")
def case_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("edge")
    files = {}
    for name, build in CASES.items():
        proto, data = build()
        onnx.checker.check_model(proto)
        (root / name).mkdir()
        model, npz = root / name / "model.onnx", root / name / "data.npz"
        onnx.save(proto, str(model))
        np.savez(npz, **data)
        files[name] = (model, npz)
    return files


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_pass_works_or_refuses_clearly(
    capsys: pytest.CaptureFixture[str],
    case_files: dict[str, tuple[Path, Path]],
    tmp_path: Path,
    case: str,
    pipeline: str,
) -> None:
    model, data = case_files[case]
    before = model.read_bytes()
    report = tmp_path / "r.json"
    res = cli_testing.cli(
        capsys, "optimize", model, "-o", tmp_path / "out.onnx", "-p", pipeline, "--data", data,
        "--report", report,
    )  # fmt: skip
    assert model.read_bytes() == before  # the input is never modified
    assert res.code != errors.EXIT_INTERNAL, res.err
    assert res.code != errors.EXIT_VERIFY, res.err
    if res.code != 0:
        assert res.err.startswith("graphopt: error: ") and "Traceback" not in res.err, res.err
        return
    rep = json.loads(report.read_text())
    silent = [r["step"] for r in rep["passes"] if r.get("silent")]
    assert not silent, f"changed nothing without a reason: {silent}"
    assert (tmp_path / "out.onnx").is_file()
