"""Loading, atomic saving, external data and summaries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir as gir
from graphopt import runtime
from graphopt.core.runner import run_pipeline
from graphopt.errors import UnsupportedModelError, UsageError


def _matmul_model(k: int = 64, n: int = 32, dtype: type = np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(dtype), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_matmul_model(), src)
    model = gir.load_model(src)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old contents")
    written = gir.save_model(model, out, source=src)
    assert written == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]
    onnx.checker.check_model(onnx.load(out))
    with pytest.raises(UsageError, match="never modifies its input"):
        gir.save_model(model, src, source=src)


def test_saved_ir_version_is_one_onnxruntime_accepts(tmp_path: Path) -> None:
    m = _matmul_model()
    m.ir_version = 14  # what onnx 1.23 stamps by default; onnxruntime 1.31 refuses it
    model = ir.serde.deserialize_model(m)
    gir.save_model(model, tmp_path / "o.onnx")
    assert onnx.load(tmp_path / "o.onnx").ir_version == gir.MAX_IR_VERSION
    runtime.make_session(tmp_path / "o.onnx")
    assert model.ir_version == 14  # the in-memory model is left as it was


def test_external_data_round_trip_and_input_untouched(tmp_path: Path) -> None:
    """A model with external data keeps it beside the output; the input stays byte-identical."""
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "m.onnx"
    onnx.save(
        _matmul_model(256, 128),
        src,
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    before = (_sha(src), _sha(src_dir / "m.onnx.data"))
    model = gir.load_model(src)
    summary = gir.summarize(model)
    assert summary["external_data"] == {"m.onnx.data": 256 * 128 * 4}
    feeds = [{"x": np.ones((2, 256), np.float32)}]
    want = runtime.run_feeds(runtime.make_session(src), feeds)[0][0]
    run_pipeline(model, "cleanup", verify_each=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    written = gir.save_model(model, out_dir / "o.onnx", source=src)
    assert [p.name for p in written] == ["o.onnx", "o.onnx.data"]
    got = runtime.run_feeds(runtime.make_session(out_dir / "o.onnx"), feeds)[0][0]
    np.testing.assert_array_equal(got, want)
    assert (_sha(src), _sha(src_dir / "m.onnx.data")) == before


def test_large_models_switch_to_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the 2 GB threshold (lowered here) the output is written with external data."""
    from graphopt.ir import save

    monkeypatch.setattr(save, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = ir.serde.deserialize_model(_matmul_model())
    written = gir.save_model(model, tmp_path / "big.onnx")
    assert [p.name for p in written] == ["big.onnx", "big.onnx.data"]
    reloaded = gir.load_model(tmp_path / "big.onnx")
    assert gir.has_external_tensors(reloaded)


@pytest.mark.slow
def test_model_over_2gb_round_trips(tmp_path: Path) -> None:
    """A real >2 GB model: cleanup, verify-each and save all go through external data."""
    n = 23_200  # 23200 x 23200 float32 = 2.15 GB
    w = np.zeros((n, n), np.float32)
    w[np.arange(n), np.arange(n)] = 1.0
    model = ir.Model(ir.Graph([], [], nodes=[], name="g"), ir_version=8)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, n]))
    wv = ir.Value(name="w", const_value=ir.tensor(w, name="w"))
    model.graph.inputs.append(x)
    model.graph.register_initializer(wv)
    node = ir.node("MatMul", [x, wv])
    node.outputs[0].name = "y"
    node.outputs[0].dtype = ir.DataType.FLOAT
    model.graph.append(node)
    model.graph.outputs.append(node.outputs[0])
    model.opset_imports[""] = 17
    del w
    src = tmp_path / "big.onnx"
    gir.save_model(model, src)
    assert (tmp_path / "big.onnx.data").stat().st_size > 2**31
    loaded = gir.load_model(src)
    from graphopt.inputs.data import random_feeds

    result = run_pipeline(loaded, "cleanup", samples=random_feeds(loaded, count=1))
    assert result.report["after"]["initializer_bytes"] > 2**31
    out = tmp_path / "out"
    out.mkdir()
    gir.save_model(loaded, out / "o.onnx", source=src)
    sess = runtime.make_session(out / "o.onnx", optimize=False)
    xv = np.arange(n, dtype=np.float32)[None, :]
    np.testing.assert_array_equal(sess.run(None, {"x": xv})[0], xv)


