"""The Ray backend of ``graphopt sweep``: every task a Ray task, with its own resource request.

* ``--ray-address ADDR`` connects to a running cluster; without it a local Ray instance is
  started (or the one this process already initialized is used) and shut down at the end.
* Each task asks for the resources of its group in the recipe's ``[ray]`` table (``optimize``,
  ``cpu``, ``cuda``, ``tensorrt``; defaults in :func:`graphopt.bench.recipe.ray_request`), so
  a CUDA cell lands on a node with a free GPU and CPU cells do not share cores.
* ``max_calls=1``: a Ray worker process runs one task and exits, so cells start fresh as with
  the local backend (memory numbers, crash isolation).
* On a cluster (``--ray-address``) nodes need not share a filesystem: models, DATA and the
  optimized models travel through Ray's object store, and results (optimized models too) come
  back to this process, which stores them in ``--out`` exactly like the local backend does.
  With a local instance, or ``--ray-shared-fs``, tasks read the input files in place.
* The scheduling rules (optimizations first, ``--jobs``; cells after, ``--bench-jobs``) are
  the same as local: this process enforces them.
* Python code named by the recipe (``python:module:function`` metrics) must be importable on
  the workers; with a local instance the workers get this process's ``sys.path``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from graphopt.bench.recipe_model import Recipe, data_files, model_files
from graphopt.bench.sweep_store import Store
from graphopt.bench.sweep_task import Task, crash_result, store_result
from graphopt.bench.sweep_worker import OPTIMIZED_NAME
from graphopt.errors import GraphoptError, UsageError

Files = dict[str, bytes]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--backend ray needs Ray: pip install 'graphopt[ray]' (or 'ray[default]')"
        ) from None
    return ray


def read_files(paths: list[Path], root: Path) -> Files:
    """``{path relative to root: bytes}`` for shipping through the object store."""
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def write_files(files: Files, root: Path) -> None:
    for rel, blob in files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root.resolve()):
            raise GraphoptError(f"refusing to write shipped file outside {root}: {rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)


def _ray_task(spec: dict[str, Any], roles: list[str], *blobs: Files) -> tuple[Any, ...]:
    """Runs on a Ray worker: materialize shipped files, run the task, return its result,
    the optimized model's files (when shipped) and what the task printed."""
    from graphopt.bench.sweep_worker import run_bench_task, run_optimize_task

    spec = dict(spec)
    out = io.StringIO()
    tmp = Path(tempfile.mkdtemp(prefix="graphopt-ray-"))
    try:
        for role, files in zip(roles, blobs, strict=True):
            folder = tmp / role
            write_files(files, folder)
            main = folder / next(iter(files))
            if role == "model":
                if spec["kind"] == "optimize":
                    spec["model"] = str(main)
                else:
                    spec["models"] = [str(main), *spec["models"][1:]]
            elif role == "data":
                where = folder / Path(spec["data_rel"]) if spec.get("data_rel") else main
                if spec["kind"] == "optimize":
                    spec["data"] = str(where)
                else:
                    spec["settings"] = dict(spec["settings"], data=str(where))
            elif role == "optimized":
                spec["models"] = [spec["models"][0], str(folder / OPTIMIZED_NAME)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if spec["kind"] == "optimize":
                dest = tmp / "out"
                dest.mkdir()
                result = run_optimize_task(spec, dest)
                files = (
                    read_files(
                        [p for p in dest.iterdir() if p.is_file()],
                        dest,
                    )
                    if result["status"] == "ok"
                    else {}
                )
                return result, files, out.getvalue()
            return run_bench_task(spec), {}, out.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RayBackend:
    name = "ray"

    def __init__(
        self, store: Store, recipe: Recipe, address: str | None, shared_fs: bool | None = None
    ) -> None:
        ray = import_ray()
        self.ray = ray
        self.store = store
        self.started = False
        # ship files through the object store unless the paths are valid on every node
        self.ship = (address is not None) if shared_fs is None else not shared_fs
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
            if address is None:
                paths = [os.getcwd() if p == "" else p for p in sys.path]
                kwargs["runtime_env"] = {
                    "env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
                }
            try:
                ray.init(address=address, **kwargs)
            except Exception as exc:  # ConnectionError, RuntimeError, ...
                where = f"Ray at {address}" if address else "a local Ray instance"
                raise GraphoptError(f"cannot start or reach {where}: {exc}") from None
            self.started = True
        self.remote = ray.remote(max_calls=1)(_ray_task)
        self.refs: dict[Any, Task] = {}
        self.blobs: dict[tuple[str, str], Any] = {}

    def _blob(self, kind: str, path: Path) -> Any:
        """An object ref of the files of a model, DATA or optimized model (put once)."""
        key = (kind, str(path))
        if key not in self.blobs:
            if kind == "model":
                from graphopt import ir as gir

                files = model_files(path, gir.read_proto(path))
                root = path.parent
            elif kind == "data":
                files = data_files(path)
                root = path if path.is_dir() else path.parent
            else:  # an optimized model's folder
                files = [
                    p
                    for p in sorted(path.iterdir())
                    if p.is_file() and p.name not in ("result.json", "report.json")
                ]
                root = path
            self.blobs[key] = self.ray.put(read_files(files, root))
        return self.blobs[key]

    def _shipped(self, task: Task) -> tuple[dict[str, Any], list[str], list[Any]]:
        spec = dict(task.spec)
        if not self.ship:
            return spec, [], []
        roles, refs = ["model"], [self._blob("model", task.paths[0])]
        data = task.paths[1] if len(task.paths) > 1 else None
        if data is not None:
            roles.append("data")
            refs.append(self._blob("data", data))
            spec["data_rel"] = "" if not data.is_dir() else "."
        if task.kind == "bench" and spec.get("optimize_key"):
            roles.append("optimized")
            refs.append(self._blob("optimized", self.store.optimized_dir(spec["optimize_key"])))
        return spec, roles, refs

    def submit(self, task: Task) -> None:
        spec, roles, refs = self._shipped(task)
        opts = {k: v for k, v in task.resources.items() if k != "resources"}
        if task.resources.get("resources"):
            opts["resources"] = task.resources["resources"]
        ref = self.remote.options(**opts).remote(spec, roles, *refs)
        self.refs[ref] = task

    def running(self) -> list[Task]:
        return list(self.refs.values())

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:  # everything else that is ready too
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        out = []
        for ref in ready:
            task = self.refs.pop(ref)
            files: Files = {}
            try:
                result, files, printed = self.ray.get(ref)
                self.store.log_path(task.key).write_text(printed, encoding="utf-8")
            except Exception as exc:  # the worker died, the node went away, ...
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                why = f"the Ray task failed: {type(exc).__name__}: {first}"
                result = crash_result(task, why, None)
            if task.kind == "optimize" and result.get("status") == "ok" and not files:
                result = dict(result, status="error")
                result["error"] = {
                    "type": "WorkerDied",
                    "message": "the Ray task returned no model files",
                    "exit_code": 70,
                }
            store_result(self.store, task, result, files or None)
            out.append((task, result))
        return out

    def cancel_all(self) -> None:
        for ref in list(self.refs):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self.refs.clear()

    def close(self) -> None:
        self.cancel_all()
        if self.started:
            self.ray.shutdown()
            self.started = False
