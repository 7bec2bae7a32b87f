"""``graphopt tune``: the fastest model that still meets the user's accuracy, found on the target.

The search builds candidates from the existing passes (:mod:`graphopt.tune_candidates`: the
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

import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from graphopt import errors
from graphopt import ir as gir
from graphopt.core.callable import make_callable
from graphopt.tune_build import (
    build_and_score,
    build_shipped,
    runoff,
    save_samples,
)
from graphopt.tune_candidates import (
    PRUNE_BELOW,
    PRUNE_RATIOS,
    Candidate,
    TuneBudget,
    model_facts,
    pareto_front,
    plan_candidates,
    split_data,
)

TUNE_SCHEMA = "graphopt.tune/1"
#: a lossy candidate must be at least this much faster than the original to be worth shipping;
#: the float form (the same arithmetic, cleaned up) only has to be faster
PAYS = 0.97


def _pays(cand: Candidate) -> float:
    return 1.0 if cand.family == "fp32" else PAYS


#: the fastest candidates within budget that meet again, together, for the final choice
RUNOFF = 4

Say = Callable[[str], None]


# ----------------------------------------------------------------------------- the store
class _Store:
    """Finished candidates of a tune, keyed by what decides their result (the model, DATA,
    budget and target, and each candidate's own pipeline and fallback budget), so a rerun of
    the same tune keeps them and a candidate whose definition changed is built again."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = folder
        self.key = _digest(key)
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, cand: Candidate) -> Path:
        own = _digest({"pipeline": cand.pipeline, "budget": cand.budget})[:8]
        return self.folder / f"{cand.name}.{self.key}.{own}.json"

    def model_path(self, name: str) -> Path:
        return self.folder / f"{name}.onnx"

    def load(self, cand: Candidate) -> dict[str, Any] | None:
        p = self._path(cand)
        if not p.is_file():
            return None
        rec = json.loads(p.read_text())
        timed = rec.get("status") in ("meets-budget", "slower", "winner")
        if timed and not self.model_path(cand.name).is_file():
            return None  # its model is gone: build it again
        return rec

    def save(self, cand: Candidate) -> None:
        from graphopt.core.report import write_json

        write_json(self._path(cand), cand.to_dict())


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- backends
def _stopped(limit: float) -> dict[str, Any]:
    return {"status": "skipped", "why": f"time limit ({limit:.0f} s) reached during its build"}


