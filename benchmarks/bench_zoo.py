"""The zoo matrix: every corpus model x every preset and every lossy pass, with defaults.

Why: graphopt must take models from any exporter. Each cell runs ``graphopt optimize MODEL
-o OUT -p PIPELINE --data calib.npz`` in its own process (a crash costs that cell only) and
is then classified:

* **ok**: the run worked and something lossy acted (or, for ``cleanup``/``cpu-fp32``, the
  run worked). Measured on the entry's held-out ``eval`` DATA, original and optimized model
  in this process: the worst output cosine, the task metric where the entry has one, and the
  latency ratio optimized / original (CPU EP, all ORT optimizations, interleaved rounds, the
  median of per-round ratios).
* **declined**: the run worked but every lossy pass left the model alone, each with a reason.
* **refused**: graphopt stopped with a one-line error (exit 1-3).
* **silent**: a lossy pass changed nothing without a reason (a bug).
* **crashed**: an internal error (exit 70), a verification failure of a lossless pass (a
  broken rewrite), a signal or a timeout. A lossy pass that loses more than its tolerance at
  default strength (exit 4 with the lossy hint) is a refusal: verification did its job; the
  reason keeps the cosine. (The edge-case tests, on models every pass must handle, fail on
  those too.)

Declines and refusals must give one of the documented reasons (:data:`DOCUMENTED`, also in
docs/corpus.md); any other reason is flagged ``undocumented``. ``tests/zoo/test_zoo_matrix.py``
(slow) runs this and fails on crashes, silent no-ops and undocumented reasons.

    python benchmarks/bench_zoo.py [--models a,b] [--pipelines cpu-int8,sparsify]
        [--no-latency] [--timeout 900] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("cleanup", "cpu-fp32", "cpu-int8", "cuda-int8")
LOSSY = (
    "qdq-insert",
    "quantize-dynamic",
    "quantize-weights",
    "sparsify",
    "cluster-weights",
    "prune-channels",
    "assign-precision",
    "reconstruct",
)
#: cleanup without DATA: verification inputs come from test data beside the model or the
#: sizes graphopt finds the model runs with (graphopt.inputs.probe)
NO_DATA = "cleanup/no-data"
PIPELINES = (NO_DATA, *PRESETS, *LOSSY)

#: Why a pass may leave a model alone or graphopt may refuse it (regex -> label), as docs/corpus.md
#: documents them. A reason outside this list is a finding to look at.
DOCUMENTED: list[tuple[str, str]] = [
    (r"already quantized", "already quantized"),
    (r"sit inside If/Loop bodies, which qdq-insert does not enter", "layers only in If/Loop"),
    (r"no Conv, Gemm or MatMul", "nothing int8 speeds up"),
    (r"none of the \d+ Conv/Gemm/MatMul nodes has a float32 activation", "no float32 weights"),
    (r"latency guard: int8 is not faster", "int8 not faster here (guard)"),
    (
        r"no \S+ (weight|node|with) .*(constant weight|float32 values|float32 initializer)",
        "no weight of the kind the pass takes",
    ),
    (r"no Conv \(group=1\), Gemm or MatMul with a constant weight", "nothing prunable"),
    (r"no float32 computation to lower", "not a float32 model"),
    (r"already meets the target sparsity", "already sparse"),
    (r"nothing to fit back to", "reconstruct without a lossy pass before"),
    (r"no Conv/Gemm/MatMul layer differs", "nothing changed to refit"),
    (r"every node's precision was decided", "precision already assigned"),
    (r"already at ai\.onnx opset", "already at the opset"),
    (r"no channel group|keeps every channel|left alone", "no prunable channel group"),
    (
        r"needs ai\.onnx opset \d+; the model is at \d+ and could not be converted",
        "opset conversion impossible",
    ),
    (r"map-typed inputs", "map-typed inputs (DictVectorizer) not supported"),
    (
        r"give the sizes it runs with \(--dim .*\) or real inputs with --data",
        "no DATA: names the dims and the --dim/--data it needs",
    ),
    (r"give real inputs with --data DATA", "no DATA: random inputs do not run; asks for --data"),
    (r"changed the outputs beyond its tolerance", "lossy pass beyond its tolerance at defaults"),
    (r"every channel group is left alone", "no prunable channel group"),
    (r"no com\.microsoft Attention node", "no fused Attention to quantize"),
    (r"QAttention is not faster here", "int8 not faster here (guard)"),
    (r"no Attention QAttention can run", "no fused Attention to quantize"),
]


def documented(reason: str) -> str | None:
    """The documented label of a decline or refusal reason, or None."""
    for pattern, label in DOCUMENTED:
        if re.search(pattern, reason):
            return label
    return None


@dataclasses.dataclass
class Cell:
    model: str
    pipeline: str
    status: str  # ok | declined | refused | silent | crashed | unavailable
    reason: str = ""
    label: str | None = None
    cosine: float | None = None
    latency_ratio: float | None = None
    metric: dict[str, float] | None = None
    metric_before: dict[str, float] | None = None
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------- one cell


def _run_optimize(
    model: Path, out: Path, pipeline: str, data: Path | None, batch: int, timeout: float
) -> tuple[int | None, str, dict[str, Any] | None]:
    report = out.with_suffix(".json")
    cmd = [
        sys.executable, "-m", "graphopt.cli", "optimize", str(model), "-o", str(out),
        "-p", pipeline, "--report", str(report),
    ]  # fmt: skip
    if data is not None:
        cmd += ["--data", str(data), "--batch", str(batch)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s", None
    rep = json.loads(report.read_text()) if proc.returncode == 0 and report.exists() else None
    return proc.returncode, proc.stderr.strip(), rep


def _first_error_line(stderr: str) -> str:
    """graphopt's one-line error, with its hint line where it gives one."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("graphopt: "):
            text = line.removeprefix("graphopt: error: ").removeprefix("graphopt: ")
            if i + 1 < len(lines) and lines[i + 1].strip().startswith("hint:"):
                text += " (" + lines[i + 1].strip() + ")"
            return text
    return lines[-1] if lines else "no message"


