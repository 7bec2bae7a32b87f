"""The work of one sweep task (optimize a model, or benchmark one cell), in its own process.

Every task runs in a fresh process (a local subprocess, ``python -m graphopt.bench.sweep_worker``,
or a Ray worker that runs one task and exits) so that:

* a crash in ONNX Runtime (a segfault, the OOM killer) loses one cell, not the sweep;
* memory numbers (RSS growth while building a session, peak RSS) are not polluted by the
  arenas and caches of earlier cells;
* every cell starts from the same state (no warm caches from the previous cell).

A task's outcome is a plain dict (``status`` ok / error / skipped); user-caused failures keep
their graphopt exit code and message, anything else is recorded as an internal error with its
traceback in the task's log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

CELL_SCHEMA = "graphopt.sweep.cell/1"
OPTIMIZE_SCHEMA = "graphopt.sweep.optimize/1"
OPTIMIZED_NAME = "optimized.onnx"
NO_EP = "no execution provider could run"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def error_record(exc: BaseException) -> dict[str, Any]:
    """One failure as data: graphopt errors keep their exit code; others are internal (70)."""
    from graphopt import errors

    if isinstance(exc, errors.GraphoptError):
        return {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
    return {
        "type": type(exc).__name__,
        "message": f"internal error: {type(exc).__name__}: {exc}",
        "exit_code": errors.EXIT_INTERNAL,
        "traceback": traceback.format_exc(),
    }


def _base(spec: dict[str, Any], schema: str) -> dict[str, Any]:
    return {
        "schema": schema,
        "key": spec["key"],
        "id": spec["id"],
        "definition": spec["definition"],
        "run_id": spec["run_id"],
        "status": "running",
        "error": None,
        "started": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


# ----------------------------------------------------------------------------- optimize


def optimize_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of an optimize report the sweep tables show."""
    before, after = report.get("before", {}), report.get("after", {})
    verify = report.get("verify", {})
    final = verify.get("final_vs_reference") or {}
    return {
        "pipeline": report.get("pipeline"),
        "seconds": report.get("seconds"),
        "nodes": [before.get("nodes"), after.get("nodes")],
        "serialized_bytes": [before.get("serialized_bytes"), after.get("serialized_bytes")],
        "file_bytes": report.get("output", {}).get("bytes"),
        "verify": {
            "enabled": verify.get("enabled"),
            "feeds": verify.get("feeds"),
            "max_abs": final.get("max_abs"),
            "cosine": final.get("cosine"),
        },
        # what the passes decided (fusion, nodes kept float, the int8 latency guard's verdict)
        "notes": [
            f"{rec['pass']}: {note}"
            for rec in report.get("passes", [])
            for note in rec.get("notes", [])
        ],
    }


def run_optimize_task(spec: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Optimize ``spec['model']`` into ``dest/optimized.onnx`` through ``graphopt.optimize``
    (the code of ``graphopt optimize``); writes ``dest/report.json``; returns the result."""
    from graphopt.optimize import optimize

    result = _base(spec, OPTIMIZE_SCHEMA)
    t0 = time.perf_counter()
    try:
        report = optimize(
            Path(spec["model"]),
            spec["pipeline"],
            output=dest / OPTIMIZED_NAME,
            report_path=dest / "report.json",
            data=spec.get("data"),
            target=spec.get("target", "cpu"),
            verify=spec.get("verify", True),
            dims=tuple(f"{k}={v}" for k, v in spec.get("dims", {}).items()),
            verify_samples=spec.get("verify_samples", 4),
            batch=spec.get("batch", 1),
            budget=spec.get("budget"),
        ).report
        result["status"] = "ok"
        result["summary"] = optimize_summary(report)
        result["files"] = sorted(p.name for p in dest.iterdir() if p.name != "result.json")
    except Exception as exc:
        result["status"] = "error"
        result["error"] = error_record(exc)
    result["seconds"] = time.perf_counter() - t0
    result["finished"] = now()
    return result


# ----------------------------------------------------------------------------- bench


def run_bench_task(spec: dict[str, Any], models: list[Path] | None = None) -> dict[str, Any]:
    """Benchmark one cell: the optimized model interleaved with its original (one EP, one
    batch), through :func:`graphopt.bench.harness.run_bench`."""
    from graphopt.bench.harness import BenchSettings, ep_unavailable, run_bench
    from graphopt.errors import RuntimeFailure

    result = _base(spec, CELL_SCHEMA)
    result["optimize_run_id"] = spec.get("optimize_run_id")
    t0 = time.perf_counter()
    s = dict(spec["settings"])
    paths = models or [Path(p) for p in spec["models"]]
    settings = BenchSettings(models=paths, **s)
    try:
        why = ep_unavailable(settings.eps[0])
        if why is not None:
            result["status"] = "skipped"
            result["reason"] = why
        else:
            log = lambda msg: print(msg, flush=True)  # noqa: E731  (goes to the task's log)
            result["bench"] = run_bench(settings, log=log)
            result["status"] = "ok"
    except RuntimeFailure as exc:
        if str(exc).startswith(NO_EP):  # the EP is listed but cannot run here: a skip row
            result["status"] = "skipped"
            result["reason"] = str(exc)
        else:
            result["status"] = "error"
            result["error"] = error_record(exc)
    except Exception as exc:
        result["status"] = "error"
        result["error"] = error_record(exc)
    if result.get("error") and result["error"].get("traceback"):
        print(result["error"]["traceback"], file=sys.stderr, flush=True)
    result["seconds"] = time.perf_counter() - t0
    result["finished"] = now()
    return result


# ----------------------------------------------------------------------------- local process


def _watch_parent() -> None:
    """Exit when the sweep that started us is gone (killed with SIGKILL, say): an orphan
    would keep a core busy and disturb the timing of the resumed sweep."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    """``python -m graphopt.bench.sweep_worker`` < SPEC.json: run one task, store its result
    in the sweep's output folder (atomically), exit 0 once it is stored."""
    from graphopt.bench.sweep_store import Store

    _watch_parent()
    spec = json.loads(sys.stdin.read())
    store = Store(Path(spec["out"]))
    if spec["kind"] == "optimize":
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec['key']}-", dir=store.optimized_root))
        try:
            result = run_optimize_task(spec, tmp)
            store.commit_optimized(spec["key"], result, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        result = run_bench_task(spec)
        store.write_cell(result)
    print(f"{spec['kind']} {spec['id']}: {result['status']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