class _Local:
    """Builds candidates one after the other in a worker process, so the time limit can stop
    a build that is still running (a pruning + reconstruction build takes minutes). The worker
    is started once and reused; it is killed when the limit stops a build."""

    name = "local"

    def __init__(self) -> None:
        self._pool: Any = None
        self._pid = 0  # the worker's process id: a worker that dies fails its build

    def map(
        self, specs: list[dict[str, Any]], deadline: float, limit: float
    ) -> list[dict[str, Any]]:
        """Each spec's result (``build_and_score``), or why it stopped, in order."""
        import multiprocessing

        out = []
        for spec in specs:
            if time.perf_counter() >= deadline:  # no worker started only to be killed
                out.append(_stopped(limit))
                continue
            if self._pool is None:
                self._pool = multiprocessing.get_context("spawn").Pool(1)
                self._pid = self._pool.apply(os.getpid)
            job = self._pool.apply_async(build_and_score, (spec,))
            while not job.ready() and time.perf_counter() < deadline and self._alive():
                job.wait(min(1.0, max(0.0, deadline - time.perf_counter())))
            if job.ready():
                out.append(job.get())
                continue
            died = not self._alive()  # Pool would replace it and wait for the job forever
            self.close()
            Path(spec["output"]).unlink(missing_ok=True)
            out.append(
                {"status": "failed", "why": "its build's worker process died (out of memory?)"}
                if died
                else _stopped(limit)
            )
        return out

    def _alive(self) -> bool:
        import multiprocessing

        return any(p.pid == self._pid for p in multiprocessing.active_children())

    def close(self) -> None:
        """Stop the worker (a stopped build, or the end of the tune)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


class _Ray:
    """Builds the candidates of a phase as Ray tasks; inputs are shipped through Ray's
    object store, so the workers need no shared filesystem."""

    name = "ray"

    def __init__(self, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise errors.UsageError(
                "--backend ray needs Ray", hint="pip install 'graphopt[ray]'"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.task = ray.remote(build_shipped)
        self._shipped: dict[str, Any] = {}

    def close(self) -> None:
        """Ray stays up: it may be the user's cluster."""

    def _ref(self, path: str) -> Any:
        if path not in self._shipped:
            self._shipped[path] = self.ray.put(Path(path).read_bytes())
        return self._shipped[path]

    def map(
        self, specs: list[dict[str, Any]], deadline: float, limit: float
    ) -> list[dict[str, Any]]:
        refs = [
            self.task.remote(spec, *(self._ref(spec[k]) for k in ("model", "calib", "eval")))
            for spec in specs
        ]
        timeout = max(0.0, deadline - time.perf_counter())
        done, late = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in late:  # the time limit stops the builds still running
            self.ray.cancel(ref, force=True)
        finished = set(done)
        results = [self.ray.get(r) if r in finished else _stopped(limit) for r in refs]
        for spec, result in zip(specs, results, strict=True):
            data = result.pop("model_bytes", None)
            if data is not None:
                tmp = Path(spec["output"]).with_name(f".{Path(spec['output']).name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(spec["output"])
        return results


# ----------------------------------------------------------------------------- the search
@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` returns: the winner (None when nothing paid), every candidate, and
    the report."""

    winner: Candidate | None
    candidates: list[Candidate]
    report: dict[str, Any]
    output: Path | None


def parse_time(text: str | float | int) -> float:
    """``"20m"``, ``"90s"``, ``"1h"`` or seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([\d.]+)\s*([smh]?)\s*", text)
    if not m:
        raise errors.UsageError(f"--time {text!r}: expected e.g. 90s, 20m or 1h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


@dataclasses.dataclass
class _Search:
    """One tune's state: the candidates, where their files go, and the clock."""

    model_path: Path
    original: Any  # the original model's session on the target EP, built once
    target: str
    spec: dict[str, Any]  # what every build shares (calib, eval, judge, ...)
    store: _Store
    backend: Any
    feed: dict[str, Any]
    rounds: int
    limit: float
    started: float
    say: Say
    candidates: list[Candidate]

    @property
    def ep(self) -> str:
        return "cpu" if self.target == "cpu" else "cuda"

    def session(self, path: Path) -> Any:
        from graphopt import runtime

        return runtime.make_session(path, ep=self.ep, optimize=True)

    def get(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def run(self, batch: Sequence[Candidate]) -> None:
        """Build, score and (within budget) time the pending candidates of one phase: one by
        one here, all at once on Ray; the time limit stops a build still running."""
        todo = []
        for cand in batch:
            if cand.status != "pending":
                continue
            kept = self.store.load(cand)
            if kept is not None:
                for k, v in kept.items():
                    setattr(cand, k, v)
                self._before_runoff(cand)
                self.say(f"{cand.name}: kept from an earlier run ({cand.status})")
            else:
                todo.append(cand)
        chunks = [todo] if self.backend.name == "ray" else [[c] for c in todo]
        for chunk in chunks:
            if time.perf_counter() - self.started > self.limit:
                for cand in chunk:
                    cand.status, cand.why = "skipped", f"time limit ({self.limit:.0f} s) reached"
                continue
            specs = []
            for cand in chunk:
                self.say(f"{cand.name}: building {cand.pipeline}")
                specs.append(
                    {
                        **self.spec,
                        "pipeline": cand.pipeline,
                        "budget": cand.budget,
                        "float_form": cand.family == "fp32",
                        "output": str(self.store.model_path(cand.name)),
                    }
                )
            results = self.backend.map(specs, self.started + self.limit, self.limit)
            for cand, result in zip(chunk, results, strict=True):
                for k, v in result.items():
                    setattr(cand, k, v)
                if cand.status == "within-budget":
                    self._time(cand)
                if cand.why:
                    self.say(f"{cand.name}: {cand.why}")
                self.store.save(cand)

    def _time(self, cand: Candidate) -> None:
        path = self.store.model_path(cand.name)
        cand.ratio_rounds = runoff(self.original, [self.session(path)], self.feed, self.rounds)[0]
        cand.ratio = statistics.median(cand.ratio_rounds)
        if cand.ratio < _pays(cand):
            cand.status = "meets-budget"
            self.say(f"{cand.name}: accuracy {cand.accuracy:.6g}, latency {cand.ratio:.3f}x")
        else:
            cand.status = "slower"
            cand.why = f"{cand.ratio:.3f}x the original's latency: does not pay"

    @staticmethod
    def _before_runoff(cand: Candidate) -> None:
        """A kept candidate goes back to what its own paired rounds said: the runoff (and so
        the winner) is decided again, on this run's machine state."""
        if cand.status in ("winner", "slower") and cand.ratio_rounds:
            cand.ratio = statistics.median(cand.ratio_rounds)
            cand.runoff_rounds = []
            if cand.ratio < _pays(cand):
                cand.status, cand.why = "meets-budget", ""
            else:
                cand.status = "slower"
                cand.why = f"{cand.ratio:.3f}x the original's latency: does not pay"

    def skip(self, cand: Candidate, why: str) -> None:
        if cand.status == "pending":
            cand.status, cand.why = "skipped", why


def _phases(search: _Search, target: str, absolute: str) -> None:
    """The search: independent candidates, then what their results call for."""
    c = search.get
    prune = [c(f"prune-{r:g}") for r in PRUNE_RATIOS]
    below = c(f"prune-{PRUNE_BELOW:g}")
    second = ("int8-static-fallback", "int8-static-percentile", "int8-static-lean")
    first = [x for x in search.candidates if x.family != "prune" and x.name not in second]
    search.run([*first, prune[0]])
    # phase 2: int8 variants in the direction plain int8 calls for: more accurate ones when
    # it misses the budget, the leaner one (no SmoothQuant Muls) when it meets it
    int8 = c("int8-static")
    within = ("meets-budget", "slower", "within-budget")
    safer = [c("int8-static-fallback")] + ([c("int8-static-percentile")] if target == "cpu" else [])
    lean = [c("int8-static-lean")] if target == "cpu" else []
    later: list[Candidate] = []
    if int8.status in within:
        for x in safer:
            search.skip(x, "dominated: int8-static meets the budget with every node in int8")
        later = lean
        if int8.smoothed == 0:  # nothing to take out: the lean build would be the same model
            for x in lean:
                search.skip(x, "the same as int8-static: SmoothQuant smoothed no MatMul input")
            later = []
    elif int8.status == "failed" and "latency guard" in int8.why:
        for x in [*safer, *lean]:
            search.skip(x, "dominated: the latency guard found int8 does not pay on this model")
    else:
        for x in lean:
            search.skip(x, "dominated: int8-static, smoothed, already misses the budget")
        later = safer
    step2 = list(later)
    if prune[0].status in within:
        step2.append(prune[1])
        search.skip(below, f"{prune[0].name} met the budget")
    elif prune[0].status == "over-budget":
        step2.append(below)
    search.run(step2)
    # phase 3: a higher ratio while the lower one met the budget, then pruning + int8
    for lower, higher in itertools.pairwise(prune[1:]):
        if lower.status in within:
            search.run([higher])
    tried = [p for p in [below, *prune] if p.status in (*within, "over-budget")]
    best = max((p for p in tried if p.status in within), key=_ratio_of, default=None)
    over = [
        p for p in tried if p.status == "over-budget" and best and _ratio_of(p) > _ratio_of(best)
    ]
    if best is not None and over:  # one bisection step inside the bracket
        hi = min(over, key=_ratio_of)
        mid = round((_ratio_of(best) + _ratio_of(hi)) / 2, 2)
        if _ratio_of(hi) - _ratio_of(best) > 0.1:
            float_form = "cpu-fp32" if target == "cpu" else "cleanup"
            pipeline = f"cleanup,prune-channels{{ratio={mid:g}}},reconstruct,{float_form}"
            cand = Candidate(f"prune-{mid:g}", "prune", pipeline)
            search.candidates.append(cand)
            search.run([cand])
            if cand.status in within:
                best = cand
    for p in [below, *prune]:
        if p.status == "pending":
            failed = next((q for q in prune if q.status not in within), None)
            if failed is None:
                why = "not needed"
            elif failed.status == "over-budget":
                why = f"dominated: {failed.name} did not meet the budget"
            else:
                why = f"dominated: {failed.name} {failed.status} ({failed.why})"
            search.skip(p, why)
    if best is not None:
        ratio = best.name.split("-", 1)[1]
        int8_preset = "cpu-int8" if target == "cpu" else "cuda-int8"
        combo = Candidate(
            f"prune-{ratio}+int8",
            "prune+int8",
            f"cleanup,prune-channels{{ratio={ratio}}},reconstruct,{int8_preset}",
            budget=absolute,
        )
        search.candidates.append(combo)
        search.run([combo])
    for x in search.candidates:
        search.skip(x, "not reached")


def _ratio_of(cand: Candidate) -> float:
    """The pruning ratio of a ``prune-<ratio>`` candidate."""
    return float(cand.name.split("-", 1)[1])


def _evidence(cand: Candidate) -> float:
    """The latency ratio from every measurement of ``cand``: the geometric mean of the medians
    of its paired rounds and its runoff rounds (either alone when the other is missing)."""
    medians = [statistics.median(r) for r in (cand.ratio_rounds, cand.runoff_rounds) if r]
    return float(statistics.geometric_mean(medians))


def _runoff(search: _Search) -> Candidate | None:
    """The fastest few within budget, timed together again (twice the rounds); the fastest
    that still pays wins. One noisy measurement never picks the winner alone: a finalist's
    ratio is the geometric mean of its paired median and its runoff median, two measurements
    in different company (on a 2-core VM the same file moved by 5-10 % between them)."""
    paying = sorted(
        (x for x in search.candidates if x.status == "meets-budget" and x.ratio is not None),
        key=lambda x: x.ratio,  # type: ignore[arg-type, return-value]
    )
    finalists = paying[:RUNOFF]
    if finalists:  # a second, longer measurement, even of a lone finalist
        search.say("runoff: " + ", ".join(x.name for x in finalists))
        paths = [search.store.model_path(x.name) for x in finalists]
        sessions = [search.session(p) for p in paths]
        per = runoff(search.original, sessions, search.feed, 2 * search.rounds)
        for cand, rounds in zip(finalists, per, strict=True):
            cand.runoff_rounds = rounds
            cand.ratio = _evidence(cand)
            if cand.ratio >= _pays(cand):
                cand.status = "slower"
                cand.why = (
                    f"{cand.ratio:.3f}x the original's latency, paired and runoff rounds "
                    "together: does not pay"
                )
            search.store.save(cand)
        finalists = [x for x in finalists if x.status == "meets-budget"]
    if not finalists:
        return None
    winner = min(finalists, key=lambda x: x.ratio)  # type: ignore[arg-type, return-value]
    winner.status = "winner"
    search.store.save(winner)
    return winner


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
    exe = _Ray(ray_address) if backend == "ray" else _Local()
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
    store = _Store(
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
    search = _Search(
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
        _phases(search, target, absolute)
    finally:
        exe.close()
    winner = _runoff(search)
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
    from graphopt.tune_report import html_page, markdown

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


make_callable(__name__, tune)