def classify(code: int | None, stderr: str, report: dict[str, Any] | None, pipeline: str) -> Cell:
    """Status and reason of one finished cell (model and numbers are filled in later)."""
    cell = Cell("", pipeline, "ok")
    if code is None:
        cell.status, cell.reason = "crashed", stderr
    elif code == 4 and "lossy by design" in stderr:
        # a lossy pass asked for more than this model takes at default strength: verification
        # refused it, as designed (the reason keeps the cosine for a reader to judge)
        cell.status, cell.reason = "refused", _first_error_line(stderr)
    elif code in (4, 70) or code < 0 or code > 4:
        cell.status, cell.reason = "crashed", f"exit {code}: {_first_error_line(stderr)}"
    elif code != 0:
        cell.status, cell.reason = "refused", _first_error_line(stderr)
    else:
        assert report is not None
        records = report["passes"]
        silent = [r["pass"] for r in records if r.get("silent")]
        lossy = [r for r in records if math.isinf(_f(r["tolerance"]["max_abs"]))]
        declined = [r for r in records if r.get("unchanged") and not r.get("silent")]
        cell.notes = [f"{r['pass']}: {r['unchanged']}" for r in declined]
        cell.notes += [f"{r['step']}: {r['inserted']}" for r in records if r.get("inserted")]
        if silent:
            cell.status, cell.reason = "silent", f"{', '.join(silent)} changed nothing, no reason"
        elif lossy and not any(r["modified"] for r in lossy):
            cell.status = "declined"
            cell.reason = "; ".join(f"{r['pass']}: {r.get('unchanged', '?')}" for r in lossy)
    if cell.status in ("declined", "refused"):
        cell.label = documented(cell.reason)
    return cell


def _f(v: Any) -> float:
    return float(v) if not isinstance(v, str) else float(v.replace("inf", "inf"))


# ----------------------------------------------------------------------------- measuring


def _session(path: Path) -> Any:
    from graphopt import runtime

    return runtime.make_session(path, ep="cpu", optimize=True)


def _outputs(sess: Any, feeds: list[dict[str, np.ndarray]]) -> Any:
    from graphopt import runtime
    from graphopt.accuracy import verify

    return verify.Outputs([o.name for o in sess.get_outputs()], runtime.run_feeds(sess, feeds))


def measure(
    cell: Cell, entry: Any, original: Path, optimized: Path, eval_data: Path, ref: Any,
    feeds: list, latency: bool, rounds: int,
) -> None:  # fmt: skip
    from graphopt import runtime
    from graphopt.accuracy import verify

    sess = _session(optimized)
    got = _outputs(sess, feeds)
    cell.cosine = verify.worst(verify.compare(got, ref))["cosine"]
    if entry.evaluate is not None:
        cell.metric = entry.evaluate(optimized, eval_data)
    if latency:
        base = _session(original)
        per_round = runtime.interleaved_latency([base, sess], feeds[0], rounds=rounds)
        cell.latency_ratio = float(np.median([o / b for b, o in per_round]))


