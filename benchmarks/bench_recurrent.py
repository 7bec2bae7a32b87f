"""Benchmark: int8 recurrent layers on the corpus' recurrent models.

Issue 22, parts 2 and 3. Per corpus model whose time goes to LSTMs (as LSTM ops, or as a
Loop over time the way tf2onnx writes a Keras LSTM), built from the same calibration DATA:

* ``original``: the exported file as it is;
* ``cpu-fp32``: the baseline;
* ``cpu-int8 without LSTM``: the preset with ``quantize-recurrent`` taken out (what it was
  before: every LSTM float);
* ``cpu-int8``: the preset as a user runs it (LSTMs as ``DynamicQuantizeLSTM`` where that
  times faster on this CPU; MatMuls inside Loop bodies as integer kernels), with its tool
  time;
* ``lstm-only``: ``cpu-fp32,quantize-recurrent`` (what the recurrent layers alone give);
* ``ort-dynamic``: ONNX Runtime's own ``quantize_dynamic`` (QInt8 weights, its defaults) on
  the original model, the tool a user would otherwise reach for.

All take turns in one set of rounds at batch 1 (CPU EP, 2 threads), the order rotated every
round; ratios to ``cpu-fp32`` are per round, then the median. Each is scored with the
corpus' task metric on held-out DATA.

    python benchmarks/bench_recurrent.py [--models ddddocr-common,eeg-seizure] [--rounds 9]
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("ddddocr-common", "eeg-seizure", "silero-vad-op15", "chars2vec")


def _preset_without_lstm() -> str:
    from graphopt.core.pipeline import PRESETS

    preset = PRESETS["cpu-int8"]
    assert ",quantize-recurrent," in preset
    return preset.replace(",quantize-recurrent,", ",")


def _build(name: str, pipeline: str, out: Path) -> dict[str, Any]:
    from zoo.corpus import optimize_entry

    result, seconds = optimize_entry(name, pipeline, out)
    return {
        "pipeline": pipeline,
        "seconds": round(seconds, 2),
        "notes": [
            n
            for n in result.notes
            if n.startswith(("quantize-recurrent", "qdq-insert", "capture-loop-invariants"))
        ],
    }


def _ort_dynamic(name: str, out: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from zoo import corpus

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice, every call
    t0 = time.perf_counter()
    try:
        quantize_dynamic(corpus.model_path(name), out, weight_type=QuantType.QInt8)
    except Exception as exc:  # a failure is a result here: record it
        return {"pipeline": "onnxruntime quantize_dynamic", "error": str(exc).splitlines()[0]}
    finally:
        logging.disable(logging.NOTSET)
    seconds = round(time.perf_counter() - t0, 2)
    return {"pipeline": "onnxruntime quantize_dynamic(QInt8)", "seconds": seconds, "notes": []}


def run_model(name: str, work: Path, rounds: int) -> dict[str, Any]:
    from zoo import corpus

    from graphopt import runtime
    from graphopt.bench.timing import rotated_ratios

    entry = corpus.entries([name])[0]
    assert entry.evaluate is not None
    held_out = corpus.data_path(name, "eval")
    work.mkdir(parents=True, exist_ok=True)
    variants = {
        "cpu-fp32": "cpu-fp32",
        "cpu-int8 without LSTM": _preset_without_lstm(),
        "cpu-int8": "cpu-int8",
        "lstm-only": "cpu-fp32,quantize-recurrent",
    }
    paths = {k: work / f"{name}.{i}.onnx" for i, k in enumerate([*variants, "ort-dynamic"])}
    builds = {k: _build(name, p, paths[k]) for k, p in variants.items()}
    builds["ort-dynamic"] = _ort_dynamic(name, paths["ort-dynamic"])
    paths = {"original": corpus.model_path(name), **paths}
    builds["original"] = {"pipeline": "(the exported file)", "notes": []}
    names = [k for k in paths if "error" not in builds[k]]
    sessions = {k: runtime.make_session(paths[k], threads=2) for k in names}
    feeds, _ = corpus.feeds_of(paths["cpu-fp32"], held_out, batch=1)
    per_round = rotated_ratios(sessions, feeds[0], rounds, "cpu-fp32")
    rows: dict[str, Any] = {}
    for k in paths:
        row: dict[str, Any] = {"build": builds[k]}
        if k in names:
            row["ratio"] = statistics.median(r[k] for r in per_round)
            row["ratio_rounds"] = [round(r[k], 4) for r in per_round]
            row["metric"] = entry.evaluate(paths[k], held_out)
            row["mb"] = round(paths[k].stat().st_size / 1e6, 1)
        rows[k] = row
    return {
        "model": name,
        "origin": entry.origin,
        "exporter": entry.exporter,
        "fp32_ms": 1e3 * statistics.median(r["seconds"] for r in per_round),
        "rows": rows,
    }


def markdown(results: list[dict[str, Any]], env: dict[str, Any], rounds: int) -> str:
    from graphopt.bench.machine import machine_line

    lines = [
        "# int8 recurrent layers (issue 22, parts 2 and 3)",
        "",
        f"{machine_line(env)}, 2 threads, batch 1; {rounds} rounds, order "
        "rotated each round; × cpu-fp32 = median of per-round latency ratios (lower is "
        "faster). Metrics on the entry's held-out DATA.",
        "",
        "| model | exporter | variant | × cpu-fp32 | metric | MB | build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for k, row in res["rows"].items():
            if "ratio" not in row:
                lines.append(
                    f"| {res['model']} | {res['exporter']} | {k} | failed: "
                    f"{row['build']['error'][:80]} | – | – | – |"
                )
                continue
            metric = ", ".join(f"{m} {v:.3f}" for m, v in row["metric"].items())
            lines.append(
                f"| {res['model']} | {res['exporter']} | {k} | {row['ratio']:.3f} | {metric} | "
                f"{row['mb']} | {row['build'].get('seconds', '–')} |"
            )
    lines += ["", "cpu-fp32 latency and the notes of `cpu-int8` per model:", ""]
    for res in results:
        lines.append(f"- **{res['model']}** (cpu-fp32 {res['fp32_ms']:.1f} ms):")
        lines += [f"  - {n}" for n in res["rows"]["cpu-int8"]["build"]["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from graphopt.bench.harness import corpus_bench_main

    return corpus_bench_main(
        argv,
        doc=__doc__,
        stem="recurrent",
        models=MODELS,
        run_model=run_model,
        markdown=markdown,
        out=RESULTS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
