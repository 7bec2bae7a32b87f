"""Unit tests of graphopt.inputs.data: the DATA contract (.npz, test_data_set_* folders, random)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphopt.errors import DataError, UsageError
from graphopt.inputs import data as gdata

MakeModel = Callable[..., onnx.ModelProto]
F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


@pytest.fixture
def fixed_model(build_proto: MakeModel) -> ir.Model:
    """x: float32[2,3] -> Relu."""
    return _ir(
        build_proto(
            [helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2, 3])], [("y", F, [2, 3])]
        )
    )


@pytest.fixture
def batch_model(build_proto: MakeModel) -> ir.Model:
    """x: float32[batch,3] -> Relu."""
    return _ir(
        build_proto(
            [helper.make_node("Relu", ["x"], ["y"])],
            [("x", F, ["batch", 3])],
            [("y", F, ["batch", 3])],
        )
    )


@pytest.fixture
def two_input_model(build_proto: MakeModel) -> ir.Model:
    """a: float32[2,3], b: float32[2,3] -> Add."""
    return _ir(
        build_proto(
            [helper.make_node("Add", ["a", "b"], ["y"])],
            [("a", F, [2, 3]), ("b", F, [2, 3])],
            [("y", F, [2, 3])],
        )
    )


@pytest.fixture
def mixed_model(build_proto: MakeModel) -> ir.Model:
    """Inputs of three dtypes with symbolic dims: f float[batch,seq], i int64[batch], m bool[4]."""
    nodes = [
        helper.make_node("Identity", ["f"], ["fo"]),
        helper.make_node("Identity", ["i"], ["io"]),
        helper.make_node("Identity", ["m"], ["mo"]),
    ]
    return _ir(
        build_proto(
            nodes,
            [("f", F, ["batch", "seq"]), ("i", I64, ["batch"]), ("m", BOOL, [4])],
            [("fo", F, ["batch", "seq"]), ("io", I64, ["batch"]), ("mo", BOOL, [4])],
        )
    )


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _write_tensor(path: Path, arr: np.ndarray, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx.numpy_helper.from_array(arr, name).SerializeToString())


# ------------------------------------------------------------------------------- input_specs


def test_input_specs_reads_dtypes_and_symbolic_dims(mixed_model: ir.Model) -> None:
    specs = {s.name: s for s in gdata.input_specs(mixed_model)}
    assert specs["f"].dtype == np.float32 and specs["f"].dims == ("batch", "seq")
    assert specs["i"].dtype == np.int64 and specs["i"].dims == ("batch",)
    assert specs["m"].dtype == np.bool_ and specs["m"].dims == (4,)
    assert specs["f"].describe() == "f: float32[batch,seq]"


# ------------------------------------------------------------------------------- .npz


def test_npz_per_sample_arrays(tmp_path: Path, fixed_model: ir.Model) -> None:
    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    samples = gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x))
    assert len(samples) == 5
    for i, feed in enumerate(samples.feeds):
        assert set(feed) == {"x"}
        np.testing.assert_array_equal(feed["x"], x[i])
    assert samples.source == str(tmp_path / "d.npz")
    assert samples.extras == {}


def test_npz_sample_axis_is_batch_axis_split_by_batch(
    tmp_path: Path, batch_model: ir.Model
) -> None:
    x = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)
    path = _npz(tmp_path / "d.npz", x=x)
    samples = gdata.load_data(batch_model, path, batch=4)
    assert len(samples) == 3
    assert [f["x"].shape for f in samples.feeds] == [(4, 3)] * 3
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in samples.feeds]), x)
    # batch 1 (the default): one row per feed
    ones = gdata.load_data(batch_model, path)
    assert len(ones) == 12 and ones.feeds[0]["x"].shape == (1, 3)
    # a batch size that does not divide the samples is refused, naming the input
    with pytest.raises(DataError, match=r"input 'x'.*12 samples.*batches of 5"):
        gdata.load_data(batch_model, path, batch=5)


def test_npz_per_sample_arrays_on_batch_model(tmp_path: Path, batch_model: ir.Model) -> None:
    """[samples, *input_shape] also works when the first dim is symbolic (each sample batch 2)."""
    x = np.ones((3, 2, 3), dtype=np.float32)
    samples = gdata.load_data(batch_model, _npz(tmp_path / "d.npz", x=x), batch=7)
    assert len(samples) == 3 and samples.feeds[0]["x"].shape == (2, 3)


def test_npz_fixed_first_dim_chunks(tmp_path: Path, fixed_model: ir.Model) -> None:
    x = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    samples = gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x), batch=50)
    # the model's fixed first dimension (2) wins over --batch
    assert len(samples) == 3
    np.testing.assert_array_equal(samples.feeds[1]["x"], x[2:4])
    with pytest.raises(DataError, match=r"5 samples do not split into batches of 2"):
        gdata.load_data(fixed_model, _npz(tmp_path / "odd.npz", x=x[:5]))


def test_npz_extras_are_kept(tmp_path: Path, fixed_model: ir.Model) -> None:
    x = np.zeros((4, 2, 3), dtype=np.float32)
    label = np.array([0, 1, 2, 3], dtype=np.int64)
    samples = gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x, label=label))
    assert len(samples) == 4
    assert set(samples.feeds[0]) == {"x"}
    assert set(samples.extras) == {"label"}
    np.testing.assert_array_equal(samples.extras["label"], label)
    head = samples.head(2)
    assert len(head) == 2 and head.source == samples.source and "label" in head.extras


def test_spread_takes_feeds_across_the_data(tmp_path: Path, fixed_model: ir.Model) -> None:
    """Verification samples span ordered DATA (first, last and evenly between)."""
    x = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 2, 3), np.float32)
    samples = gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x))
    picked = [float(f["x"][0, 0]) for f in samples.spread(4).feeds]
    assert picked == [0.0, 3.0, 6.0, 9.0]
    assert [float(f["x"][0, 0]) for f in samples.spread(1).feeds] == [0.0]
    assert len(samples.spread(50)) == 10


def test_npz_two_inputs(tmp_path: Path, two_input_model: ir.Model) -> None:
    a = np.zeros((3, 2, 3), dtype=np.float32)
    b = np.ones((3, 2, 3), dtype=np.float32)
    samples = gdata.load_data(two_input_model, _npz(tmp_path / "d.npz", a=a, b=b))
    assert len(samples) == 3
    assert set(samples.feeds[2]) == {"a", "b"}
    np.testing.assert_array_equal(samples.feeds[2]["b"], b[2])


def test_npz_missing_input(tmp_path: Path, two_input_model: ir.Model) -> None:
    a = np.zeros((3, 2, 3), dtype=np.float32)
    with pytest.raises(DataError, match=r"missing model input 'b' \(found keys: a\)"):
        gdata.load_data(two_input_model, _npz(tmp_path / "d.npz", a=a))


def test_npz_wrong_dtype(tmp_path: Path, fixed_model: ir.Model) -> None:
    x = np.zeros((3, 2, 3), dtype=np.float64)
    with pytest.raises(DataError, match=r"input 'x'.*float64.*float32") as info:
        gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x))
    assert info.value.hint is not None and "astype" in info.value.hint


@pytest.mark.parametrize("shape", [(3,), (3, 2, 3, 1)])
def test_npz_wrong_rank(tmp_path: Path, fixed_model: ir.Model, shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, dtype=np.float32)
    with pytest.raises(DataError, match=r"input 'x'.*rank"):
        gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x))


def test_npz_wrong_size(tmp_path: Path, fixed_model: ir.Model) -> None:
    x = np.zeros((3, 2, 4), dtype=np.float32)
    with pytest.raises(DataError, match=r"input 'x'.*size 4 on axis 1.*expects 3"):
        gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x))


def test_npz_different_sample_counts(tmp_path: Path, two_input_model: ir.Model) -> None:
    a = np.zeros((3, 2, 3), dtype=np.float32)
    b = np.zeros((4, 2, 3), dtype=np.float32)
    with pytest.raises(DataError, match=r"different sample counts: a=3, b=4"):
        gdata.load_data(two_input_model, _npz(tmp_path / "d.npz", a=a, b=b))


def test_npz_no_samples(tmp_path: Path, fixed_model: ir.Model) -> None:
    x = np.zeros((0, 2, 3), dtype=np.float32)
    with pytest.raises(DataError, match="no samples"):
        gdata.load_data(fixed_model, _npz(tmp_path / "d.npz", x=x))


def test_npz_no_samples_on_batch_axis(tmp_path: Path, batch_model: ir.Model) -> None:
    x = np.zeros((0, 3), dtype=np.float32)
    with pytest.raises(DataError, match="no samples"):
        gdata.load_data(batch_model, _npz(tmp_path / "d.npz", x=x))


@pytest.mark.parametrize("batch", [0, -1])
def test_npz_nonpositive_batch(tmp_path: Path, batch_model: ir.Model, batch: int) -> None:
    x = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises((UsageError, DataError), match="batch"):
        gdata.load_data(batch_model, _npz(tmp_path / "d.npz", x=x), batch=batch)


def test_not_an_npz(tmp_path: Path, fixed_model: ir.Model) -> None:
    path = tmp_path / "d.npz"
    path.write_text("not an npz\n")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        gdata.load_data(fixed_model, path)


def test_data_not_found(tmp_path: Path, fixed_model: ir.Model) -> None:
    with pytest.raises(DataError, match="data not found"):
        gdata.load_data(fixed_model, tmp_path / "nope.npz")


def test_single_npy_array_is_a_data_error(tmp_path: Path, fixed_model: ir.Model) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="single array"):
        gdata.load_data(fixed_model, path)


def test_from_arrays_direct(fixed_model: ir.Model) -> None:
    x = np.zeros((2, 2, 3), dtype=np.float32)
    samples = gdata.from_arrays(fixed_model, {"x": x, "extra": np.arange(2)}, source="mem")
    assert len(samples) == 2 and samples.source == "mem" and "extra" in samples.extras


# ------------------------------------------------------------------------------- test_data_set


def test_test_data_sets_read_by_name(tmp_path: Path, two_input_model: ir.Model) -> None:
    """Each set is one feed; tensors are matched to inputs by their names, not file order."""
    root = tmp_path / "sets"
    for k in range(2):
        a = np.full((2, 3), k, dtype=np.float32)
        b = np.full((2, 3), 10 + k, dtype=np.float32)
        # file order is b then a: names must win
        _write_tensor(root / f"test_data_set_{k}" / "input_0.pb", b, "b")
        _write_tensor(root / f"test_data_set_{k}" / "input_1.pb", a, "a")
    samples = gdata.load_data(two_input_model, root)
    assert len(samples) == 2
    assert samples.source == str(root)
    for k, feed in enumerate(samples.feeds):
        np.testing.assert_array_equal(feed["a"], np.full((2, 3), k, dtype=np.float32))
        np.testing.assert_array_equal(feed["b"], np.full((2, 3), 10 + k, dtype=np.float32))


def test_single_test_data_set_folder(tmp_path: Path, fixed_model: ir.Model) -> None:
    folder = tmp_path / "test_data_set_0"
    _write_tensor(folder / "input_0.pb", np.ones((2, 3), dtype=np.float32), "x")
    samples = gdata.load_data(fixed_model, folder)
    assert len(samples) == 1 and samples.feeds[0]["x"].shape == (2, 3)


def test_unnamed_tensors_follow_file_order(tmp_path: Path, two_input_model: ir.Model) -> None:
    folder = tmp_path / "test_data_set_0"
    # nameless tensors are assigned to the model's inputs in input_N order
    _write_tensor(folder / "input_0.pb", np.zeros((2, 3), dtype=np.float32), "")
    _write_tensor(folder / "input_1.pb", np.ones((2, 3), dtype=np.float32), "")
    feed = gdata.load_data(two_input_model, folder).feeds[0]
    assert float(feed["a"].sum()) == 0 and float(feed["b"].sum()) == 6


def test_test_data_set_wrong_input_count(tmp_path: Path, two_input_model: ir.Model) -> None:
    folder = tmp_path / "sets" / "test_data_set_0"
    _write_tensor(folder / "input_0.pb", np.zeros((2, 3), dtype=np.float32), "a")
    with pytest.raises(DataError, match=r"1 input files, the model has 2 inputs"):
        gdata.load_data(two_input_model, tmp_path / "sets")


def test_test_data_set_wrong_dtype_and_shape(tmp_path: Path, fixed_model: ir.Model) -> None:
    bad_dtype = tmp_path / "d1" / "test_data_set_0"
    _write_tensor(bad_dtype / "input_0.pb", np.zeros((2, 3), dtype=np.float64), "x")
    with pytest.raises(DataError, match=r"float64"):
        gdata.load_data(fixed_model, tmp_path / "d1")
    bad_shape = tmp_path / "d2" / "test_data_set_0"
    _write_tensor(bad_shape / "input_0.pb", np.zeros((2, 4), dtype=np.float32), "x")
    with pytest.raises(DataError, match=r"input_0\.pb has size 4 on axis 1"):
        gdata.load_data(fixed_model, tmp_path / "d2")


def test_test_data_set_corrupt_tensor(tmp_path: Path, fixed_model: ir.Model) -> None:
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(DataError, match="TensorProto"):
        gdata.load_data(fixed_model, folder)


def test_empty_folder_is_a_data_error(tmp_path: Path, fixed_model: ir.Model) -> None:
    with pytest.raises(DataError, match="no test_data_set_"):
        gdata.load_data(fixed_model, tmp_path)


def test_test_data_sets_in_numeric_order(tmp_path: Path, build_proto: MakeModel) -> None:
    model = _ir(
        build_proto([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [1])], [("y", F, [1])])
    )
    for k in range(12):
        _write_tensor(
            tmp_path / f"test_data_set_{k}" / "input_0.pb", np.array([k], dtype=np.float32), "x"
        )
    samples = gdata.load_data(model, tmp_path)
    assert [int(f["x"][0]) for f in samples.feeds] == list(range(12))


# ------------------------------------------------------------------------------- random


def test_random_feeds_shapes_and_dtypes(mixed_model: ir.Model) -> None:
    samples = gdata.random_feeds(mixed_model, count=3, seed=1, dims={"batch": 4, "seq": 7})
    assert len(samples) == 3
    feed = samples.feeds[0]
    assert feed["f"].shape == (4, 7) and feed["f"].dtype == np.float32
    assert feed["i"].shape == (4,) and feed["i"].dtype == np.int64
    assert feed["m"].shape == (4,) and feed["m"].dtype == np.bool_
    assert set(np.unique(feed["i"])) <= {0, 1}  # valid indices / masks by default
    assert samples.source == "random(seed=1, batch=4,seq=7)"


def test_random_feeds_symbolic_dims_default_to_one(mixed_model: ir.Model) -> None:
    samples = gdata.random_feeds(mixed_model)
    assert len(samples) == 2  # the default count
    assert samples.feeds[0]["f"].shape == (1, 1)
    assert samples.feeds[0]["i"].shape == (1,)
    assert samples.source == "random(seed=0)"


def test_random_feeds_star_sets_every_symbolic_dim(mixed_model: ir.Model) -> None:
    samples = gdata.random_feeds(mixed_model, count=1, dims={"*": 3, "seq": 5})
    assert samples.feeds[0]["f"].shape == (3, 5)
    assert samples.feeds[0]["m"].shape == (4,)  # fixed dims are untouched


def test_random_feeds_unnamed_dynamic_dim(build_proto: MakeModel) -> None:
    model = _ir(
        build_proto(
            [helper.make_node("Relu", ["x"], ["y"])], [("x", F, [None, 2])], [("y", F, [None, 2])]
        )
    )
    assert gdata.random_feeds(model, count=1).feeds[0]["x"].shape == (1, 2)
    assert gdata.random_feeds(model, count=1, dims={"*": 6}).feeds[0]["x"].shape == (6, 2)


def test_random_feeds_are_deterministic_by_seed(mixed_model: ir.Model) -> None:
    a = gdata.random_feeds(mixed_model, count=2, seed=7, dims={"*": 8})
    b = gdata.random_feeds(mixed_model, count=2, seed=7, dims={"*": 8})
    c = gdata.random_feeds(mixed_model, count=2, seed=8, dims={"*": 8})
    for fa, fb in zip(a.feeds, b.feeds, strict=True):
        for name in fa:
            np.testing.assert_array_equal(fa[name], fb[name])
    assert not np.array_equal(a.feeds[0]["f"], c.feeds[0]["f"])
    # feeds within one call differ too
    assert not np.array_equal(a.feeds[0]["f"], a.feeds[1]["f"])


def test_random_feeds_need_a_shape(build_proto: MakeModel) -> None:
    model = _ir(
        build_proto([helper.make_node("Relu", ["x"], ["y"])], [("x", F, None)], [("y", F, None)])
    )
    with pytest.raises(DataError, match=r"input 'x' has no shape.*--data"):
        gdata.random_feeds(model)


# ------------------------------------------------------------------------------- parse_dims


def test_parse_dims_valid() -> None:
    assert gdata.parse_dims([]) == {}
    assert gdata.parse_dims(["batch=8", " seq = 128 ", "*=2"]) == {
        "batch": 8,
        "seq": 128,
        "*": 2,
    }
    assert gdata.parse_dims(("batch=1", "batch=3")) == {"batch": 3}  # the last one wins


@pytest.mark.parametrize(
    "item", ["batch", "batch=", "=3", "batch=0", "batch=-1", "batch=x", "batch=1.5", "a b=2", ""]
)
def test_parse_dims_errors(item: str) -> None:
    with pytest.raises(UsageError, match=r"--dim expects NAME=POSITIVE_INT") as info:
        gdata.parse_dims(["ok=1", item])
    assert f"'{item}'" in str(info.value)
