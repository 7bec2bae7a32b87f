"""The sweep's local backends: one subprocess per task on this machine (``local``), or this
process, serially (``inline``, for tests and debugging)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from graphopt.bench.sweep_store import Store
from graphopt.bench.sweep_task import Task, crash_result, store_result


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