# ----------------------------------------------------------------------------- the matrix


def run_matrix(
    names: list[str] | None,
    pipelines: list[str],
    *,
    work: Path,
    latency: bool = True,
    rounds: int = 5,
    timeout: float = 900.0,
    log: Any = print,
) -> list[Cell]:
    from zoo import corpus

    cells: list[Cell] = []
    for entry in corpus.entries(names):
        missing = entry.missing()
        if missing:
            cells += [
                Cell(entry.name, p, "unavailable", f"needs {', '.join(missing)}") for p in pipelines
            ]
            log(f"{entry.name}: unavailable (needs {', '.join(missing)})")
            continue
        model = corpus.model_path(entry.name)
        calib = corpus.data_path(entry.name, "calib")
        eval_data = corpus.data_path(entry.name, "eval")
        before = entry.evaluate(model, eval_data) if entry.evaluate is not None else None
        ref = feeds = None
        try:
            feeds, _ = corpus.feeds_of(model, eval_data, batch=entry.batch)
            feeds = feeds[:8]
            ref = _outputs(_session(model), feeds)
        except Exception as exc:  # graphopt cannot read it at all: every cell says why
            log(f"{entry.name}: reference failed: {exc}")
        for pipeline in pipelines:
            out = work / entry.name / f"{pipeline}.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            if pipeline == NO_DATA:
                code, stderr, report = _run_optimize(
                    model, out, "cleanup", None, entry.batch, timeout
                )
            else:
                code, stderr, report = _run_optimize(
                    model, out, pipeline, calib, entry.batch, timeout
                )
            cell = classify(code, stderr, report, pipeline)
            if report is not None:
                cell.notes.append(f"verified on {report['verify']['inputs']}")
            cell.model, cell.metric_before = entry.name, before
            cell.seconds = time.perf_counter() - t0
            if cell.status in ("ok", "declined") and ref is not None and feeds is not None:
                try:
                    measure(cell, entry, model, out, eval_data, ref, feeds, latency, rounds)
                except Exception as exc:  # the written model does not run: a crash
                    cell.status, cell.reason = "crashed", f"output does not run: {exc}"
            cells.append(cell)
            log(_line(cell))
            for f in out.parent.glob(f"{pipeline}.onnx*"):
                f.unlink()
    return cells


def _line(c: Cell) -> str:
    parts = [f"{c.model:28} {c.pipeline:18} {c.status:9}"]
    if c.cosine is not None:
        parts.append(f"cos {c.cosine:.5f}")
    if c.latency_ratio is not None:
        parts.append(f"x{c.latency_ratio:.2f}")
    if c.metric:
        parts.append(" ".join(f"{k} {v:.3f}" for k, v in c.metric.items()))
    if c.reason:
        parts.append(f"| {c.reason[:160]}")
    return " ".join(parts) + f" ({c.seconds:.0f} s)"


def rejudge(cell: Cell) -> Cell:
    """A stored cell judged by the current rules (a lossy pass's verification refusal, the
    documented reasons)."""
    if cell.status == "crashed" and "lossy by design" in cell.reason:
        cell.status = "refused"
    if cell.status in ("declined", "refused"):
        cell.label = documented(cell.reason)
    return cell


def problems(cells: list[Cell]) -> list[str]:
    """What the slow test fails on: crashes, silent no-ops, undocumented reasons."""
    out = []
    for c in cells:
        if c.status in ("crashed", "silent"):
            out.append(f"{c.model} x {c.pipeline}: {c.status}: {c.reason}")
        elif c.status in ("declined", "refused") and c.label is None:
            out.append(f"{c.model} x {c.pipeline}: undocumented reason: {c.reason}")
    return out


# ----------------------------------------------------------------------------- output