def test_summary_counts_qdq_sparsity_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    w[:4] = 0
    g = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            helper.make_node("MatMul", ["dq", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.float32(0.1), "s"),
            numpy_helper.from_array(np.uint8(128), "z"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    s = gir.summarize(ir.serde.deserialize_model(m), sparsity=True)
    assert s["qdq_nodes"] == 2
    assert s["ops"] == {"QuantizeLinear": 1, "DequantizeLinear": 1, "MatMul": 1}
    assert s["parameters"] == 34
    assert s["initializer_bytes_by_dtype"] == {"float": 132, "uint8": 1}
    assert s["sparsity"] == pytest.approx(16 / 33)
    assert s["inputs"] == [{"name": "x", "dtype": "float", "shape": [1, 8]}]


def test_fingerprint_sees_structure_not_noise() -> None:
    model = ir.serde.deserialize_model(_matmul_model())
    fp = gir.fingerprint(model)
    assert gir.fingerprint(model) == fp
    node = next(iter(model.graph))
    node.attributes["dummy"] = ir.AttrInt64("dummy", 1)
    assert gir.fingerprint(model) != fp


def test_saving_externally_while_a_small_external_tensor_is_read(tmp_path: Path) -> None:
    """torch's dynamo exporter writes even 1 KB biases as external data; ``ir.save`` closed
    their memory maps while a pass still held an array read from one (BufferError, exit 70
    in assign-precision). graphopt copies small external tensors into memory first."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b")  # 1024 bytes
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256])],
        [w, b],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    onnx.save(proto, src, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    model = gir.load_model(src)
    bias = model.graph.initializers["b"].const_value
    assert isinstance(bias, ir.ExternalTensor)
    held = bias.numpy()  # a pass reading the bias keeps this view of the memory map
    for name in ("a.onnx", "b.onnx"):  # twice: the first save must leave the model savable
        gir.save_model(model, tmp_path / name, external_data=True)
    np.testing.assert_array_equal(held, numpy_helper.to_array(b))
    feed = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    want = runtime.make_session(src).run(None, feed)[0]
    got = runtime.make_session(tmp_path / "b.onnx").run(None, feed)[0]
    np.testing.assert_array_equal(got, want)


def _opset1(nodes: list, extra_inputs: list, inits: list) -> onnx.ModelProto:
    """An opset-1, IR version 3 model (weights also listed as inputs) on x[2, 4]."""
    g = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 1)])
    m.ir_version = 3
    return m


def test_old_opsets_are_taken_where_onnxruntime_runs_them(tmp_path: Path) -> None:
    """Opset 1 was refused outright. ORT still runs some old op versions (kept as they are);
    others onnx's version converter lifts to opset 7; otherwise the error names the op ORT
    has no kernel for."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])
    mm = helper.make_node("MatMul", ["x", "w"], ["h"])
    runs = _opset1([mm, helper.make_node("Softmax", ["h"], ["y"])], [w_in], [w])
    lifts = _opset1([mm, helper.make_node("Relu", ["h"], ["y"])], [w_in], [w])
    blocked = _opset1(  # the converter needs shapes that opset-1 inference cannot give
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "w"], ["y"])],
        [w_in],
        [w],
    )
    blocked.graph.node[1].attribute.append(helper.make_attribute("broadcast", 1))
    for name, proto in (("runs", runs), ("lifts", lifts), ("blocked", blocked)):
        onnx.save(proto, tmp_path / f"{name}.onnx")

    kept = gir.load_model(tmp_path / "runs.onnx")
    assert gir.ai_onnx_opset(kept) == 1
    assert "opset 1 kept" in gir.summarize(kept)["loaded"]
    lifted = gir.load_model(tmp_path / "lifts.onnx")
    assert gir.ai_onnx_opset(lifted) == 7
    assert "no kernel for Relu(1)" in gir.summarize(lifted)["loaded"]
    feed = {"x": np.array([[-1, 2, -3, 4]] * 2, np.float32)}
    out = runtime.make_session(lifted).run(None, feed)[0]
    np.testing.assert_array_equal(out, np.maximum(feed["x"], 0))
    with pytest.raises(UnsupportedModelError, match=r"no kernel for Relu\(1\).*version converter"):
        gir.load_model(tmp_path / "blocked.onnx")
    proto = onnx.load(tmp_path / "runs.onnx")
    proto.opset_import[0].version = gir.MAX_OPSET + 1
    onnx.save(proto, tmp_path / "new.onnx")
    with pytest.raises(UnsupportedModelError, match="not supported"):
        gir.load_model(tmp_path / "new.onnx")


def test_the_package_exports_every_public_helper() -> None:
    """``gir.X`` is how the code reaches every helper: each public name of the ir package's
    modules is importable from the package itself."""
    import importlib

    for name in ("load", "graph", "save", "summary"):
        mod = importlib.import_module(f"graphopt.ir.{name}")
        own = {
            k
            for k, v in vars(mod).items()
            if not k.startswith("_")
            and getattr(v, "__module__", mod.__name__) == mod.__name__
            and not isinstance(v, type(importlib))
        }
        own = {k for k in own if k.isupper() or callable(getattr(mod, k))}
        assert own <= set(gir.__all__), sorted(own - set(gir.__all__))
        assert all(getattr(gir, k) is getattr(mod, k) for k in own)
