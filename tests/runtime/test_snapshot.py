"""Snapshots for ONNX Runtime: weights written once per process, shared by every snapshot.

Why: a run builds dozens of sessions of nearly the same model; each used to serialize every
weight (MiniLM: 0.4 s a session). These tests hold the store to its promises: the same outputs
as an inline model, a tensor written once however many snapshots name it, a tensor written into
in place stored again (never a stale snapshot), self-contained dumps, a user's external data
copied in, and files deleted once nothing uses them.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.runtime import snapshot


def _model(weight: np.ndarray) -> ir.Model:
    """y = x @ W + b, W large enough for the store, b small enough to stay inline."""
    x = ir.Value(
        name="x", shape=ir.Shape([1, weight.shape[0]]), type=ir.TensorType(ir.DataType.FLOAT)
    )
    w = ir.Value(name="W", const_value=ir.tensor(weight, name="W"))
    b = ir.Value(
        name="b", const_value=ir.tensor(np.full(weight.shape[1], 0.5, np.float32), name="b")
    )
    mm = ir.node("MatMul", [x, w])
    add = ir.node("Add", [mm.outputs[0], b])
    add.outputs[0].name = "y"
    graph = ir.Graph(
        [x], [add.outputs[0]], nodes=[mm, add], initializers=[w, b], opset_imports={"": 17}
    )
    return ir.Model(graph, ir_version=9)


def _run(snap: snapshot.Snapshot, x: np.ndarray) -> np.ndarray:
    sess = runtime.make_session(snap, optimize=False)
    return sess.run(None, {"x": x})[0]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> snapshot.WeightStore:
    """A fresh store for the test (the process's own is left alone)."""
    fresh = snapshot.WeightStore()
    monkeypatch.setattr(snapshot, "_STORE", fresh)
    return fresh


def _weight(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((64, 128)).astype(np.float32)  # 32 KB


def test_store_snapshot_runs_like_the_inline_model(store: snapshot.WeightStore) -> None:
    model = _model(_weight())
    snap = snapshot.Snapshot.of(model)
    assert snap.data is None and snap.path is not None and snap.path.parent == store.folder
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    inline = snapshot.Snapshot(data=gir.serialize(model))
    np.testing.assert_array_equal(_run(snap, x), _run(inline, x))
    # the model is left as it was: its tensors are its own again, not external references
    assert all(not isinstance(t, ir.ExternalTensor) for t in gir.iter_initializer_tensors(model))
    # the size counts the weights it names: within a few bytes per tensor of the inline form
    assert abs(snap.size - inline.size) < 200


def test_a_tensor_is_written_once_however_many_snapshots_name_it(
    store: snapshot.WeightStore,
) -> None:
    model = _model(_weight())
    snaps = [snapshot.Snapshot.of(model) for _ in range(5)]
    assert store.written == 64 * 128 * 4  # W once; b stays inline
    model.graph.initializers["W"].const_value = ir.tensor(_weight(2), name="W")  # a pass swaps it
    snaps.append(snapshot.Snapshot.of(model))
    assert store.written == 2 * 64 * 128 * 4
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(_run(snaps[-1], x), x @ _weight(2) + 0.5, rtol=1e-5)
    np.testing.assert_allclose(_run(snaps[0], x), x @ _weight() + 0.5, rtol=1e-5)


def test_a_tensor_written_into_in_place_is_stored_again(store: snapshot.WeightStore) -> None:
    weight = _weight()
    model = _model(weight)
    x = np.ones((1, 64), np.float32)
    before = _run(snapshot.Snapshot.of(model), x)
    weight *= 2.0  # the tensor holds this array: an in-place write
    after = _run(snapshot.Snapshot.of(model), x)
    np.testing.assert_allclose(after - 0.5, 2 * (before - 0.5), rtol=1e-5)


def test_write_makes_a_self_contained_copy(store: snapshot.WeightStore, tmp_path) -> None:
    model = _model(_weight())
    snap = snapshot.Snapshot.of(model)
    dest = snap.write(tmp_path / "dump.onnx")
    snap.close()
    assert not snap.path.exists()
    loaded = gir.load_model(dest)
    assert not gir.has_external_tensors(loaded)
    np.testing.assert_array_equal(loaded.graph.initializers["W"].const_value.numpy(), _weight())


def test_a_users_external_data_is_copied_in(store: snapshot.WeightStore, tmp_path) -> None:
    """A dynamo export's ``model.onnx.data`` holds even small tensors: every external tensor
    is referenced from the store, never from the user's folder (a snapshot lives elsewhere)."""
    src = tmp_path / "user"
    src.mkdir()
    ir.save(
        _model(_weight()),
        src / "model.onnx",
        external_data="model.onnx.data",
        size_threshold_bytes=0,
    )
    model = gir.load_model(src / "model.onnx")
    assert gir.has_external_tensors(model)
    snap = snapshot.Snapshot.of(model)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(_run(snap, x), x @ _weight() + 0.5, rtol=1e-5)
    assert store.written == 64 * 128 * 4  # W; b (512 bytes) is read into the proto
    b = next(
        t
        for t in onnx.load(str(snap.path), load_external_data=False).graph.initializer
        if t.name == "b"
    )
    assert b.data_location == onnx.TensorProto.DEFAULT and len(b.raw_data) == 512


def test_a_small_external_tensor_that_shape_inference_reads_is_inline(
    store: snapshot.WeightStore, tmp_path
) -> None:
    """A dynamo export keeps even Unsqueeze's axes in ``model.onnx.data``; ONNX Runtime's
    shape inference refuses axes it must read from a file ("Cannot parse data from external
    tensors"), so small external tensors are read into the snapshot."""
    x = ir.Value(name="x", shape=ir.Shape([3]), type=ir.TensorType(ir.DataType.FLOAT))
    axes = ir.Value(name="axes", const_value=ir.tensor(np.array([0], np.int64), name="axes"))
    node = ir.node("Unsqueeze", [x, axes])
    node.outputs[0].name = "y"
    graph = ir.Graph(
        [x], [node.outputs[0]], nodes=[node], initializers=[axes], opset_imports={"": 17}
    )
    path = tmp_path / "m.onnx"
    ir.save(ir.Model(graph, ir_version=9), path, external_data="m.data", size_threshold_bytes=0)
    model = gir.load_model(path)
    assert gir.has_external_tensors(model)
    sess = runtime.make_session(model, optimize=True)
    assert sess.run(None, {"x": np.ones(3, np.float32)})[0].shape == (1, 3)
    assert isinstance(model.graph.initializers["axes"].const_value, ir.ExternalTensor)  # unchanged


def test_files_go_when_nothing_uses_them(store: snapshot.WeightStore, monkeypatch) -> None:
    """Candidates of a tune loop die; once most of a weights file is dead a new one starts,
    and the old one is deleted when its last snapshot closes."""
    monkeypatch.setattr(snapshot.WeightStore, "ROLL_BYTES", 64 * 1024)
    first = snapshot.Snapshot.of(_model(_weight(0)))  # a model that dies at once
    old = store.folder / "weights-1.bin"
    assert old.exists()
    for seed in range(1, 5):
        snapshot.Snapshot.of(_model(_weight(seed))).close()
        gc.collect()  # a graph's nodes and values refer to each other: the cycle collector
    assert (store.folder / "weights-2.bin").exists()
    first.close()
    del first
    gc.collect()
    assert not old.exists()
    assert len(list(store.folder.glob("snapshot-*.onnx"))) == 0


def test_a_model_without_large_tensors_stays_bytes(store: snapshot.WeightStore) -> None:
    model = _model(np.ones((4, 4), np.float32))
    snap = snapshot.Snapshot.of(model)
    assert snap.data is not None and store.written == 0


def test_a_forked_child_gets_its_own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that appended to its parent's file at the parent's offsets would corrupt it;
    a child's finalizers never delete the parent's files."""
    parent = snapshot.store()
    monkeypatch.setattr(snapshot, "_STORE", parent)  # restored after the test
    monkeypatch.setattr(snapshot.os, "getpid", lambda: parent.pid + 100_000)
    child = snapshot.store()
    assert child is not parent and child.folder != parent.folder
    assert parent.folder.exists()
    snapshot._remove_dir(parent.folder, parent.pid)  # the parent's finalizer, run in the child
    assert parent.folder.exists()


def test_folders_of_dead_processes_are_swept(tmp_path) -> None:
    """A killed run leaves its weights folder behind; the next store removes it."""
    dead = tmp_path / f"{snapshot._PREFIX}999999999-abc"
    alive = tmp_path / f"{snapshot._PREFIX}{os.getpid()}-abc"
    other = tmp_path / "unrelated"
    for folder in (dead, alive, other):
        folder.mkdir()
    snapshot._sweep_stale(tmp_path)
    assert not dead.exists() and alive.exists() and other.exists()
