"""The ``graphopt`` command line, end to end.

Commands run in-process through ``graphopt.cli.main`` (which returns the exit code) with
stdout/stderr captured; two cases also run ``python -m graphopt`` in a real process. Every
user-caused failure must give its documented exit code, exactly one ``graphopt: error: ...``
message naming the problem, and no traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime
import pytest
from cli_testing import Result, cli
from onnx import TensorProto, helper

import graphopt
from graphopt import errors
from graphopt.cli import main

F = TensorProto.FLOAT
MakeModel = Callable[..., onnx.ModelProto]
SaveModel = Callable[[onnx.ModelProto, str], Path]
REPORT_SCHEMA = "graphopt.report/1"
SUMMARY_KEYS = {
    "nodes",
    "ops",
    "initializer_bytes",
    "initializer_bytes_by_dtype",
    "value_dtypes",
    "serialized_bytes",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_user_error(result: Result, code: int, *words: str) -> None:
    """Exit ``code``, one ``graphopt: error:`` message containing ``words``, no traceback."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    assert result.err.startswith("graphopt: error: "), result.err
    assert result.err.count("graphopt: error:") == 1, result.err
    assert "internal error" not in result.err, result.err
    for word in words:
        assert word in result.flat_err, (word, result.err)


def assert_caret_under(err: str, text: str, token: str, start: int | None = None) -> None:
    """The error quotes ``text`` and puts carets exactly under ``token``."""
    lines = err.splitlines()
    assert "  " + text in lines, err
    caret = lines[lines.index("  " + text) + 1]
    col = text.index(token) if start is None else start
    assert caret.rstrip() == "  " + " " * col + "^" * len(token), err


# ----------------------------------------------------------------------------- models


