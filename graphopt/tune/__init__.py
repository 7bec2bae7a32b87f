"""``graphopt tune``: the fastest model that still meets the user's accuracy, found on the target.

The search builds candidates from the existing passes (:mod:`graphopt.tune.candidates`: the
float form, static int8 with and without per-node float fallback, percentile calibration,
dynamic int8, weight-only int8/int4, structured pruning with reconstruction at bracketed
ratios, pruning then int8, fp16/bf16 on GPUs) and keeps the fastest whose accuracy on
held-out data meets the budget.

* **Honest data**: DATA is split into a calibration part (every candidate is calibrated and
  reconstructed on it) and an evaluation part (accuracy is measured there only), or
  ``eval_data`` is the evaluation part; the report says which feeds each used.
* **Search, not brute force**, in three phases: the independent candidates first; then those
  that only make sense after them (float fallback and percentile calibration only when plain
  int8 misses the budget, int8 without SmoothQuant only when it meets it; a higher pruning
  ratio only when the lower one met it, a lower one when it did not); then pruning followed
  by int8 at the highest ratio within budget. A candidate that cannot apply is not built
  (the reason is in the report); one over budget is never timed. Calibration statistics are
  collected once and cached for every int8 build.
* **Latency** is measured on this machine and EP only: each candidate within budget runs
  against the original in rotated paired rounds; the fastest few then meet again, together,
  in a runoff, and a lossy winner must beat the original by 3 % (the float form, which
  computes the same, only has to be faster).
* Finished candidates are stored in the work folder: a killed tune resumes. The time limit
  also stops a build still running: local builds run in a worker process.
* ``backend="ray"`` builds and scores the candidates of each phase as Ray tasks (a cluster,
  or a local Ray); latency is still measured here.

This module is callable: ``graphopt.tune(model, data, "cosine>=0.99")`` is :func:`tune`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphopt import errors
from graphopt import ir as gir
from graphopt.core.callable import make_callable
from graphopt.tune.build import save_samples
from graphopt.tune.candidates import (
    Candidate,
    TuneBudget,
    model_facts,
    pareto_front,
    plan_candidates,
    split_data,
)
from graphopt.tune.engine import LocalBackend, RayBackend, Store
from graphopt.tune.search import (
    PAYS,
    TUNE_SCHEMA,
    Say,
    Search,
    TuneResult,
    final_runoff,
    parse_time,
    phases,
)


def tune(
    model: str | os.PathLike[str],
    data: Any,
    budget: str,
    *,
    output: str | os.PathLike[str] | None = None,
    target: str = "cpu",
    time_limit: str | float = "20m",
    eval_data: Any = None,
    work_dir: str | os.PathLike[str] | None = None,
    rounds: int = 7,
    batch: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    report_path: str | os.PathLike[str] | None = None,
    md_path: str | os.PathLike[str] | None = None,
    html_path: str | os.PathLike[str] | None = None,
    say: Say | None = None,
) -> TuneResult:
    """Find the fastest candidate whose accuracy on held-out data meets ``budget``.

    ``data`` calibrates (and, split, evaluates; or ``eval_data`` evaluates); ``budget`` is
    absolute (``cosine>=0.99``) or relative to the original (``top1>=-0.5pt``). Writes the
    winner to ``output``, or the original's copy when nothing pays (the reason is in the
    report).
    """
    from graphopt import runtime
    from graphopt.accuracy.budget import Budget
    from graphopt.inputs import data as gdata

    say = say or (lambda text: None)
    started = time.perf_counter()
    limit = parse_time(time_limit)
    tb = TuneBudget.parse(budget)
    if backend not in ("local", "ray"):
        raise errors.UsageError(f"--backend {backend!r}: expected local or ray")
    model_path = Path(model)
    original_model = gir.load_model(model_path)
    ep = "cpu" if target == "cpu" else "cuda"
    samples = gdata.as_samples(original_model, data, batch=batch)
    if samples is None:
        raise errors.UsageError("tune needs DATA", hint="--data DATA.npz")
    held = gdata.as_samples(original_model, eval_data, batch=batch) if eval_data else None
    calib, evaluation, data_use = split_data(samples, held)
    out = Path(output) if output is not None else None
    if out is not None and not out.resolve().parent.is_dir():
        raise errors.UsageError(f"output folder does not exist: {out.parent}")
    base = out.parent if out else Path.cwd()
    work = Path(work_dir) if work_dir else base / ((out.name if out else model_path.stem) + ".tune")
    if backend == "ray" and gir.has_external_tensors(original_model):
        raise errors.UsageError(
            "--backend ray ships the model file to the workers, and this model keeps its "
            "weights in external data files",
            hint="use --backend local, or save the model as one file first",
        )
    exe = RayBackend(ray_address) if backend == "ray" else LocalBackend()
    # the original, run once on the evaluation feeds: the reference and its own metric value
    sess = runtime.make_session(model_path, ep=ep, optimize=True)
    reference = runtime.run_feeds(sess, evaluation.feeds)
    original_value = Budget.parse(f"{tb.metric}{tb.op}0").measure(reference, reference, evaluation)
    absolute = tb.resolve(original_value)
    original_misses = _original_misses(absolute, original_value, len(evaluation), tb)
    say(
        f"original: {tb.metric} {original_value:.6g} on {len(evaluation)} held-out feeds; "
        f"budget {absolute}"
    )
    if original_misses:
        say(f"warning: {original_misses}")
    store = Store(
        work,
        {
            "model": gir.file_sha256(model_path),
            "budget": absolute,
            "target": target,
            "data": data_use,
            "feeds": len(samples),
        },
    )
    (work / "calib-cache").mkdir(exist_ok=True)
    calib_npz, eval_npz = work / "calibration.npz", work / "evaluation.npz"
    save_samples(calib_npz, calib)
    save_samples(eval_npz, evaluation, reference)
    search = Search(
        model_path=model_path,
        original=sess,
        target=target,
        spec={
            "model": str(model_path),
            "calib": str(calib_npz),
            "eval": str(eval_npz),
            "judge": absolute,
            "target": target,
            "calib_cache": str(work / "calib-cache") if backend == "local" else None,
        },
        store=store,
        backend=exe,
        feed=evaluation.feeds[0],
        rounds=rounds,
        limit=limit,
        started=started,
        say=say,
        candidates=plan_candidates(model_facts(original_model), target, absolute),
    )
    try:
        phases(search, target, absolute)
    finally:
        exe.close()
    winner = final_runoff(search)
    candidates = search.candidates
    report = {
        "schema": TUNE_SCHEMA,
        "model": {"path": str(model_path), "sha256": gir.file_sha256(model_path)},
        "target": target,
        "backend": exe.name,
        "budget": {
            "given": budget,
            "absolute": absolute,
            "original": original_value,
            "original_meets": not original_misses,
        },
        "data": data_use,
        "seconds": time.perf_counter() - started,
        "time_limit": limit,
        "latency": {
            "ep": ep,
            "rounds": rounds,
            "runoff_rounds": 2 * rounds,
            "feed": "the first evaluation feed",
            "pays_below": {"lossy": PAYS, "float form": 1.0},
        },
        "winner": winner.to_dict() if winner else None,
        "winner_pipeline": winner.pipeline if winner else None,
        "nothing_pays": None if winner else _nothing_pays(candidates, absolute, original_misses),
        "pareto": [x.name for x in pareto_front(candidates)],
        "candidates": [x.to_dict() for x in candidates],
        "work": str(work),
        "environment": runtime.environment(),
    }
    if out is not None:
        if winner is not None:
            gir.save_model(gir.load_model(store.model_path(winner.name)), out, source=model_path)
        else:
            tmp = out.with_name(f".{out.name}.tmp")
            shutil.copyfile(model_path, tmp)
            os.replace(tmp, out)
        report["output"] = str(out)
    _write_reports(report, report_path, md_path, html_path)
    return TuneResult(winner, candidates, report, out)


def _write_reports(report: dict[str, Any], json_path: Any, md_path: Any, html_path: Any) -> None:
    from graphopt.bench.report import write_text
    from graphopt.core.report import write_json
    from graphopt.tune.report import html_page, markdown

    if json_path is not None:
        write_json(Path(json_path), report)
    if md_path is not None:
        write_text(Path(md_path), markdown(report))
    if html_path is not None:
        write_text(Path(html_path), html_page(report))


def _original_misses(absolute: str, value: float, feeds: int, given: TuneBudget) -> str:
    """What to tell a user whose absolute budget the original model itself does not meet on
    the held-out feeds (empty when it does): no candidate is likely to, and a budget relative
    to the original is what they meant."""
    from graphopt.accuracy.budget import Budget

    if Budget.parse(absolute).holds(value):
        return ""
    relative = f"{given.metric}{given.op}{'-' if given.op == '>=' else '+'}0.5pt"
    return (
        f"the original itself scores {given.metric} {value:.6g} on the {feeds} held-out "
        f"feeds, which misses the budget {absolute}; write the budget relative to the "
        f"original, e.g. --budget '{relative}' (at most half a point worse)"
    )


def _nothing_pays(candidates: Sequence[Candidate], budget: str, original_misses: str = "") -> str:
    if original_misses:
        return f"{original_misses}; the original is kept"
    met = [x for x in candidates if x.status == "slower"]
    if met:
        best = min(met, key=lambda x: x.ratio if x.ratio is not None else float("inf"))
        return (
            f"every candidate that meets {budget} is not faster than the original here "
            f"(best: {best.name} at {best.ratio:.3f}x); the original is kept"
        )
    if any(x.status == "over-budget" for x in candidates):
        return f"no candidate meets {budget} on the held-out data; the original is kept"
    if all(x.status == "skipped" for x in candidates):
        return "no candidate was tried (" + candidates[0].why + "); the original is kept"
    return "no candidate could be built; the original is kept"


__all__ = ["TuneResult", "parse_time", "tune"]

make_callable(__name__, tune)
