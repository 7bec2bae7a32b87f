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

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from graphopt.bench.recipe import Cell, OptimizeTask, Recipe, timing_passes
from graphopt.bench.sweep_store import Store
from graphopt.bench.sweep_task import Backend, Task, crash_result, store_result
from graphopt.bench.sweep_worker import OPTIMIZED_NAME, now
from graphopt.errors import GraphoptError, UsageError

SCHEMA = "graphopt.sweep/1"
BACKENDS = ("local", "ray", "inline")


def default_jobs() -> int:
    """Optimize processes at a time: half the cores (2 at least, 4 at most, never more than
    the cores), leaving room for the ONNX Runtime threads each optimization starts."""
    cores = os.cpu_count() or 2
    return max(1, min(cores, max(2, min(4, cores // 2))))


@dataclasses.dataclass
class SweepOptions:
    out: Path
    jobs: int = dataclasses.field(default_factory=default_jobs)
    bench_jobs: int = 1
    backend: str = "local"
    ray_address: str | None = None
    ray_shared_fs: bool | None = None  # None: ship files when ray_address is given
    resume: bool = True


class SweepInterrupted(GraphoptError):
    """The sweep was stopped (Ctrl-C, SIGTERM); finished cells are kept for a resume."""

    exit_code = 130


class CellsFailed(GraphoptError):
    """Some cells failed; the report lists them."""


class Listener(Protocol):
    def begin(self, plan: dict[str, Any]) -> None: ...

    def started(self, task: Task) -> None: ...

    def finished(self, task: Task, result: dict[str, Any]) -> None: ...

    def end(self) -> None: ...


class _Quiet:
    def begin(self, plan: dict[str, Any]) -> None:
        pass

    def started(self, task: Task) -> None:
        pass

    def finished(self, task: Task, result: dict[str, Any]) -> None:
        pass

    def end(self) -> None:
        pass


# ----------------------------------------------------------------------------- backends


class LocalBackend:
    """Each task in its own ``python -m graphopt.bench.sweep_worker`` process."""

    name = "local"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.procs: dict[str, tuple[Task, subprocess.Popen[bytes], Any]] = {}
        # workers import what this process imports (e.g. python:module:function metrics)
        paths = [os.getcwd() if p == "" else p for p in sys.path]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))

    def submit(self, task: Task) -> None:
        log = open(self.store.log_path(task.key), "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "graphopt.bench.sweep_worker"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches the sweep, which stops its workers
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(task.spec).encode())
        proc.stdin.close()
        self.procs[task.key] = (task, proc, log)

    def running(self) -> list[Task]:
        return [t for t, _, _ in self.procs.values()]

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            done = []
            for key, (task, proc, log) in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del self.procs[key]
                done.append((task, self._result(task, code)))
            if done or time.monotonic() >= deadline or not self.procs:
                return done
            time.sleep(0.05)

    def _result(self, task: Task, code: int) -> dict[str, Any]:
        if task.kind == "optimize":
            result = self.store.read_optimized(task.key)
        else:
            result = self.store.read_cell(task.key)
        if result is not None and result.get("run_id") == task.spec["run_id"]:
            return result
        why = (
            f"the task's process was killed by signal {-code}"
            if code < 0
            else f"the task's process exited with code {code} before storing a result"
        )
        result = crash_result(task, why, self.store.log_path(task.key))
        store_result(self.store, task, result, None)
        return result

    def cancel_all(self) -> None:
        for _, proc, _ in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc, log in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            log.close()
        self.procs.clear()

    def close(self) -> None:
        self.cancel_all()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the worker and anything it started
    except (ProcessLookupError, PermissionError):
        pass


class InlineBackend:
    """Tasks run here, one after the other (no isolation; for tests and debugging)."""

    name = "inline"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: list[Task] = []

    def submit(self, task: Task) -> None:
        self.queue.append(task)

    def running(self) -> list[Task]:
        return list(self.queue)

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        import shutil
        import tempfile

        from graphopt.bench.sweep_worker import run_bench_task, run_optimize_task

        out = []
        while self.queue:
            task = self.queue.pop(0)
            if task.kind == "optimize":
                tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.store.optimized_root))
                try:
                    result = run_optimize_task(task.spec, tmp)
                    self.store.commit_optimized(task.key, result, tmp)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                result = run_bench_task(task.spec)
                self.store.write_cell(result)
            out.append((task, result))
        return out

    def cancel_all(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        self.queue.clear()


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
        return _run_locked(recipe, options, store, listener or _Quiet(), write)


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


# ----------------------------------------------------------------------------- report


def _rows(bench: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(original row, optimized row) of a cell's bench report."""
    if not bench:
        return None, None
    rows = {r["model_index"]: r for r in bench.get("results", [])}
    return rows.get(0), rows.get(1)


def cell_summary(cell: Cell, result: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": cell.key,
        "id": cell.id,
        "model": cell.model.name,
        "pipeline": cell.pipeline.name,
        "pipeline_text": cell.pipeline.normalized or "none",
        "ep": cell.ep,
        "batch": cell.batch,
        "optimize_key": cell.optimize_key,
        "definition": cell.definition,
    }
    if result is None:
        out["status"] = "pending"
        return out
    bench = result.get("bench")
    original, optimized = _rows(bench)
    out.update(
        status=result.get("status"),
        reason=result.get("reason"),
        error=result.get("error"),
        reused=result.get("run_id") != run_id,
        run_id=result.get("run_id"),
        started=result.get("started"),
        finished=result.get("finished"),
        seconds=result.get("seconds"),
        host=result.get("host"),
    )
    if bench:
        eps = bench.get("eps") or [{}]
        out["providers"] = eps[0].get("providers")
        out["inputs"] = bench.get("inputs")
        out["machine"] = bench.get("machine")
        out["memory"] = bench.get("memory")
        out["row"] = optimized if cell.optimize_key else original
        out["original"] = original if cell.optimize_key else None
    return out


def build_report(
    recipe: Recipe,
    store: Store,
    *,
    run_id: str,
    options: SweepOptions,
    seconds: float,
    interrupted: bool,
) -> dict[str, Any]:
    """The sweep report (schema ``graphopt.sweep/1``) from the stored results of the recipe's
    cells; results stored under other keys (older definitions) are not part of it."""
    from graphopt.bench.machine import machine

    cells = [cell_summary(c, store.read_cell(c.key), run_id) for c in recipe.cells]
    optimized = []
    for t in recipe.optimize_tasks:
        res = store.read_optimized(t.key) or {}
        optimized.append(
            {
                "key": t.key,
                "id": t.id,
                "model": t.model.name,
                "pipeline": t.pipeline.name,
                "pipeline_text": t.pipeline.normalized,
                "target": t.pipeline.target,
                "status": res.get("status", "pending"),
                "error": res.get("error"),
                "reused": bool(res) and res.get("run_id") != run_id,
                "seconds": res.get("seconds"),
                "summary": res.get("summary"),
                "timing_passes": timing_passes(t.pipeline),
                "path": str(store.optimized_dir(t.key) / OPTIMIZED_NAME),
                "report": str(store.optimized_dir(t.key) / "report.json"),
                "definition": t.definition,
            }
        )
    counts = {
        s: sum(c["status"] == s for c in cells) for s in ("ok", "error", "skipped", "pending")
    }
    timing = (
        "each cell alone (one process, no other sweep work running)"
        if options.bench_jobs == 1
        else f"up to {options.bench_jobs} cells at a time (latencies disturb each other)"
    )
    return {
        "schema": SCHEMA,
        "created": now(),
        "recipe": recipe.to_dict(),
        "machine": machine(),
        "run": {
            "run_id": run_id,
            "backend": options.backend,
            "ray_address": options.ray_address,
            "jobs": options.jobs,
            "bench_jobs": options.bench_jobs,
            "resume": options.resume,
            "out": str(store.root),
            "seconds": seconds,
            "interrupted": interrupted,
            "timing": (
                f"optimizations: up to {options.jobs} at a time, pipelines with passes that time "
                f"the model alone; benchmarks after all optimizations, {timing}; every cell runs "
                "its optimized model interleaved round-robin with the original, so × original is "
                "a paired per-round ratio"
            ),
        },
        "summary": {
            "cells": len(cells),
            **counts,
            "reused": sum(bool(c.get("reused")) for c in cells),
            "hosts": sorted({c["host"] for c in cells if c.get("host")}),
        },
        "optimized": optimized,
        "cells": cells,
    }


def failure_message(report: dict[str, Any]) -> str | None:
    """One line naming the failed cells, or None when none failed."""
    bad = [c for c in report["cells"] if c["status"] == "error"]
    bad_opt = [o for o in report["optimized"] if o["status"] == "error"]
    skipped = [c for c in report["cells"] if c["status"] == "skipped"]
    if not bad and skipped and len(skipped) == len(report["cells"]):
        # as graphopt bench: a skipped EP is a note, but a sweep that measured nothing fails
        return f"no cell could run: all {len(skipped)} were skipped ({skipped[0]['reason']})"
    if not bad:
        return None
    first = bad[0]["error"] or {}
    msg = str(first.get("message", "?")).splitlines()[0]
    where = f" (reports: {', '.join(report.get('written', []))})" if report.get("written") else ""
    extra = f"; {len(bad_opt)} optimization(s) failed" if bad_opt else ""
    return (
        f"{len(bad)} of {len(report['cells'])} cells failed{extra}; first: {bad[0]['id']}: "
        f"{msg}{where}"
    )


# ----------------------------------------------------------------------------- progress


class ProgressDisplay:
    """Bars for optimizations and cells with the tasks running now (on a terminal), or one
    line per finished task (in logs and pipes)."""

    def __init__(self, console: Any, *, live: bool) -> None:
        self.console = console
        self.live = live
        self.progress: Any = None
        self.bars: dict[str, Any] = {}
        self.running: dict[str, str] = {}
        self.count = {"optimize": 0, "bench": 0}
        self.total = {"optimize": 0, "bench": 0}

    def begin(self, plan: dict[str, Any]) -> None:
        self.total = {"optimize": plan["optimize_to_run"], "bench": plan["cells_to_run"]}
        self.console.print(
            f"sweep: {plan['cells']} cells, {plan['cells_reused']} finished earlier, "
            f"{plan['cells_to_run']} to run; {plan['optimize_to_run']} model(s) to optimize "
            f"({plan['optimize_reused']} cached); backend {plan['backend']}, "
            f"{plan['jobs']} optimize job(s), {plan['bench_jobs']} bench job(s); "
            f"results in {plan['out']}",
            markup=False,
            soft_wrap=True,
        )
        if not self.live:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.fields[label]:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.progress.__enter__()
        for kind, label in (("optimize", "optimize"), ("bench", "cells")):
            self.bars[kind] = self.progress.add_task(
                "",
                total=self.total[kind] or 1,
                completed=0 if self.total[kind] else 1,
                label=label,
            )

    def _refresh(self) -> None:
        if self.progress is None:
            return
        for kind, bar in self.bars.items():
            now_running = [i for k, i in self.running.items() if k.startswith(kind + ":")]
            self.progress.update(bar, description=", ".join(now_running)[:80])

    def started(self, task: Task) -> None:
        self.running[f"{task.kind}:{task.key}"] = task.id
        self._refresh()

    def finished(self, task: Task, result: dict[str, Any]) -> None:
        self.running.pop(f"{task.kind}:{task.key}", None)
        self.count[task.kind] += 1
        line = f"[{self.count[task.kind]}/{self.total[task.kind]}] {task.kind} {task.id}: "
        status = result.get("status")
        if status == "ok" and task.kind == "bench":
            line += _cell_line(result)
        elif status == "ok":
            line += f"ok ({result.get('seconds', 0):.1f} s)"
        elif status == "skipped":
            line += f"skipped ({result.get('reason')})"
        else:
            line += (
                "FAILED: " + str((result.get("error") or {}).get("message", "?")).splitlines()[0]
            )
        if self.progress is not None:
            self.progress.advance(self.bars[task.kind])
            self._refresh()
            if status != "ok":
                self.progress.console.print(line, markup=False, soft_wrap=True)
        else:
            self.console.print(line, markup=False, soft_wrap=True)

    def end(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None


def _cell_line(result: dict[str, Any]) -> str:
    original, optimized = _rows(result.get("bench"))
    row = optimized or original
    if row is None:
        return "ok"
    text = f"ok p50 {row['latency_ms']['p50']:.4g} ms"
    if optimized is not None:
        text += f" (× {row['ratio_to_reference']['median']:.3g} original)"
    return text
