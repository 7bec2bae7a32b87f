"""The tune's job engine: where finished candidates are kept (a killed tune resumes) and
who builds them (a local worker process the time limit can stop, or Ray tasks)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from graphopt import errors
from graphopt.tune.build import (
    build_and_score,
    build_shipped,
)
from graphopt.tune.candidates import (
    Candidate,
)


# ----------------------------------------------------------------------------- the store
class Store:
    """Finished candidates of a tune, keyed by what decides their result (the model, DATA,
    budget and target, and each candidate's own pipeline and fallback budget), so a rerun of
    the same tune keeps them and a candidate whose definition changed is built again."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = folder
        self.key = digest(key)
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, cand: Candidate) -> Path:
        own = digest({"pipeline": cand.pipeline, "budget": cand.budget})[:8]
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


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- backends
def stopped(limit: float) -> dict[str, Any]:
    return {"status": "skipped", "why": f"time limit ({limit:.0f} s) reached during its build"}


class LocalBackend:
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
                out.append(stopped(limit))
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
                else stopped(limit)
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


class RayBackend:
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
        results = [self.ray.get(r) if r in finished else stopped(limit) for r in refs]
        for spec, result in zip(specs, results, strict=True):
            data = result.pop("model_bytes", None)
            if data is not None:
                tmp = Path(spec["output"]).with_name(f".{Path(spec['output']).name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(spec["output"])
        return results
