"""Benchmark: what the ``cleanup`` preset buys on real models, measured side by side.

For each model (the demo CNN; MiniLM and CREPE full when the ``[models]`` extra is installed)
it runs ``graphopt optimize -p cleanup`` and then measures, for the original and the cleaned
model in the same process: node count, file size, ONNX Runtime session build time (CPU EP,
all optimizations on) and latency p50/p90 at batch 1, interleaved round-robin over several
rounds so machine noise hits both alike. Ratios are cleaned / original, per round, then the
median. Results go to ``benchmarks/results/cleanup.json`` and ``cleanup.md``.

    python benchmarks/bench_cleanup.py [--rounds 5] [--iters 50] [--models demo,minilm,crepe]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import runtime
from graphopt.core.report import write_json
from graphopt.optimize import optimize

RESULTS = Path(__file__).resolve().parent / "results"


def _models(names: list[str], work: Path) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    from graphopt.cli.demo import demo_files

    out = []
    if "demo" in names:
        model, data = demo_files()
        x = np.load(data)["input"][:1]
        out.append(("digits CNN (demo)", model, {"input": x}))
    have_zoo = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "torchcrepe"))
    if not have_zoo and ({"minilm", "crepe"} & set(names)):
        print("skipping MiniLM/CREPE: pip install -e '.[models]'", file=sys.stderr)
        return out
    import zoo

    if "minilm" in names:
        m = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
        feed = {k: v[:1] for k, v in zoo.minilm_inputs(zoo.SENTENCES, seq_len=128).items()}
        out.append(("MiniLM-L6 (seq 128)", m, feed))
    if "crepe" in names:
        m = zoo.cached("crepe-full", lambda p: zoo.export_crepe(p, "full"))
        frames, _ = zoo.crepe_frames([220.0])
        out.append(("CREPE full", m, {"frames": frames[:1]}))
    return out


def _latency(sess: Any, feed: dict[str, np.ndarray], iters: int) -> list[float]:
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def bench(
    name: str, model: Path, feed: dict[str, np.ndarray], work: Path, rounds: int, iters: int
) -> dict[str, Any]:
    out = work / (model.stem + ".cleanup.onnx")
    t0 = time.perf_counter()
    report = optimize(model, "cleanup", output=out).report
    optimize_s = time.perf_counter() - t0
    variants = {"original": model, "cleanup": out}
    build: dict[str, list[float]] = {k: [] for k in variants}
    p50: dict[str, list[float]] = {k: [] for k in variants}
    p90: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):  # interleaved: each round measures both
        for key, path in variants.items():
            t0 = time.perf_counter()
            sess = runtime.make_session(path, threads=2)
            build[key].append((time.perf_counter() - t0) * 1000)
            lat = _latency(sess, feed, iters)
            p50[key].append(float(np.percentile(lat, 50)))
            p90[key].append(float(np.percentile(lat, 90)))
    ratio = [c / o for c, o in zip(p50["cleanup"], p50["original"], strict=True)]
    build_ratio = [c / o for c, o in zip(build["cleanup"], build["original"], strict=True)]
    return {
        "model": name,
        "nodes": [report["before"]["nodes"], report["after"]["nodes"]],
        "file_bytes": [model.stat().st_size, out.stat().st_size],
        "optimize_seconds": optimize_s,
        "verify_max_abs": report["verify"].get("final_vs_reference", {}) or {},
        "build_ms_median": {k: statistics.median(v) for k, v in build.items()},
        "p50_ms_median": {k: statistics.median(v) for k, v in p50.items()},
        "p90_ms_median": {k: statistics.median(v) for k, v in p90.items()},
        "p50_ratio_median": statistics.median(ratio),
        "p50_ratio_spread": [min(ratio), max(ratio)],
        "build_ratio_median": statistics.median(build_ratio),
    }


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# cleanup preset: original vs cleaned, same process, interleaved rounds",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; onnxruntime {env['onnxruntime']} "
        "CPUExecutionProvider, 2 threads, batch 1, all ORT optimizations on.",
        "",
        "| model | nodes | file | session build (ms) | p50 (ms) | p50 ratio | build ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, hi = r["p50_ratio_spread"]
        lines.append(
            f"| {r['model']} | {r['nodes'][0]} → {r['nodes'][1]} "
            f"| {r['file_bytes'][0] / 1e6:.2f} → {r['file_bytes'][1] / 1e6:.2f} MB "
            f"| {r['build_ms_median']['original']:.0f} → {r['build_ms_median']['cleanup']:.0f} "
            f"| {r['p50_ms_median']['original']:.3f} → {r['p50_ms_median']['cleanup']:.3f} "
            f"| {r['p50_ratio_median']:.3f} ({lo:.2f}–{hi:.2f}) | {r['build_ratio_median']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--models", default="demo,minilm,crepe")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = [
            bench(n, m, f, work, args.rounds, args.iters)
            for n, m, f in _models(args.models.split(","), work)
        ]
    env = runtime.environment()
    write_json(
        args.out / "cleanup.json",
        {"schema": "graphopt.bench-cleanup/1", "environment": env, "results": results},
    )
    md = markdown(results, env)
    (args.out / "cleanup.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
