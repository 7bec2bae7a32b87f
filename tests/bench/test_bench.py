"""``graphopt bench`` end to end on the shipped demo model (small runs: few repeats, 1 thread).

Timing ratios are not asserted (a shared machine is noisy); structure, accuracy against the
reference, the task metric, the reports and the error paths are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime
import pytest
from cli_testing import cli

from graphopt.bench.report import pareto_front
from graphopt.cli import main

FAST = ("--threads", "1", "--warmup", "1", "--repeat", "3", "--rounds", "2")


def _top1(model: Path, data: Path) -> float:
    z = np.load(data)
    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": z["input"]})[0]
    return float(np.mean(logits.argmax(-1) == z["label"]))


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from graphopt.cli.demo import demo_files

    tmp = tmp_path_factory.mktemp("bench")
    model, data = demo_files()
    copy = shutil.copy(model, tmp / "copy.onnx")
    proto = onnx.load(str(model))
    for init in proto.graph.initializer:
        if init.name == "15.weight":  # the classifier's weight: outputs change, slightly
            w = onnx.numpy_helper.to_array(init)
            rng = np.random.default_rng(0)
            noisy = w + rng.normal(0, 0.05, w.shape).astype(w.dtype)
            init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
    noisy_path = tmp / "noisy.onnx"
    onnx.save(proto, str(noisy_path))
    out = {k: tmp / f"bench.{k}" for k in ("json", "md", "html")}
    code = main(
        [
            "bench",
            str(model),
            str(copy),
            str(noisy_path),
            "--data",
            str(data),
            "--batch",
            "1,4",
            "--metric",
            "top1",
            "--ep",
            "cpu",
            "--ep",
            "cuda",
            *FAST,
            "--json",
            str(out["json"]),
            "--md",
            str(out["md"]),
            "--html",
            str(out["html"]),
        ]
    )
    return {
        "code": code,
        "paths": out,
        "report": json.loads(out["json"].read_text()) if out["json"].exists() else None,
        "models": {"ref": model, "copy": Path(copy), "noisy": noisy_path},
        "data": data,
    }


def _rows(report: dict[str, Any], model: str) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["model"] == model]


def test_exit_code_and_schema(bench_run: dict[str, Any]) -> None:
    assert bench_run["code"] == 0
    rep = bench_run["report"]
    assert rep["schema"] == "graphopt.bench/1"
    assert {"machine", "settings", "inputs", "models", "eps", "results", "memory"} <= set(rep)
    machine = rep["machine"]
    assert machine["onnxruntime"] == onnxruntime.__version__
    assert {"arch", "model", "isa", "flags"} <= set(machine["cpu_features"])
    assert rep["settings"]["batches"] == [1, 4]
    assert rep["settings"]["rounds"] == 2 and rep["settings"]["repeat"] == 3
    assert [m["name"] for m in rep["models"]] == ["digits_cnn", "copy", "noisy"]
    assert [m["reference"] for m in rep["models"]] == [True, False, False]
    assert rep["memory"]["process_peak_rss_bytes"] > 0


def test_result_rows_structure(bench_run: dict[str, Any]) -> None:
    rep = bench_run["report"]
    rows = rep["results"]
    assert len(rows) == 3 * 2  # models x batches on cpu
    assert {(r["model"], r["batch"]) for r in rows} == {
        (m, b) for m in ("digits_cnn", "copy", "noisy") for b in (1, 4)
    }
    for r in rows:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert len(lat["round_medians"]) == 2
        assert lat["spread"]["min"] <= lat["spread"]["max"]
        assert r["runs"] == 2 * 3
        assert r["throughput_per_s"] == pytest.approx(r["batch"] / (lat["p50"] / 1000))
        assert len(r["ratio_to_reference"]["per_round"]) == 2
        assert r["build_s"] > 0
        assert r["ep"] == "cpu" and r["io_binding"] is False
        assert "rss_build_delta_bytes" in r["memory"]
    for r in _rows(rep, "digits_cnn"):  # the reference against itself, round by round
        assert r["ratio_to_reference"]["per_round"] == [1.0, 1.0]


def test_accuracy_against_reference(bench_run: dict[str, Any]) -> None:
    rep = bench_run["report"]
    assert rep["inputs"]["accuracy_rows"] == 450
    for name in ("digits_cnn", "copy"):
        acc = _rows(rep, name)[0]["accuracy"]
        assert acc["max_abs"] == 0 and acc["max_rel"] == 0
        assert acc["cosine"] == pytest.approx(1.0)
        assert acc["top1_agreement"] == 1.0 and acc["top5_agreement"] == 1.0
    noisy = _rows(rep, "noisy")[0]["accuracy"]
    assert noisy["max_abs"] > 0 and noisy["max_rel"] > 0
    assert noisy["cosine"] < 1.0
    assert 0.5 < noisy["top1_agreement"] <= 1.0
    assert [o["name"] for o in noisy["outputs"]] == ["logits"]


def test_top1_metric_matches_direct_computation(bench_run: dict[str, Any]) -> None:
    rep = bench_run["report"]
    data = bench_run["data"]
    for name, key in (("digits_cnn", "ref"), ("copy", "copy"), ("noisy", "noisy")):
        metric = _rows(rep, name)[0]["accuracy"]["metric"]
        assert metric["name"] == "top1"
        assert metric["value"] == pytest.approx(_top1(bench_run["models"][key], data))


def test_cuda_is_a_skip_row_when_unusable(bench_run: dict[str, Any]) -> None:
    eps = {e["ep"]: e for e in bench_run["report"]["eps"]}
    assert eps["cpu"]["status"] == "ok"
    assert "CPUExecutionProvider" in eps["cpu"]["providers"]
    if eps["cuda"]["status"] == "ok":  # a machine with a usable GPU
        pytest.skip("CUDA is usable here")
    assert eps["cuda"]["status"] == "skipped"
    assert "CUDAExecutionProvider" in eps["cuda"]["reason"]
    assert "cuda: skipped" in bench_run["paths"]["md"].read_text()


def test_markdown_one_row_per_model_and_batch(bench_run: dict[str, Any]) -> None:
    md = bench_run["paths"]["md"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "| cpu |" in line]
    assert len(rows) == 6
    assert sum(line.startswith("| digits_cnn (ref) |") for line in rows) == 2
    assert sum(line.startswith("| noisy |") for line in rows) == 2
    assert "top1 0.9" in md


def test_html_has_the_tables(bench_run: dict[str, Any]) -> None:
    page = bench_run["paths"]["html"].read_text()
    assert page.startswith("<!doctype html>")
    assert '<table id="results">' in page
    assert page.count("<tr>") == 1 + 6
    assert "noisy" in page and "digits_cnn (ref)" in page
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in page
    else:
        assert page.count("data:image/png;base64,") == 2


def test_cuda_alone_fails_or_runs(capsys: pytest.CaptureFixture[str], demo_paths) -> None:
    """With onnxruntime-gpu installed, no usable device must still be a one-line error."""
    model, _ = demo_paths
    res = cli(capsys, "bench", model, "--ep", "cuda", *FAST)
    if res.code == 0:
        assert "CUDAExecutionProvider" not in res.err
        return
    assert res.code == 1, res.err
    assert res.err.startswith("graphopt: error: no execution provider could run (cuda: ")
    assert len(res.err.strip().splitlines()) == 1


@pytest.mark.parametrize("batch", ["0", "1,x", "", "-4", "2.5"])
def test_bad_batch_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], demo_paths, batch: str
) -> None:
    model, _ = demo_paths
    res = cli(capsys, "bench", model, "--batch", batch)
    assert res.code == 2, res.err
    assert "--batch" in res.err and "Traceback" not in res.err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--metric", "nope"), "unknown metric"),
        (("--metric", "top1"), "needs labels"),
        (("--dim", "batch=2"), "batch dimension"),
        (("--dim", "oops"), "NAME=POSITIVE_INT"),
    ],
)
def test_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], demo_paths, args: tuple[str, ...], words: str
) -> None:
    model, _ = demo_paths
    res = cli(capsys, "bench", model, *args, *FAST)
    assert res.code == 2, res.err
    assert words in res.err


def test_random_inputs_and_python_metric(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path, monkeypatch
) -> None:
    model, _ = demo_paths
    (tmp_path / "bench_metric_mod.py").write_text(
        "import numpy as np\n"
        "def mean_logit(outputs, samples):\n"
        "    return float(np.mean([o[0].mean() for o in outputs]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.json"
    res = cli(
        capsys,
        "bench",
        model,
        "--batch",
        "2",
        "--metric",
        "python:bench_metric_mod:mean_logit",
        *FAST,
        "--json",
        out,
    )
    assert res.code == 0, res.err
    rep = json.loads(out.read_text())
    assert rep["inputs"]["source"].startswith("random(seed=0")
    (row,) = rep["results"]
    assert row["batch"] == 2
    assert isinstance(row["accuracy"]["metric"]["value"], float)


def test_pareto_front() -> None:
    pts = [(1.0, 0.9), (2.0, 0.95), (1.5, 0.85), (3.0, 0.95), (0.5, 0.5)]
    assert pareto_front(pts) == [4, 0, 1]


def test_html_without_matplotlib_says_so_on_the_console(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path, monkeypatch
) -> None:
    """matplotlib is a dependency; where it is missing anyway, the user hears it."""
    from graphopt.bench import report as brep

    monkeypatch.setattr(brep, "plots", lambda report: None)
    monkeypatch.setattr(brep, "plots_available", lambda: False)
    model, data = demo_paths
    page = tmp_path / "b.html"
    code = main(["bench", str(model), "--data", str(data), *FAST, "--html", str(page)])
    err = capsys.readouterr().err
    assert code == 0
    assert "plots left out" in err and "pip install matplotlib" in err
    assert "matplotlib is not installed" in page.read_text()
