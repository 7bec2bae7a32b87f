"""``graphopt sweep RECIPE.toml``: optimize and benchmark models × pipelines × EPs × batches.

How a sweep runs, and why:

* **Two phases.** First every (model, pipeline) pair is optimized once (``--jobs`` processes
  at a time; the optimized model is cached and shared by all of its EP/batch cells). Then the
  cells are benchmarked. No cell is timed while an optimization runs.
* **Quiet timing.** By default (``--bench-jobs 1``) each cell is benchmarked alone: one fresh
  process, nothing else of the sweep running. Parallel timing on shared cores changes
  latencies by more than most optimizations gain. ``--bench-jobs N`` trades that for speed;
  the report says which was used.
* **Paired ratios.** Each cell runs the optimized model interleaved round-robin with its
  original (``graphopt bench`` on the pair), so "× original" is a ratio of numbers taken at
  the same moment; it stays valid when a resumed sweep's cells were measured hours apart.
* **Passes that time the model** (qdq-insert's guard, assign-precision auto) make their
  decisions on this machine; pipelines holding them are optimized alone, not next to other
  optimizations.
* **Persistence.** Every finished cell and optimized model is stored atomically under a key
  hashed from its definition (:mod:`graphopt.bench.sweep_store`). A rerun skips finished
  cells (``--no-resume`` redoes all); failed and skipped cells run again; a changed
  definition gets a new key and runs.
* **Failures stay local.** A cell that fails (or whose process dies) is recorded with its
  error; the other cells go on; the sweep exits non-zero at the end.

Backends: ``local`` (subprocesses, :class:`LocalBackend`), ``ray`` (Ray tasks with per-cell
resource requests, :mod:`graphopt.bench.sweep_ray`), and ``inline`` (this process, serially;
for tests and debugging).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graphopt.bench.recipe import timing_passes
from graphopt.bench.recipe_model import Cell, OptimizeTask, Recipe
from graphopt.bench.sweep_local import InlineBackend, LocalBackend
from graphopt.bench.sweep_progress import Listener, ProgressDisplay, Quiet
from graphopt.bench.sweep_report import SCHEMA, build_report, cell_summary, failure_message
from graphopt.bench.sweep_store import Store
from graphopt.bench.sweep_task import (
    Backend,
    SweepOptions,
    Task,
    crash_result,
    default_jobs,
)
from graphopt.bench.sweep_worker import OPTIMIZED_NAME
from graphopt.errors import GraphoptError, UsageError

#: the sweep's API, some of it defined beside it (backends, progress, the report)
__all__ = [
    "BACKENDS",
    "SCHEMA",
    "CellsFailed",
    "InlineBackend",
    "LocalBackend",
    "ProgressDisplay",
    "Quiet",
    "SweepInterrupted",
    "SweepOptions",
    "Task",
    "build_report",
    "cell_summary",
    "default_jobs",
    "failure_message",
    "make_backend",
    "plan",
    "run_sweep",
]

BACKENDS = ("local", "ray", "inline")


class SweepInterrupted(GraphoptError):
    """The sweep was stopped (Ctrl-C, SIGTERM); finished cells are kept for a resume."""

    exit_code = 130


class CellsFailed(GraphoptError):
    """Some cells failed; the report lists them."""


# ----------------------------------------------------------------------------- planning


def _optimize_task(t: OptimizeTask, store: Store, run_id: str) -> Task:
    m, p = t.model, t.pipeline
    spec = {
        "kind": "optimize",
        "key": t.key,
        "id": t.id,
        "definition": t.definition,
        "run_id": run_id,
        "out": str(store.root),
        "model": str(m.path),
        "pipeline": p.normalized,
        "target": p.target,
        "budget": p.budget,
        "verify": p.verify,
        "verify_samples": p.verify_samples,
        "data": str(m.calib_data) if m.calib_data else None,
        "batch": m.calib_batch,
        "dims": m.dims,
    }
    paths = [m.path] + ([m.calib_data] if m.calib_data else [])
    return Task("optimize", t.key, t.id, spec, exclusive=bool(timing_passes(p)), paths=paths)


def _bench_task(cell: Cell, store: Store, run_id: str, exclusive: bool) -> Task:
    m = cell.model
    models = [str(m.path)]
    if cell.optimize_key is not None:
        models.append(str(store.optimized_dir(cell.optimize_key) / OPTIMIZED_NAME))
    s = m.bench
    spec = {
        "kind": "bench",
        "key": cell.key,
        "id": cell.id,
        "definition": cell.definition,
        "run_id": run_id,
        "out": str(store.root),
        "models": models,
        "optimize_key": cell.optimize_key,
        "settings": {
            "eps": [cell.ep],
            "batches": [cell.batch],
            "threads": s["threads"],
            "data": str(m.data) if m.data else None,
            "dims": m.dims,
            "warmup": s["warmup"],
            "repeat": s["repeat"],
            "rounds": s["rounds"],
            "seed": s["seed"],
            "metric": s["metric"],
            "samples": s["samples"],
        },
    }
    paths = [m.path] + ([m.data] if m.data else [])
    return Task("bench", cell.key, cell.id, spec, exclusive=exclusive, paths=paths)


def make_backend(options: SweepOptions, store: Store, recipe: Recipe) -> Backend:
    if options.backend == "local":
        return LocalBackend(store)
    if options.backend == "inline":
        return InlineBackend(store)
    if options.backend == "ray":
        from graphopt.bench.sweep_ray import RayBackend

        return RayBackend(store, recipe, options.ray_address, options.ray_shared_fs)
    raise UsageError(f"--backend: unknown backend '{options.backend}' (choose from local, ray)")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled, ``kill``) stops the sweep like Ctrl-C: workers are
    stopped and the report of what finished is written."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def plan(
    recipe: Recipe, store: Store, *, resume: bool
) -> tuple[set[str], list[Cell], list[OptimizeTask], set[str]]:
    """What a run does: (keys of kept cells, cells to measure, optimizations to run, keys of
    cached optimized models used).

    A cell is kept when its stored result is ok and, for an optimized model, measured the
    build stored now (a model rebuilt since, by a --no-resume run cut short say, may differ:
    passes that time the model decide on the machine's state). When a model is (re)built,
    all its cells are measured again. Failed and skipped cells always run again.
    """
    done_cells: set[str] = set()
    builds: dict[str, str] = {}  # optimize key -> run_id of the stored ok build
    if resume:
        for t in recipe.optimize_tasks:
            prev = store.read_optimized(t.key)
            if prev is not None and prev.get("status") == "ok":
                builds[t.key] = prev["run_id"]
        for cell in recipe.cells:
            prev = store.read_cell(cell.key)
            if prev is None or prev.get("status") != "ok":
                continue
            if cell.optimize_key and prev.get("optimize_run_id") != builds.get(cell.optimize_key):
                continue
            done_cells.add(cell.key)
    needed = {c.optimize_key for c in recipe.cells if c.key not in done_cells and c.optimize_key}
    rebuilt = needed - set(builds)
    todo = [c for c in recipe.cells if c.key not in done_cells or c.optimize_key in rebuilt]
    done_cells -= {c.key for c in todo}
    to_optimize = [t for t in recipe.optimize_tasks if t.key in rebuilt]
    return done_cells, todo, to_optimize, needed & set(builds)


def run_sweep(
    recipe: Recipe,
    options: SweepOptions,
    *,
    listener: Listener | None = None,
    write: Callable[[dict[str, Any]], list[Path]] | None = None,
) -> dict[str, Any]:
    """Run what is not finished yet, then build the report from every stored cell.

    ``write(report)`` writes the reports; it runs also when the sweep is interrupted (then
    with the cells finished so far) before :class:`SweepInterrupted` is raised.
    """
    if options.backend not in BACKENDS:
        raise UsageError(f"--backend: unknown backend '{options.backend}' (choose from local, ray)")
    if options.jobs < 1 or options.bench_jobs < 1:
        raise UsageError("--jobs and --bench-jobs must be at least 1")
    if options.backend != "ray" and options.ray_address:
        raise UsageError("--ray-address needs --backend ray")
    store = Store(options.out)
    store.create()
    with store.lock():
        return _run_locked(recipe, options, store, listener or Quiet(), write)


def _run_locked(
    recipe: Recipe,
    options: SweepOptions,
    store: Store,
    say: Listener,
    write: Callable[[dict[str, Any]], list[Path]] | None,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    t_start = time.perf_counter()

    # what is finished already
    done_cells, todo_cells, to_optimize, cached = plan(recipe, store, resume=options.resume)
    opt_tasks = [_optimize_task(t, store, run_id) for t in to_optimize]
    opt_tasks.sort(key=lambda t: t.exclusive)  # shared-machine work first, timing passes last
    exclusive_bench = options.bench_jobs == 1
    bench_tasks = [_bench_task(c, store, run_id, exclusive_bench) for c in todo_cells]
    from graphopt.bench.recipe import ray_request

    for t in opt_tasks:
        t.resources = ray_request(recipe, "optimize")
    for t, c in zip(bench_tasks, todo_cells, strict=True):
        t.resources = ray_request(recipe, c.ep, c.model.bench["threads"])

    info = {
        "cells": len(recipe.cells),
        "cells_to_run": len(bench_tasks),
        "cells_reused": len(done_cells),
        "optimize_to_run": len(opt_tasks),
        "optimize_reused": len(cached),
        "backend": options.backend,
        "jobs": options.jobs,
        "bench_jobs": options.bench_jobs,
        "out": str(store.root),
    }
    say.begin(info)
    interrupted = False
    backend: Backend | None = None
    try:
        with _sigterm_as_interrupt():
            if opt_tasks or bench_tasks:
                backend = make_backend(options, store, recipe)
                _schedule(backend, opt_tasks, bench_tasks, options, store, say)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if backend is not None:
            try:
                backend.close()
            except KeyboardInterrupt:
                interrupted = True
        say.end()
    report = build_report(
        recipe,
        store,
        run_id=run_id,
        options=options,
        seconds=time.perf_counter() - t_start,
        interrupted=interrupted,
    )
    if write is not None:
        report["written"] = [str(p) for p in write(report)]
    if interrupted:
        s = report["summary"]
        raise SweepInterrupted(
            f"sweep interrupted: {s['ok']} of {s['cells']} cells finished and kept in "
            f"{store.root}; run the same command again to resume"
        )
    return report


def _schedule(
    backend: Backend,
    opt_tasks: list[Task],
    bench_tasks: list[Task],
    options: SweepOptions,
    store: Store,
    say: Listener,
) -> None:
    """Start tasks as the rules allow (see the module doc) until all are finished."""
    opt_queue = list(opt_tasks)
    bench_queue = list(bench_tasks)
    failed_opt: dict[str, dict[str, Any]] = {}

    def startable() -> Task | None:
        running = backend.running()
        if any(t.exclusive for t in running):
            return None
        if opt_queue:
            head = opt_queue[0]
            busy = sum(t.kind == "optimize" for t in running)
            if head.exclusive:
                return opt_queue.pop(0) if not running else None
            return opt_queue.pop(0) if busy < options.jobs else None
        if any(t.kind == "optimize" for t in running) or not bench_queue:
            return None  # no cell is timed while an optimization runs
        head = bench_queue[0]
        if head.exclusive:
            return bench_queue.pop(0) if not running else None
        return bench_queue.pop(0) if len(running) < options.bench_jobs else None

    while opt_queue or bench_queue or backend.running():
        # cells whose optimized model could not be built fail without running
        for task in list(bench_queue):
            okey = task.spec.get("optimize_key")
            if okey in failed_opt:
                bench_queue.remove(task)
                err = failed_opt[okey].get("error") or {}
                result = crash_result(task, "", None)
                result["error"] = {
                    "type": "OptimizeFailed",
                    "message": f"optimize {failed_opt[okey]['id']} failed: "
                    f"{err.get('message', '?')}",
                    "exit_code": err.get("exit_code", 1),
                }
                store.write_cell(result)
                say.finished(task, result)
        while (task := startable()) is not None:
            okey = task.spec.get("optimize_key")
            if okey:  # which build of the optimized model this cell measures
                task.spec["optimize_run_id"] = (store.read_optimized(okey) or {}).get("run_id")
            backend.submit(task)
            say.started(task)
        for task, result in backend.wait(0.25):
            if task.kind == "optimize" and result.get("status") != "ok":
                failed_opt[task.key] = result
            say.finished(task, result)
