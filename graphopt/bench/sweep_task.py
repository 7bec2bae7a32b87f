"""The unit of work a sweep hands to its backends (local processes, inline, Ray), and how a
result a task could not store itself is stored: shared by the scheduler and every backend."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Protocol

from graphopt.bench.sweep_store import Store, log_tail
from graphopt.bench.sweep_worker import now
from graphopt.errors import EXIT_INTERNAL


@dataclasses.dataclass
class Task:
    """One unit of work for a backend: optimize a (model, pipeline) pair, or bench a cell."""

    kind: str  # "optimize" | "bench"
    key: str
    id: str
    spec: dict[str, Any]
    exclusive: bool  # runs with nothing else of the sweep running
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)  # Ray requests
    paths: list[Path] = dataclasses.field(default_factory=list)  # input files (Ray shipping)


class Backend(Protocol):
    name: str

    def submit(self, task: Task) -> None: ...

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        """Tasks that finished (their results are stored by then), waiting up to timeout."""
        ...

    def running(self) -> list[Task]: ...

    def cancel_all(self) -> None: ...

    def close(self) -> None: ...


def crash_result(task: Task, why: str, log: Path | None) -> dict[str, Any]:
    """The result of a task whose process died before storing one."""
    from graphopt.bench.sweep_worker import CELL_SCHEMA, OPTIMIZE_SCHEMA

    tail = log_tail(log) if log else ""
    message = why + (f"; last lines of {log}:\n{tail}" if tail else "")
    return {
        "schema": OPTIMIZE_SCHEMA if task.kind == "optimize" else CELL_SCHEMA,
        "key": task.key,
        "id": task.id,
        "definition": task.spec["definition"],
        "run_id": task.spec["run_id"],
        "status": "error",
        "error": {"type": "WorkerDied", "message": message, "exit_code": EXIT_INTERNAL},
        "finished": now(),
    }


def store_result(
    store: Store, task: Task, result: dict[str, Any], files: dict[str, bytes] | None
) -> None:
    """Persist a result the task could not store itself (crash, or a remote Ray worker)."""
    if task.kind == "optimize":
        if files:
            store.commit_optimized_files(task.key, result, files)
        else:
            store.commit_optimized(task.key, result, None)
    else:
        store.write_cell(result)


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