@pytest.fixture
def model_copy(tmp_path: Path, demo_paths: tuple[Path, Path]) -> Path:
    """The demo model copied alone into its own folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    return Path(shutil.copy(demo_paths[0], folder / "digits_cnn.onnx"))


def _relu(build_proto: MakeModel, opset: int = 17) -> onnx.ModelProto:
    return build_proto(
        [helper.make_node("Relu", ["x"], ["y"])],
        [("x", F, ["n", 3])],
        [("y", F, ["n", 3])],
        opset=opset,
    )


def _add(build_proto: MakeModel) -> onnx.ModelProto:
    return build_proto(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [("a", F, [2, 3]), ("b", F, [2, 3])],
        [("y", F, [2, 3])],
    )


def _external(build_proto: MakeModel, location: str, length: int | None = None) -> onnx.ModelProto:
    """y = x + w where w (float32[3]) is stored as external data at ``location``."""
    w = TensorProto(name="w", data_type=F, dims=[3], data_location=TensorProto.EXTERNAL)
    entries = {"location": location, **({"length": str(length)} if length else {})}
    for key, value in entries.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return build_proto(
        [helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [3])], [("y", F, [3])], [w]
    )


# ----------------------------------------------------------------------------- optimize: success


@dataclasses.dataclass
class OptimizeRun:
    code: int
    out: str
    err: str
    model: Path
    data: Path
    output: Path
    report_path: Path
    dump_dir: Path
    sha_before: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> OptimizeRun:
    """``optimize`` on the demo model with DATA, --batch 50, --report and --dump-dir (once).

    Module-scoped, so it captures with redirect_stdout/stderr (rich writes to whatever
    sys.stdout/sys.stderr are at print time) instead of the function-scoped capsys.
    """
    from graphopt.cli.demo import demo_files

    demo_model, data = demo_files()
    root = tmp_path_factory.mktemp("optimize")
    (root / "in").mkdir()
    model = Path(shutil.copy(demo_model, root / "in" / "digits_cnn.onnx"))
    (root / "out").mkdir()
    output = root / "out" / "digits_cnn.opt.onnx"
    report_path = root / "out" / "r.json"
    dump_dir = root / "out" / "d"
    sha_before = sha256(model)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [
                "optimize", str(model), "-o", str(output), "-p", "cleanup",
                "--data", str(data), "--batch", "50",
                "--report", str(report_path), "--dump-dir", str(dump_dir),
            ]
        )  # fmt: skip
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return OptimizeRun(
        code, out.getvalue(), err.getvalue(), model, data, output, report_path, dump_dir,
        sha_before, report,
    )  # fmt: skip


def test_optimize_succeeds_and_writes_only_its_outputs(optimized: OptimizeRun) -> None:
    assert optimized.code == errors.EXIT_OK, optimized.err
    assert "Traceback" not in optimized.err and "error" not in optimized.err
    assert optimized.output.is_file()
    # nothing else (no temp files) beside the outputs, and nothing beside the input
    assert sorted(p.name for p in optimized.output.parent.iterdir()) == [
        "d",
        "digits_cnn.opt.onnx",
        "r.json",
    ]
    assert [p.name for p in optimized.model.parent.iterdir()] == ["digits_cnn.onnx"]
    flat = " ".join(optimized.out.split())
    assert "fold-batchnorm" in flat and "verify" in flat
    assert f"wrote {optimized.output} and {optimized.report_path}" in flat


def test_optimize_leaves_input_byte_identical(optimized: OptimizeRun) -> None:
    assert sha256(optimized.model) == optimized.sha_before


def test_optimize_output_runs_in_onnxruntime_with_same_results(optimized: OptimizeRun) -> None:
    onnx.checker.check_model(onnx.load(str(optimized.output)))
    x = np.load(optimized.data)["input"][:50]
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    cpu = ["CPUExecutionProvider"]
    got = onnxruntime.InferenceSession(str(optimized.output), opts, providers=cpu)
    want = onnxruntime.InferenceSession(str(optimized.model), opts, providers=cpu)
    (y_got,) = got.run(None, {"input": x})
    (y_want,) = want.run(None, {"input": x})
    assert y_got.shape == (50, 10)
    np.testing.assert_allclose(y_got, y_want, atol=1e-4, rtol=1e-4)
    optimized_ops = {n.op_type for n in onnx.load(str(optimized.output)).graph.node}
    assert "BatchNormalization" not in optimized_ops


def test_optimize_report_top_level(optimized: OptimizeRun) -> None:
    from graphopt.core.pipeline import parse

    r = optimized.report
    assert r["schema"] == REPORT_SCHEMA
    # the normalized pipeline: the preset expanded, and it parses back to itself
    expected = str(parse("cleanup"))
    assert r["pipeline"] == expected
    assert "cleanup" not in r["pipeline"] and "fold-constants" in r["pipeline"]
    assert str(parse(r["pipeline"])) == r["pipeline"]
    assert r["target"] == "cpu"
    assert r["model"] == {"path": str(optimized.model), "sha256": optimized.sha_before}
    assert r["output"]["path"] == str(optimized.output)
    assert r["output"]["files"] == [str(optimized.output)]
    assert r["output"]["bytes"] == optimized.output.stat().st_size
    assert isinstance(r["environment"], dict) and r["environment"]
    assert r["verify"]["enabled"] is True
    assert r["verify"]["inputs"] == str(optimized.data)
    assert r["verify"]["feeds"] == 4  # --verify-samples default, batches of 50
    for side in ("before", "after"):
        assert SUMMARY_KEYS <= set(r[side]), side
    assert r["before"]["ops"]["BatchNormalization"] == 4
    assert "BatchNormalization" not in r["after"]["ops"]
    assert r["after"]["nodes"] < r["before"]["nodes"]


def test_optimize_report_passes(optimized: OptimizeRun) -> None:
    records = optimized.report["passes"]
    assert [rec["index"] for rec in records] == list(range(1, len(records) + 1))
    for rec in records:
        for key in ("index", "pass", "step", "modified", "seconds", "stats", "tolerance"):
            assert key in rec, (key, rec)
        assert isinstance(rec["modified"], bool)
        assert rec["seconds"] >= 0
        assert isinstance(rec["stats"], dict)
        assert {"max_abs", "max_rel", "min_cosine"} <= set(rec["tolerance"])
        assert SUMMARY_KEYS <= set(rec["summary"]), rec["pass"]
        assert {"nodes", "ops", "initializer_bytes"} <= set(rec["delta"])
    modified = [rec for rec in records if rec["modified"]]
    assert "fold-batchnorm" in {rec["pass"] for rec in modified}
    for rec in modified:
        verify = rec["verify"]
        assert verify["passed"] is True
        assert set(verify["outputs"]) == {"logits"}
        metrics = verify["outputs"]["logits"]
        assert {"max_abs", "max_rel", "cosine", "passed"} <= set(metrics)
        assert metrics["passed"] is True
        assert float(metrics["max_abs"]) <= 1e-4
    for rec in records:
        if not rec["modified"]:
            assert "verify" not in rec
    fold = next(rec for rec in modified if rec["pass"] == "fold-batchnorm")
    assert fold["delta"]["ops"].get("BatchNormalization") == -4


def test_optimize_dump_dir(optimized: OptimizeRun) -> None:
    modified = [rec for rec in optimized.report["passes"] if rec["modified"]]
    expected = {"00-input.onnx"} | {f"{rec['index']:02d}-{rec['pass']}.onnx" for rec in modified}
    assert {p.name for p in optimized.dump_dir.iterdir()} == expected
    for rec in modified:
        assert Path(rec["dump"]) == optimized.dump_dir / f"{rec['index']:02d}-{rec['pass']}.onnx"
        assert len(onnx.load(rec["dump"]).graph.node) == rec["summary"]["nodes"]
    first = onnx.load(str(optimized.dump_dir / "00-input.onnx"))
    assert len(first.graph.node) == optimized.report["before"]["nodes"]


def test_optimize_in_a_real_process(tmp_path: Path, demo_paths: tuple[Path, Path]) -> None:
    model, data = demo_paths
    out = tmp_path / "o.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "graphopt", "optimize", str(model), "-o", str(out),
         "--data", str(data), "--batch", "50", "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.is_file()
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == REPORT_SCHEMA


def test_optimize_failure_in_a_real_process(tmp_path: Path, model_copy: Path) -> None:
    bad = tmp_path / "half.onnx"
    blob = model_copy.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "graphopt", "optimize", str(bad), "-o", str(tmp_path / "o.onnx")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == errors.EXIT_INPUT
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("graphopt: error: ")
    assert proc.stderr.count("graphopt: error:") == 1
    assert not (tmp_path / "o.onnx").exists()


# ----------------------------------------------------------------------------- optimize: options


def test_optimize_without_data_uses_random_inputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    report = tmp_path / "r.json"
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "--report", report)
    assert res.code == 0, res.err
    verify = json.loads(report.read_text())["verify"]
    assert verify["inputs"].startswith("random")
    assert verify["inputs"] == "random(seed=0, batch=1)"  # the demo's only dynamic dim
    assert "random(seed=0, batch=1)" in res.flat_out


def test_optimize_random_inputs_seed_and_dims(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    report = tmp_path / "r.json"
    res = cli(
        capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "--report", report,
        "--seed", "5", "--dim", "batch=3", "--verify-samples", "2",
    )  # fmt: skip
    assert res.code == 0, res.err
    verify = json.loads(report.read_text())["verify"]
    assert verify["inputs"].startswith("random(seed=5")
    assert "batch=3" in verify["inputs"]
    assert verify["feeds"] == 2


def test_optimize_no_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    report = tmp_path / "r.json"
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "--report", report,
              "--no-verify")  # fmt: skip
    assert res.code == 0, res.err
    data = json.loads(report.read_text())
    assert data["verify"]["enabled"] is False
    assert all("verify" not in rec for rec in data["passes"])
    assert "verification disabled" in res.flat_out


def test_optimize_external_data_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    out = tmp_path / "o.onnx"
    res = cli(capsys, "optimize", model_copy, "-o", out, "--external-data", "--no-verify")
    assert res.code == 0, res.err
    assert (tmp_path / "o.onnx.data").is_file()
    sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})
    assert y.shape == (2, 10)


# ----------------------------------------------------------------------------- inspect


def test_inspect_text(capsys: pytest.CaptureFixture[str], model_copy: Path) -> None:
    res = cli(capsys, "inspect", model_copy)
    assert res.code == 0, res.err
    out = res.out
    assert "ai.onnx 17" in out
    assert re.search(r"ir_version\W+8\b", out)
    assert re.search(r"\binput\W+input: float", out)
    assert re.search(r"\boutput\W+logits: float", out)
    for op, n in {"BatchNormalization": 4, "Relu": 4, "Conv": 3, "Gemm": 2, "MaxPool": 1}.items():
        assert re.search(rf"\b{op}\W+{n}\b", out), op
    assert re.search(r"parameters\W+48,106\b", out)
    assert re.search(r"Q/DQ nodes\W+0\b", out)
    assert re.search(r"sparsity\W+0\.00% of float weights are zero", out)
    assert re.search(r"external data\W+none", out)


def test_inspect_text_shows_symbolic_shapes(
    capsys: pytest.CaptureFixture[str], model_copy: Path
) -> None:
    res = cli(capsys, "inspect", model_copy)
    assert "input: float[batch, 1, 8, 8]" in res.out
    assert "logits: float[batch, 10]" in res.out


def test_inspect_json(capsys: pytest.CaptureFixture[str], model_copy: Path) -> None:
    res = cli(capsys, "inspect", model_copy, "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["opsets"] == {"ai.onnx": 17}
    assert info["inputs"] == [{"name": "input", "dtype": "float", "shape": ["batch", 1, 8, 8]}]
    assert info["outputs"] == [{"name": "logits", "dtype": "float", "shape": ["batch", 10]}]
    assert info["ops"]["BatchNormalization"] == 4 and info["nodes"] == 15
    assert info["parameters"] == 48106
    assert info["initializer_bytes_by_dtype"] == {"float": info["initializer_bytes"]}
    assert info["qdq_nodes"] == 0
    assert info["sparsity"] == 0.0
    assert info["external_data"] == {}
    assert info["file_bytes"] == model_copy.stat().st_size


def test_inspect_qdq_sparsity_and_external_data(
    capsys: pytest.CaptureFixture[str], build_proto: MakeModel, tmp_path: Path
) -> None:
    """A MatMul with a half-zero external weight, then QuantizeLinear/DequantizeLinear."""
    w = np.array([[1, 0, 2, 0]] * 4, dtype=np.float32)  # 8 of 16 are zero
    w_t = onnx.numpy_helper.from_array(w, "w")
    scale = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    zp = onnx.numpy_helper.from_array(np.array(0, np.uint8), "zp")
    proto = build_proto(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("QuantizeLinear", ["h", "scale", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"]),
        ],
        [("x", F, [1, 4])],
        [("y", F, [1, 4])],
        [w_t, scale, zp],
    )
    path = tmp_path / "m" / "qdq.onnx"
    path.parent.mkdir()
    onnx.save_model(
        proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    res = cli(capsys, "inspect", path, "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["qdq_nodes"] == 2
    assert info["sparsity"] == pytest.approx(8 / 17)
    assert info["external_data"] == {"weights.bin": 69}  # every initializer
    assert info["initializer_bytes_by_dtype"] == {"float": 68, "uint8": 1}
    text = cli(capsys, "inspect", path)
    assert text.code == 0, text.err
    assert re.search(r"Q/DQ nodes\W+2\b", text.out)
    assert re.search(r"sparsity\W+47\.06%", text.out)
    assert re.search(r"external data\W+weights\.bin \(69 B\)", text.out)
    assert re.search(r"\buint8\W+1 B", text.out)


# ----------------------------------------------------------------------------- run


def test_run_text(capsys: pytest.CaptureFixture[str], model_copy: Path) -> None:
    res = cli(capsys, "run", model_copy)
    assert res.code == 0, res.err
    assert "CPUExecutionProvider" in res.flat_out
    assert "inputs: random(seed=0, batch=1)" in res.flat_out
    assert re.search(r"\blogits\W+float32\W+\[1, 10\]", res.out)
    for col in ("min", "max", "mean", "std", "nan/inf"):
        assert col in res.out
    assert re.search(r"\b0/0\b", res.out)


def test_run_json_with_data_matches_onnxruntime(
    capsys: pytest.CaptureFixture[str], demo_paths: tuple[Path, Path]
) -> None:
    model, data = demo_paths
    res = cli(capsys, "run", model, "--data", data, "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["inputs"] == str(data)
    assert info["ms"] >= 0
    (row,) = info["outputs"]
    assert row["name"] == "logits" and row["dtype"] == "float32" and row["shape"] == [1, 10]
    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": np.load(data)["input"][:1]})
    for key, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
        assert row[key] == pytest.approx(float(fn(y.astype(np.float64))), abs=1e-4), key
    assert row["nan"] == 0 and row["inf"] == 0


def test_run_json_random_with_dim(capsys: pytest.CaptureFixture[str], model_copy: Path) -> None:
    res = cli(capsys, "run", model_copy, "--dim", "batch=3", "--seed", "2", "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["inputs"] == "random(seed=2, batch=3)"
    assert info["outputs"][0]["shape"] == [3, 10]
    assert info["outputs"][0]["min"] <= info["outputs"][0]["mean"] <= info["outputs"][0]["max"]


def test_run_on_cuda_runs_there_or_fails_clearly(
    capsys: pytest.CaptureFixture[str], model_copy: Path
) -> None:
    """With a usable GPU the output says CUDA ran; without one: exit 1 and one clear error."""
    res = cli(capsys, "run", model_copy, "--ep", "cuda", "--json")
    if res.code == 0:
        assert json.loads(res.out)["providers"][0] == "CUDAExecutionProvider"
    else:
        assert_user_error(res, errors.EXIT_ERROR, "CUDAExecutionProvider")


def test_run_on_missing_gpu_prints_only_graphopt_error(
    capfd: pytest.CaptureFixture[str], model_copy: Path
) -> None:
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider: nothing to fall back from")
    code = main(["run", str(model_copy), "--ep", "cuda"])
    _, err = capfd.readouterr()
    if code == 0:
        pytest.skip("a usable GPU is present")
    assert err.startswith("graphopt: error: "), err
    assert err.strip().count("\n") == 0, err


# ----------------------------------------------------------------------------- passes


def test_passes_text_lists_every_pass_option_and_preset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from graphopt.core import registry
    from graphopt.core.pipeline import PRESET_DOCS, PRESETS

    res = cli(capsys, "passes")
    assert res.code == 0, res.err
    passes = registry.all_passes()
    assert passes
    for name, cls in passes.items():
        assert name in res.out, name
        for f, tp in registry.option_fields(cls.Options):
            default = registry.format_value(registry.default_of(f))
            assert f"{f.name}: {registry.type_name(tp)} = {default}" in res.out, (name, f.name)
    assert "presets" in res.out
    for preset in PRESETS:
        assert preset in res.out
        assert PRESET_DOCS[preset] in res.flat_out


def test_passes_json(capsys: pytest.CaptureFixture[str]) -> None:
    from graphopt.core import registry
    from graphopt.core.pipeline import PRESETS

    res = cli(capsys, "passes", "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["presets"] == PRESETS
    assert "cleanup" in info["presets"]
    listed = {p["name"]: p for p in info["passes"]}
    assert set(listed) == set(registry.all_passes())
    for name, cls in registry.all_passes().items():
        entry = listed[name]
        assert entry["class"] == cls.__name__
        assert entry["summary"]
        assert {"max_abs", "max_rel", "min_cosine"} <= set(entry["tolerance"])
        expected = [
            {
                "name": f.name,
                "type": registry.type_name(tp),
                "default": registry.format_value(registry.default_of(f)),
                "doc": f.metadata["doc"],
            }
            for f, tp in registry.option_fields(cls.Options)
        ]
        assert entry["options"] == expected
        assert all(o["doc"] for o in entry["options"])
    fold = {o["name"]: o for o in listed["fold-constants"]["options"]}
    assert fold["input_size_limit"]["type"] == "int"
    assert fold["shape_inference"] == {
        "name": "shape_inference",
        "type": "bool",
        "default": "true",
        "doc": fold["shape_inference"]["doc"],
    }


@pytest.fixture
def list_option_pass() -> Iterator[str]:
    """A throwaway pass with a list-typed option, removed from the registry afterwards."""
    import onnx_ir as ir

    from graphopt.core import registry
    from graphopt.core.pass_base import GraphoptPass

    @dataclasses.dataclass(frozen=True)
    class ZzListOptions:
        op_types: list[str] = registry.option(["Conv", "Gemm"], "ops to touch [all others kept]")

    class ZzListOptionPass(GraphoptPass):
        name = "zz-test-list-option"
        Options = ZzListOptions
        summary = "test only"

        def run(self, model: ir.Model) -> bool:
            return False

    registry.all_passes()
    registry.register_pass(ZzListOptionPass)
    try:
        yield ZzListOptionPass.name
    finally:
        registry._REGISTRY.pop(ZzListOptionPass.name, None)


def test_passes_text_shows_list_options(
    capsys: pytest.CaptureFixture[str], list_option_pass: str
) -> None:
    res = cli(capsys, "passes")
    assert res.code == 0, res.err
    assert "op_types: [str] = [Conv,Gemm]" in res.out
    # the doc may wrap inside its table cell; the brackets must survive either way
    assert "[all" in res.out and "kept]" in res.out


# ----------------------------------------------------------------------------- demo, version


@pytest.fixture
def demo_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo keeps its folder for the tune command it prints: here, in the test's."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_demo(capsys: pytest.CaptureFixture[str], demo_tmp: Path) -> None:
    """The walk-through: cleanup, then cpu-int8 within the pitch budget, then the table of
    pitch on held-out tones and measured speed, and the tune command to run next."""
    tmp_path = demo_tmp
    out, report = tmp_path / "demo.onnx", tmp_path / "demo.json"
    res = cli(capsys, "demo", "-o", out, "--report", report)
    assert res.code == 0, res.err
    text = res.flat_out
    assert "CREPE tiny" in text and "QLinearConv" in text  # the int8 step's findings
    pitch = dict(re.findall(r"(original|cleanup|cpu-int8)\s+([\d.]+)%", text))
    assert set(pitch) == {"original", "cleanup", "cpu-int8"}, res.out
    assert float(pitch["original"]) >= 99 and float(pitch["cpu-int8"]) >= 99
    assert "graphopt tune " in text and "pitch50>=-1pt" in text
    rows = {r["name"]: r for r in json.loads(report.read_text())["demo"]["rows"]}
    assert rows["cpu-int8"]["pitch50"] == pytest.approx(float(pitch["cpu-int8"]) / 100, abs=1e-3)
    assert rows["original"]["latency_vs_original"] == 1.0
    assert rows["cpu-int8"]["bytes"] < rows["original"]["bytes"] / 2  # int8 weights
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # -o is the int8 model


def test_demo_with_a_pipeline_prints_its_table(
    capsys: pytest.CaptureFixture[str], demo_tmp: Path
) -> None:
    res = cli(capsys, "demo", "-p", "cleanup", "-o", demo_tmp / "c.onnx")
    assert res.code == 0, res.err
    assert "fold-constants" in res.out  # the per-pass table
    assert re.search(r"cleanup\s+100\.0%", res.flat_out), res.out
    assert "cpu-int8" not in res.flat_out.split("pipeline:")[0]


def test_demo_refuses_a_missing_folder_before_the_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for flag in ("-o", "--report"):
        res = cli(capsys, "demo", flag, tmp_path / "nope" / "x")
        assert_user_error(res, errors.EXIT_USAGE, "folder does not exist", "nope")
        assert "cleanup ..." not in res.out  # refused before any step ran


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    res = cli(capsys, "--version")
    assert res.code == 0 and graphopt.__version__ in res.out
    res = cli(capsys, "--help")
    assert res.code == 0
    for command in ("optimize", "inspect", "run", "passes", "demo"):
        assert command in res.out


# ----------------------------------------------------------------------------- model errors


@pytest.mark.parametrize("command", ["optimize", "inspect", "run"])
def test_missing_model(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    extra = ["-o", str(tmp_path / "o.onnx")] if command == "optimize" else []
    res = cli(capsys, command, tmp_path / "nope.onnx", *extra)
    assert_user_error(res, errors.EXIT_INPUT, "model file not found", "nope.onnx")


def test_directory_as_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    res = cli(capsys, "optimize", tmp_path, "-o", tmp_path / "o.onnx")
    assert_user_error(res, errors.EXIT_INPUT, "directory", str(tmp_path))


def test_unreadable_model(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_access = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(path).resolve() == model_copy.resolve():
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx")
    assert_user_error(res, errors.EXIT_INPUT, "not readable", "permission denied")


def test_empty_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.touch()
    res = cli(capsys, "optimize", empty, "-o", tmp_path / "o.onnx")
    assert_user_error(res, errors.EXIT_INPUT, "model file is empty", "empty.onnx")


def test_truncated_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    blob = model_copy.read_bytes()
    half = tmp_path / "half.onnx"
    half.write_bytes(blob[: len(blob) // 2])
    res = cli(capsys, "optimize", half, "-o", tmp_path / "o.onnx")
    assert_user_error(res, errors.EXIT_INPUT, "half.onnx", "not a valid ONNX model", "truncated")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"this is a text file, not a model\n",
        b'{"a": 1}\n',
        b"hi",  # parses as a protobuf message with one unknown field
        np.random.default_rng(0).bytes(4096),
    ],
    ids=["text", "json", "tiny-valid-protobuf", "random-bytes"],
)
def test_not_onnx(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    res = cli(capsys, "inspect", bad)
    assert_user_error(res, errors.EXIT_INPUT, "bad.onnx", "not a valid ONNX model")


def test_unsupported_opset(
    capsys: pytest.CaptureFixture[str], build_proto: MakeModel, save_proto: SaveModel
) -> None:
    path = save_proto(_relu(build_proto, opset=30), "op30.onnx")
    for command in (["optimize", str(path), "-o", str(path.with_name("o.onnx"))],
                    ["inspect", str(path)], ["run", str(path)]):  # fmt: skip
        res = cli(capsys, *command)
        assert_user_error(res, errors.EXIT_INPUT, "opset 30", "not supported")


@pytest.mark.parametrize(
    "location",
    ["../secret.bin", "sub/../../secret.bin", "ABSOLUTE"],
    ids=["dotdot", "nested", "absolute"],
)
def test_external_data_outside_model_folder(
    capsys: pytest.CaptureFixture[str],
    build_proto: MakeModel,
    save_proto: SaveModel,
    tmp_path: Path,
    location: str,
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(3, np.float32).tobytes())  # exists: refused for where it is
    if location == "ABSOLUTE":
        location = str(secret)
    path = save_proto(_external(build_proto, location), "model/m.onnx")
    for command in (["optimize", str(path), "-o", str(tmp_path / "o.onnx")],
                    ["inspect", str(path)]):  # fmt: skip
        res = cli(capsys, *command)
        assert_user_error(res, errors.EXIT_INPUT, "outside the model's folder", location)
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_missing(
    capsys: pytest.CaptureFixture[str],
    build_proto: MakeModel,
    save_proto: SaveModel,
    tmp_path: Path,
) -> None:
    path = save_proto(_external(build_proto, "w.bin"), "model/m.onnx")
    res = cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx")
    assert_user_error(res, errors.EXIT_INPUT, "w.bin", "missing")


def test_external_data_truncated(
    capsys: pytest.CaptureFixture[str],
    build_proto: MakeModel,
    save_proto: SaveModel,
    tmp_path: Path,
) -> None:
    path = save_proto(_external(build_proto, "w.bin", length=12), "model/m.onnx")
    (path.parent / "w.bin").write_bytes(b"\0" * 4)
    res = cli(capsys, "inspect", path)
    assert_user_error(res, errors.EXIT_INPUT, "w.bin", "truncated")


def test_external_data_beside_model_works(
    capsys: pytest.CaptureFixture[str],
    build_proto: MakeModel,
    save_proto: SaveModel,
    tmp_path: Path,
) -> None:
    path = save_proto(_external(build_proto, "w.bin"), "model/m.onnx")
    (path.parent / "w.bin").write_bytes(np.arange(3, dtype=np.float32).tobytes())
    res = cli(capsys, "optimize", path, "-o", tmp_path / "o.onnx")
    assert res.code == 0, res.err
    res = cli(capsys, "run", tmp_path / "o.onnx", "--json")
    assert res.code == 0, res.err


# ----------------------------------------------------------------------------- pipeline errors


def test_unknown_pass(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path) -> None:
    text = "lift-constants,fold-constant"
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "-p", text)
    assert_user_error(res, errors.EXIT_USAGE, "unknown pass 'fold-constant'", "did you mean",
                      "fold-constants")  # fmt: skip
    assert_caret_under(res.err, text, "fold-constant", start=len("lift-constants,"))
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_option(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    text = "fold-constants{foo=1}"
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "-p", text)
    assert_user_error(res, errors.EXIT_USAGE, "fold-constants", "unknown option 'foo'",
                      "input_size_limit")  # fmt: skip
    assert_caret_under(res.err, text, "foo")


def test_option_with_wrong_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    text = "fold-constants{input_size_limit=abc}"
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "-p", text)
    assert_user_error(res, errors.EXIT_USAGE, "input_size_limit", "abc", "integer")
    assert_caret_under(res.err, text, "abc")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("fold-constants{", ["pipeline:"]),
        ("fold-constants,,eliminate-dead-code", ["pipeline:", "pass name"]),
        ("fold-constants}", ["pipeline:", "'}'"]),
        ("repeat<0>(fold-constants)", ["pipeline:", "repeat count"]),
        ("repeat<2>(fold-constants", ["pipeline:", "')'"]),
        ("fold-constants{input_size_limit=1,input_size_limit=2}", ["given twice"]),
        ("fold-constants{input_size_limit=-1}", ["fold-constants", ">= 0"]),
        ("fold-constants{shape_inference=maybe}", ["shape_inference", "true or false"]),
        ("cleanup{x=1}", ["preset 'cleanup' takes no options"]),
        ("", ["pipeline", "empty"]),
        ("   ", ["pipeline", "empty"]),
    ],
)
def test_bad_pipeline_syntax(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_copy: Path,
    text: str,
    words: list[str],
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "-p", text)
    assert_user_error(res, errors.EXIT_USAGE, *words)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--bogus"], ["No such option", "--bogus"]),
        (["--target", "gpu"], ["--target", "gpu"]),
        (["--batch", "abc"], ["--batch", "abc"]),
        (["--dim", "batch"], ["--dim expects NAME=POSITIVE_INT", "'batch'"]),
        (["--dim", "batch=0"], ["--dim expects NAME=POSITIVE_INT"]),
    ],
)
def test_bad_command_line_values(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_copy: Path,
    args: list[str],
    words: list[str],
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", *args)
    assert_user_error(res, errors.EXIT_USAGE, *words)


def test_missing_output_option(capsys: pytest.CaptureFixture[str], model_copy: Path) -> None:
    res = cli(capsys, "optimize", model_copy)
    assert_user_error(res, errors.EXIT_USAGE, "Missing option", "--output")


@pytest.mark.parametrize("value", ["[/x]", "[b]x"])
def test_bad_command_line_value_with_brackets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path, value: str
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx", "--target", value)
    assert_user_error(res, errors.EXIT_USAGE, "--target", value)


@pytest.mark.parametrize("batch", ["0", "-1"])
def test_nonpositive_batch(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_copy: Path,
    demo_paths: tuple[Path, Path],
    batch: str,
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx",
              "--data", demo_paths[1], "--batch", batch)  # fmt: skip
    assert_user_error(res, errors.EXIT_USAGE, "--batch")


# ----------------------------------------------------------------------------- output errors


def test_output_equal_to_input_is_refused(
    capsys: pytest.CaptureFixture[str], model_copy: Path
) -> None:
    before = sha256(model_copy)
    spellings = [model_copy, model_copy.parent / ".." / "in" / model_copy.name]
    for out in spellings:
        res = cli(capsys, "optimize", model_copy, "-o", out)
        assert_user_error(res, errors.EXIT_USAGE, "never modifies its input")
    assert sha256(model_copy) == before
    assert [p.name for p in model_copy.parent.iterdir()] == [model_copy.name]


def test_output_folder_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "nodir" / "o.onnx")
    assert_user_error(res, errors.EXIT_USAGE, "output folder does not exist", "nodir")
    assert not (tmp_path / "nodir").exists()


def test_output_is_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path)
    assert_user_error(res, errors.EXIT_USAGE, "directory")


def test_report_folder_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    res = cli(capsys, "optimize", model_copy, "-o", tmp_path / "o.onnx",
              "--report", tmp_path / "nodir" / "r.json")  # fmt: skip
    assert_user_error(res, errors.EXIT_USAGE, "report folder does not exist")
    assert not (tmp_path / "o.onnx").exists()


def test_output_path_with_brackets_is_printed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    folder = tmp_path / "[v2]"
    folder.mkdir()
    res = cli(capsys, "optimize", model_copy, "-o", folder / "o.onnx", "--no-verify")
    assert res.code == 0, res.err
    assert f"wrote {folder / 'o.onnx'}" in res.flat_out


def test_long_error_message_stays_on_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / ("d" * 180) / "m.onnx"
    res = cli(capsys, "inspect", missing)
    assert res.code == errors.EXIT_INPUT
    assert res.err.splitlines()[0] == f"graphopt: error: model file not found: {missing}"


# ----------------------------------------------------------------------------- data errors


@pytest.fixture
def add_model(build_proto: MakeModel, save_proto: SaveModel) -> Path:
    return save_proto(_add(build_proto), "add.onnx")


def _optimize_with_data(
    capsys: pytest.CaptureFixture[str], model: Path, data: Path, tmp_path: Path
) -> Result:
    return cli(capsys, "optimize", model, "-o", tmp_path / "o.onnx", "--data", data)


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"other": np.zeros((2, 1, 8, 8), np.float32)},
         ["missing model input 'input'", "found keys: other"]),
        ({"input": np.zeros((2, 1, 8, 8), np.float64)}, ["input 'input'", "float64", "float32"]),
        ({"input": np.zeros((2,), np.float32)}, ["input 'input'", "rank 1"]),
        ({"input": np.zeros((2, 3, 1, 8, 8, 1), np.float32)}, ["input 'input'", "rank"]),
        ({"input": np.zeros((2, 1, 8, 9), np.float32)}, ["input 'input'", "axis 3"]),
    ],
    ids=["missing-input", "float64", "rank-too-low", "rank-too-high", "wrong-size"],
)  # fmt: skip
def test_bad_npz_data(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_copy: Path,
    arrays: dict[str, np.ndarray],
    words: list[str],
) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, **arrays)  # type: ignore[arg-type]
    res = _optimize_with_data(capsys, model_copy, data, tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, *words)
    assert not (tmp_path / "o.onnx").exists()


def test_data_not_an_npz(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    data = tmp_path / "d.npz"
    data.write_text("input,1,2,3\n")
    res = _optimize_with_data(capsys, model_copy, data, tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, "d.npz", "not a readable .npz")


def test_data_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path) -> None:
    res = _optimize_with_data(capsys, model_copy, tmp_path / "nope.npz", tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, "data not found", "nope.npz")


def test_data_different_sample_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, add_model: Path
) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, a=np.zeros((3, 2, 3), np.float32), b=np.zeros((4, 2, 3), np.float32))
    res = _optimize_with_data(capsys, add_model, data, tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, "different sample counts", "a=3", "b=4")


def test_test_data_set_with_wrong_input_count(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, add_model: Path
) -> None:
    folder = tmp_path / "sets" / "test_data_set_0"
    folder.mkdir(parents=True)
    tensor = onnx.numpy_helper.from_array(np.zeros((2, 3), np.float32), "a")
    (folder / "input_0.pb").write_bytes(tensor.SerializeToString())
    res = _optimize_with_data(capsys, add_model, tmp_path / "sets", tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, "test_data_set_0", "1 input files", "2 inputs")


def test_test_data_set_folder_works(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, add_model: Path
) -> None:
    for k in range(2):
        folder = tmp_path / "sets" / f"test_data_set_{k}"
        folder.mkdir(parents=True)
        for i, name in enumerate("ab"):
            t = onnx.numpy_helper.from_array(np.full((2, 3), k + i, np.float32), name)
            (folder / f"input_{i}.pb").write_bytes(t.SerializeToString())
    report = tmp_path / "r.json"
    res = cli(capsys, "optimize", add_model, "-o", tmp_path / "o.onnx",
              "--data", tmp_path / "sets", "--report", report)  # fmt: skip
    assert res.code == 0, res.err
    verify = json.loads(report.read_text())["verify"]
    assert verify["inputs"] == str(tmp_path / "sets") and verify["feeds"] == 2


def test_data_single_npy_array(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 1, 8, 8), np.float32))
    res = _optimize_with_data(capsys, model_copy, data, tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, "x.npy")


def test_data_zero_samples_on_batch_axis(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, input=np.zeros((0, 1, 8, 8), np.float32))
    res = _optimize_with_data(capsys, model_copy, data, tmp_path)
    assert_user_error(res, errors.EXIT_INPUT, "no samples")


def test_run_with_bad_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, input=np.zeros((2, 1, 8, 8), np.float64))
    res = cli(capsys, "run", model_copy, "--data", data)
    assert_user_error(res, errors.EXIT_INPUT, "float64")


# ----------------------------------------------------------------------------- --debug


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    res = cli(capsys, "--debug", "optimize", tmp_path / "nope.onnx", "-o", tmp_path / "o.onnx")
    assert res.code == errors.EXIT_INPUT
    assert "Traceback" in res.err
    assert "ModelError" in res.err
    assert "graphopt: error: model file not found" in res.err


@pytest.mark.parametrize("command", ["optimize", "inspect", "run"])
def test_debug_after_the_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    """Where users type it, after the command and its arguments (the internal-error message
    tells them to add it): accepted on every command, the traceback shown."""
    extra = ["-o", tmp_path / "o.onnx"] if command == "optimize" else []
    res = cli(capsys, command, tmp_path / "nope.onnx", *extra, "--debug")
    assert res.code == errors.EXIT_INPUT, res.err
    assert "Traceback" in res.err and "No such option" not in res.err


def test_debug_after_double_dash_is_an_argument() -> None:
    from graphopt.cli import _debug_first

    assert _debug_first(["run", "m.onnx", "--", "--debug"]) == ["run", "m.onnx", "--", "--debug"]
    assert _debug_first(["run", "--debug", "m.onnx"]) == ["--debug", "run", "m.onnx"]


def test_debug_from_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHOPT_DEBUG", "1")
    res = cli(capsys, "inspect", tmp_path / "nope.onnx")
    assert res.code == errors.EXIT_INPUT
    assert "Traceback" in res.err


def test_debug_for_a_pipeline_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_copy: Path
) -> None:
    res = cli(capsys, "--debug", "optimize", model_copy, "-o", tmp_path / "o.onnx",
              "-p", "nope")  # fmt: skip
    assert res.code == errors.EXIT_USAGE
    assert "Traceback" in res.err and "PipelineError" in res.err
