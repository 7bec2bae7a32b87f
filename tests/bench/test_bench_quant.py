"""Smoke test of the quantization benchmark suite on the demo model (no torch needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_quant.py"


@pytest.fixture(scope="module")
def bench_quant():
    spec = importlib.util.spec_from_file_location("bench_quant", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quant"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_quant", None)


def test_demo_quick(bench_quant, tmp_path: Path) -> None:
    doc = bench_quant.main(["--models", "demo", "--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "quant.json").read_text())
    assert saved["schema"] == doc["schema"] == "graphopt.bench-quant/1"
    assert {"environment", "settings", "results"} <= set(saved)
    env = saved["environment"]
    assert {"cpu", "cores", "onnxruntime", "isa"} <= set(env)
    assert {"avx2", "avx512_vnni", "amx_int8"} <= set(env["isa"])
    assert saved["settings"]["graphopt_pipeline"] in {
        bench_quant.GRAPHOPT_PIPELINE,
        bench_quant.GRAPHOPT_FALLBACK,
    }

    (res,) = saved["results"]
    assert res["key"] == "demo" and "error" not in res
    assert res["batches"] == ["b1", "b8"]
    variants = res["variants"]
    expected = {
        "fp32",
        "graphopt",
        "ort-static-default",
        *bench_quant.ort_best_candidates(transformer=False),
        "ort-dynamic-default",
        "ort-dynamic-per-channel",
    }
    assert set(variants) == expected
    assert res["ort_best"] in res["ort_best_candidates"]
    assert variants[res["ort_best"]]["ort_best"] is True
    assert set(res["graphopt_vs_ort_best"]) == {"b1", "b8"}
    fp32 = variants["fp32"]
    assert fp32["p50_ratio_vs_fp32"] == {"b1": 1.0, "b8": 1.0}
    assert fp32["accuracy"]["top1"] > 0.9
    for name, v in variants.items():
        assert "error" not in v, (name, v.get("error"))
        assert v["file_bytes"] > 0
        assert set(v["p50_ms"]) == set(v["p90_ms"]) == {"b1", "b8"}
        assert 0 < v["p50_ms"]["b1"] <= v["p90_ms"]["b1"]
        assert {"top1", "agree_fp32"} <= set(v["accuracy"])
        if name != "fp32":
            assert v["quant_seconds"] > 0 and v["quant_peak_mb"] > 0
            assert v["file_bytes"] < fp32["file_bytes"]  # int8 weights
            assert v["accuracy"]["top1"] > 0.9

    md = (tmp_path / "quant.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for name in expected:
        assert sum(1 for r in rows if r.split("|")[1].strip().split(" ")[0] == name) == 1, name
    assert "onnxruntime" in md and "amx_int8" in md