def markdown(cells: list[Cell], meta: dict[str, Any]) -> str:
    models = list(dict.fromkeys(c.model for c in cells))
    pipelines = list(dict.fromkeys(c.pipeline for c in cells))
    by = {(c.model, c.pipeline): c for c in cells}
    lines = [
        "# Zoo matrix: corpus models x presets and lossy passes",
        "",
        f"Machine: {meta['machine']}; onnxruntime {meta['onnxruntime']} CPU EP; "
        f"{meta['date']}; `python benchmarks/bench_zoo.py`.",
        *(
            [f"Rows run later and merged (`--merge`): {', '.join(meta['merged'])}."]
            if meta.get("merged")
            else []
        ),
        "",
        "Cell: **ok** worst output cosine to the original on held-out DATA, latency ratio "
        "optimized/original (×, lower is faster; median of interleaved rounds, batch of the "
        "entry's DATA); **dec** every lossy pass declined (reason below); **ref** refused with "
        "a one-line error; **CRASH** / **SILENT** are bugs.",
        "",
        "| model | " + " | ".join(pipelines) + " |",
        "|---|" + "---|" * len(pipelines),
    ]
    for m in models:
        row = []
        for p in pipelines:
            c = by.get((m, p))
            row.append(_short(c) if c else "")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    metric_rows = [c for c in cells if c.metric and c.status == "ok"]
    if metric_rows:
        lines += ["", "## Task metrics (held-out DATA): before → after", ""]
        lines += ["| model | pipeline | metric | before | after |", "|---|---|---|---|---|"]
        for c in metric_rows:
            for k, v in c.metric.items():
                b = (c.metric_before or {}).get(k)
                lines.append(
                    f"| {c.model} | {c.pipeline} | {k} | "
                    f"{'' if b is None else f'{b:.3f}'} | {v:.3f} |"
                )
    lines += ["", "## Why cells were declined or refused", ""]
    lines += ["| model | pipeline | status | documented as | reason |", "|---|---|---|---|---|"]
    for c in cells:
        if c.status in ("declined", "refused", "crashed", "silent", "unavailable"):
            reason = c.reason.replace("|", "/")[:300]
            lines.append(f"| {c.model} | {c.pipeline} | {c.status} | {c.label or '—'} | {reason} |")
    counts: dict[str, int] = {}
    for c in cells:
        counts[c.status] = counts.get(c.status, 0) + 1
    lines += ["", "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    return "\n".join(lines)


def _short(c: Cell) -> str:
    if c.status == "ok":
        cos = "" if c.cosine is None else f"{c.cosine:.4f}"
        lat = "" if c.latency_ratio is None else f" ×{c.latency_ratio:.2f}"
        return f"ok {cos}{lat}"
    return {"declined": "dec", "refused": "ref", "unavailable": "n/a"}.get(
        c.status, f"**{c.status.upper()}**"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated corpus entries (default: all)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="zoo", help="results file stem")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="write the markdown again from OUT/NAME.json with the current rules (no runs)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep OUT/NAME.json's cells for models not run now (add or redo a few models)",
    )
    args = parser.parse_args(argv)
    if args.rerender:
        saved = json.loads((args.out / f"{args.name}.json").read_text())
        cells = [rejudge(Cell(**c)) for c in saved["cells"]]
        (args.out / f"{args.name}.md").write_text(markdown(cells, saved["meta"]))
        found = problems(cells)
        for p in found:
            print("PROBLEM:", p)
        return 1 if found else 0
    import onnxruntime

    from graphopt import runtime
    from graphopt.core.report import write_json

    names = args.models.split(",") if args.models else None
    with tempfile.TemporaryDirectory(prefix="graphopt-zoo-") as tmp:
        cells = run_matrix(
            names,
            args.pipelines.split(","),
            work=Path(tmp),
            latency=not args.no_latency,
            rounds=args.rounds,
            timeout=args.timeout,
            log=lambda s: print(s, flush=True),
        )
    env = runtime.environment()
    meta = {
        "machine": f"{env.get('cpu', 'CPU')}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "environment": env,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    saved_path = args.out / f"{args.name}.json"
    if args.merge and saved_path.exists():
        fresh = {(c.model, c.pipeline): c for c in cells}
        ran = sorted({c.model for c in cells})
        asked = args.pipelines.split(",")
        what = ran if set(PIPELINES) <= set(asked) else [f"{m} x {'/'.join(asked)}" for m in ran]
        saved = json.loads(saved_path.read_text())
        old = [rejudge(Cell(**c)) for c in saved["cells"]]
        # the stored order, each cell run now in its place; new models at the end
        cells = [fresh.pop((c.model, c.pipeline), c) for c in old] + list(fresh.values())
        meta["merged"] = sorted(
            set(saved["meta"].get("merged", [])) | {f"{w} ({meta['date']})" for w in what}
        )
    rows = [dataclasses.asdict(c) for c in cells]
    write_json(args.out / f"{args.name}.json", {"meta": meta, "cells": rows})
    (args.out / f"{args.name}.md").write_text(markdown(cells, meta))
    found = problems(cells)
    for p in found:
        print("PROBLEM:", p)
    print(f"wrote {args.out / (args.name + '.md')}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
