"""Inputs for models from any exporter: -1 dims, 0-d inputs, test data beside the model, and
sizes the model runs with when no DATA is given (graphopt.inputs.probe)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cli_testing
import ml_dtypes
import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphopt import errors, runtime
from graphopt.core.pass_base import Tolerance
from graphopt.inputs import data as gdata
from graphopt.inputs import probe

MakeModel = Callable[..., onnx.ModelProto]
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _needs_square(build_proto: MakeModel, side: int, meta: dict[str, str] | None = None):
    """images[batch,3,height,width] that only runs at height = width = ``side`` (a Reshape to
    a fixed size, as a detector's head does to its grid)."""
    shape = helper.make_tensor("shape", I64, [4], [1, 3, side, side])
    proto = build_proto(
        [helper.make_node("Reshape", ["images", "shape"], ["y"])],
        [("images", F, ["batch", 3, "height", "width"])],
        [("y", F, [1, 3, side, side])],
        [shape],
    )
    for k, v in (meta or {}).items():
        proto.metadata_props.add(key=k, value=v)
    return proto


def test_minus_one_and_zero_dims_are_dynamic(build_proto: MakeModel, tmp_path: Path) -> None:
    proto = build_proto(
        [helper.make_node("Relu", ["x"], ["y"])], [("x", F, [-1, 3, 0])], [("y", F, None)]
    )
    model = _ir(proto)
    (spec,) = gdata.input_specs(model)
    assert spec.dims == (None, 3, None)
    arrays = {"x": np.ones((4, 3, 5), np.float32)}  # Paddle DATA: samples on the batch axis
    samples = gdata.from_arrays(model, arrays, source="t", batch=2)
    assert [f["x"].shape for f in samples.feeds] == [(2, 3, 5), (2, 3, 5)]


@pytest.fixture
def scalar_model(build_proto: MakeModel) -> onnx.ModelProto:
    """y = x * float(rate): a 0-d int64 input, as a sample rate is."""
    return build_proto(
        [
            helper.make_node("Cast", ["rate"], ["r"], to=F),
            helper.make_node("Mul", ["x", "r"], ["y"]),
        ],
        [("x", F, [4]), ("rate", I64, [])],
        [("y", F, [4])],
    )


def test_zero_d_inputs_run_from_data(scalar_model: onnx.ModelProto) -> None:
    model = _ir(scalar_model)
    arrays = {"x": np.ones((3, 4), np.float32), "rate": np.array([16000, 8000, 22050])}
    samples = gdata.from_arrays(model, arrays, source="t")
    assert all(isinstance(f["rate"], np.ndarray) and f["rate"].shape == () for f in samples.feeds)
    sess = runtime.make_session(model)
    outs = runtime.run_feeds(sess, samples.feeds)
    assert [float(o[0][0]) for o in outs] == [16000.0, 8000.0, 22050.0]
    # one 0-d value for every feed
    shared = gdata.from_arrays(
        model, {"x": np.ones((2, 4), np.float32), "rate": np.array(44100)}, source="t"
    )
    assert len(shared) == 2 and all(int(f["rate"]) == 44100 for f in shared.feeds)


def test_zero_d_and_one_d_inputs_round_trip_through_the_reproducer(
    capsys: pytest.CaptureFixture[str], save_proto, scalar_model: onnx.ModelProto, tmp_path: Path
) -> None:
    """A failing pass leaves inputs.npz; loading it back gives the same feeds."""
    path = save_proto(scalar_model, "m.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.arange(8, dtype=np.float32).reshape(2, 4), rate=np.array([2, 3]))
    model = _ir(scalar_model)
    samples = gdata.load_data(model, data)
    from graphopt.core.instruments import PassRecord, Reproducers
    from graphopt.core.pipeline import parse
    from graphopt.core.runner import Runner

    runner = Runner(parse("cleanup"), samples=samples, dump_dir=tmp_path / "dump")
    runner.snapshot = runtime.Snapshot.of(model)
    step = next(parse("eliminate-dead-code").steps())
    record = PassRecord(1, step.name, str(step), None, {})
    folder = Reproducers(tmp_path / "dump", samples).write(runner, record, "test")
    again = gdata.load_data(model, folder / "inputs.npz")
    for a, b in zip(samples.feeds, again.feeds, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].shape == b[k].shape
    res = cli_testing.cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx", "--data", data)
    assert res.code == 0, res.err


def test_ladder_finds_the_size_the_model_runs_with(build_proto: MakeModel) -> None:
    chosen = probe.choose(_ir(_needs_square(build_proto, 64)), count=2)
    assert chosen.dims == {"batch": 1, "height": 64, "width": 64}
    assert chosen.samples.feeds[0]["images"].shape == (1, 3, 64, 64)
    assert len(chosen.samples) == 2
    assert "smallest ladder sizes" in chosen.samples.source


def test_metadata_size_comes_first(build_proto: MakeModel) -> None:
    proto = _needs_square(build_proto, 96, {"imgsz": "[96, 96]"})
    chosen = probe.choose(_ir(proto))
    assert chosen.dims["height"] == 96
    assert "metadata" in chosen.samples.source
    assert probe.metadata_sizes(_ir(proto)) == (96, 96)


def test_given_dims_win(build_proto: MakeModel) -> None:
    chosen = probe.choose(_ir(_needs_square(build_proto, 50)), dims={"height": 50, "width": 50})
    assert chosen.samples.feeds[0]["images"].shape == (1, 3, 50, 50)


def test_nothing_runs_names_the_dims_and_flags(
    capsys: pytest.CaptureFixture[str], build_proto: MakeModel, save_proto, tmp_path: Path
) -> None:
    path = save_proto(_needs_square(build_proto, 50), "m.onnx")
    res = cli_testing.cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx")
    assert res.code == errors.EXIT_INPUT
    assert "height" in res.flat_err and "width" in res.flat_err
    assert "--dim" in res.flat_err and "--data" in res.flat_err
    assert "fix the model" not in res.err
    res = cli_testing.cli(
        capsys, "optimize", path, "-o", tmp_path / "o.onnx", "--dim", "height=50",
        "--dim", "width=50",
    )  # fmt: skip
    assert res.code == 0, res.err


def test_an_unnamed_batch_dim_off_axis_zero_is_found(build_proto: MakeModel) -> None:
    """Silero VAD's shape: ``input [0, 0]`` beside a recurrent ``state [2, 0, 128]`` (here
    -1, the same to graphopt) whose axis 1 is the batch. The plain ladder keeps state's batch
    equal to the time dim (never 1 when time is more than 1); the pinned climb holds it at 1
    while the time dim climbs."""
    n = helper.make_node
    consts = [
        helper.make_tensor(k, I64, [len(v)], v)
        for k, v in (("one", [1]), ("two", [2]), ("zero", [0]), ("rows", [-1, 5]))
    ]
    proto = build_proto(
        [
            n("Slice", ["input", "one", "two", "one"], ["x1"]),  # [N, 1]; [N, 0] when T = 1
            n("Gather", ["state", "zero"], ["s0"], axis=0),  # [1, N, 4]
            n("Squeeze", ["s0", "zero"], ["s"]),  # [N, 4]
            n("Concat", ["x1", "s"], ["c"], axis=1),  # N must agree (no broadcasting)
            n("Reshape", ["c", "rows"], ["y"]),  # [N, 5]; T = 1 leaves 4 columns: fails
        ],
        [("input", F, [-1, -1]), ("state", F, [2, -1, 4])],
        [("y", F, None)],
        consts,
    )
    chosen = probe.choose(_ir(proto), count=1)
    feed = chosen.samples.feeds[0]
    assert feed["input"].shape[0] == feed["state"].shape[1] == 1
    assert feed["input"].shape[1] > 1
    assert chosen.dims == {"input[0]": 1, "input[1]": 8, "state[1]": 1}


def test_integer_inputs_fall_back_to_zeros(build_proto: MakeModel) -> None:
    """Random indices into a one-row table fail (through an Add the bound reading does not
    follow); zeros are valid."""
    table = onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "table")
    zero = onnx.numpy_helper.from_array(np.zeros(1, np.int64), "zero")
    proto = build_proto(
        [
            helper.make_node("Add", ["idx", "zero"], ["i"]),
            helper.make_node("Gather", ["table", "i"], ["y"]),
        ],
        [("idx", I64, [6])],
        [("y", F, [6, 4])],
        [table, zero],
    )
    chosen = probe.choose(_ir(proto))
    assert not chosen.samples.feeds[0]["idx"].any()
    assert "integer inputs zero" in chosen.samples.source


def _message_passing(build_proto: MakeModel) -> ir.Model:
    """A graph network's layer: node features x[num_nodes, 4], edge_index[2, num_edges]
    (int64 rows read as Gather and ScatterElements indices over num_nodes), batch[num_nodes]
    pooling into 3 graphs; exported the way torch's index_add is (zeros_like by
    ConstantOfShape(Shape(h)), indices Expanded), without intermediate shapes."""
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    zero = onnx.numpy_helper.from_array(np.array(0, np.int64), "zero")
    one = onnx.numpy_helper.from_array(np.array(1, np.int64), "one")
    axes = onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")
    pooled = onnx.numpy_helper.from_array(np.zeros((3, 4), np.float32), "pooled")
    n = helper.make_node
    proto = build_proto(
        [
            n("MatMul", ["x", "w"], ["h"]),
            n("Gather", ["edge_index", "zero"], ["src"], axis=0),
            n("Gather", ["edge_index", "one"], ["dst"], axis=0),
            n("Gather", ["h", "src"], ["msg"], axis=0),
            n("Shape", ["h"], ["hs"]),
            n("ConstantOfShape", ["hs"], ["z"]),
            n("Unsqueeze", ["dst", "axes"], ["d1"]),
            n("Shape", ["msg"], ["ms"]),
            n("Expand", ["d1", "ms"], ["di"]),
            n("ScatterElements", ["z", "di", "msg"], ["agg"], axis=0, reduction="add"),
            n("Unsqueeze", ["batch", "axes"], ["b1"]),
            n("Shape", ["agg"], ["as"]),
            n("Expand", ["b1", "as"], ["bi"]),
            n("ScatterElements", ["pooled", "bi", "agg"], ["y"], axis=0, reduction="add"),
        ],
        [
            ("x", F, ["num_nodes", 4]),
            ("edge_index", I64, [2, "num_edges"]),
            ("batch", I64, ["num_nodes"]),
        ],
        [("y", F, [3, 4])],
        [w, zero, one, axes, pooled],
    )
    del proto.graph.value_info[:]
    return _ir(proto)


def test_index_inputs_are_drawn_below_the_axis_they_index(build_proto: MakeModel) -> None:
    """edge_index and batch get valid, varied indices (not {0, 1}, not all zeros), in every
    feed: the bound is read through row Gathers, Unsqueeze and Expand, and from
    ConstantOfShape(Shape(h)) where the indexed tensor has no shape."""
    model = _message_passing(build_proto)
    assert probe.index_bounds(model) == {"edge_index": ["num_nodes"] * 2, "batch": [3]}
    chosen = probe.choose(model, dims={"num_nodes": 6, "num_edges": 40})
    feeds = chosen.samples.feeds
    assert len(feeds) == 4
    edges = np.concatenate([f["edge_index"].ravel() for f in feeds])
    pools = np.concatenate([f["batch"] for f in feeds])
    assert edges.min() == 0 and edges.max() == 5
    assert pools.min() == 0 and pools.max() == 2
    assert "batch, edge_index below the size of the axis they index" in chosen.samples.source


def test_random_inputs_that_do_not_run_blame_the_inputs(build_proto: MakeModel) -> None:
    """A model that fails on graphopt's own random feeds is not called broken: the message
    names --data (integer inputs may be indices, counts or axes)."""
    from graphopt.core.runner import run_pipeline

    model = _message_passing(build_proto)
    bad = {
        "x": np.ones((2, 4), np.float32),
        "edge_index": np.full((2, 3), 7, np.int64),
        "batch": np.zeros(2, np.int64),
    }
    samples = gdata.Samples([bad], "random(seed=0)")
    with pytest.raises(errors.DataError, match="graphopt's random inputs") as info:
        run_pipeline(model, "cleanup", samples=samples)
    assert "--data" in (info.value.hint or "")
    assert "fix the model" not in info.value.message + (info.value.hint or "")


def test_test_data_beside_the_model_is_used(
    capsys: pytest.CaptureFixture[str], build_proto: MakeModel, save_proto, tmp_path: Path
) -> None:
    path = save_proto(_needs_square(build_proto, 50), "case/model.onnx")
    ds = path.parent / "test_data_set_0"
    ds.mkdir()
    x = np.random.default_rng(0).standard_normal((1, 3, 50, 50)).astype(np.float32)
    (ds / "input_0.pb").write_bytes(onnx.numpy_helper.from_array(x, "images").SerializeToString())
    report = tmp_path / "r.json"
    res = cli_testing.cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx", "--report", report)
    assert res.code == 0, res.err
    assert json.loads(report.read_text())["verify"]["inputs"].startswith("test_data_set_*")


def test_bfloat16_inputs_and_outputs_run(build_proto: MakeModel) -> None:
    proto = build_proto(
        [helper.make_node("Identity", ["x"], ["y"])],
        [("x", TensorProto.BFLOAT16, [3])],
        [("y", TensorProto.BFLOAT16, [3])],
    )
    sess = runtime.make_session(_ir(proto))
    x = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    (y,) = runtime.run_feeds(sess, [{"x": x}])[0]
    assert y.dtype == x.dtype and np.array_equal(y, x)


def test_cosine_of_an_output_within_noise_of_zero_is_not_judged() -> None:
    want = np.full(16, 1e-7, np.float32)
    got = want + np.linspace(-5e-8, 5e-8, 16, dtype=np.float32)
    ok, m = Tolerance.reassociation().check(got, want)
    assert ok and m["cosine"] < 0.99999
    ok, _ = Tolerance.reassociation().check(got * 1e3, want * 1e3)  # above noise: judged
    assert not ok
