"""Sweep recipes: a TOML file naming models × pipelines × EPs × batch sizes for ``graphopt sweep``.

The whole recipe is checked before any work starts (unknown keys, wrong types, missing or
corrupt model and data files, bad pipeline text with the pass name and column, a metric that
needs labels without DATA, a batch size the model cannot take), so a typo fails in a second
with exit code 2 or 3 instead of an hour into a sweep.

Pipelines are written exactly as ``graphopt optimize -p`` takes them (no second dialect);
``""`` or ``"none"`` means the model as is. Relative paths are relative to the recipe file.

Each cell and each optimized model gets a key: a hash of its *definition* (the contents of the
model and data files, the normalized pipeline text and every setting that changes the result,
not names or file locations). A finished cell whose key is unchanged is not run again; a
changed definition gives a new key, so that cell runs again.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import graphopt
from graphopt.errors import DataError, GraphoptError, ModelError, PipelineError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from graphopt.bench.recipe_model import (
    BENCH_DEFAULTS,
    EPS,
    MODEL_KEYS,
    NONE_PIPELINES,
    PIPELINE_KEYS,
    RAY_GROUPS,
    RAY_KEYS,
    SWEEP_KEYS,
    TOP_KEYS,
    Cell,
    ModelEntry,
    OptimizeTask,
    PipelineEntry,
    Recipe,
    data_files,
    digest,
    files_sha256,
    model_files,
)

# ----------------------------------------------------------------------------- parsing


class _Checker:
    """Type checks with messages that name the recipe, the table and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(
        self, where: str, message: str, cls: type[GraphoptError] = UsageError
    ) -> GraphoptError:
        return cls(f"recipe {self.path}: {where}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                known = ", ".join(sorted(allowed))
                raise self.fail(where, f"unknown key '{key}'{hint}; known keys: {known}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a table, got {_tname(value)}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {_tname(value)}")
        return value

    def integer(self, value: Any, where: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {_tname(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(where, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise self.fail(where, f"expected a number >= 0, got {value!r}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_tname(value)}")
        return value

    def choice(self, value: Any, where: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, where)
        if text not in choices:
            raise self.fail(where, f"unknown value '{text}' (choose from {', '.join(choices)})")
        return text

    def int_list(self, value: Any, where: str) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"expected a non-empty list of integers, got {value!r}")
        out = [self.integer(v, where, minimum=1) for v in value]
        return list(dict.fromkeys(out))

    def ep_list(self, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"expected a non-empty list of EPs, got {value!r}")
        return list(dict.fromkeys(self.choice(v, where, EPS) for v in value))


def _tname(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _bench_settings(chk: _Checker, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        w = f"{where} {key}"
        if key == "eps":
            out[key] = chk.ep_list(value, w)
        elif key == "batches":
            out[key] = chk.int_list(value, w)
        elif key == "threads":
            out[key] = chk.integer(value, w, minimum=1)
        elif key in ("warmup", "samples"):
            out[key] = chk.integer(value, w, minimum=0)
        elif key in ("repeat", "rounds"):
            out[key] = chk.integer(value, w, minimum=1)
        elif key == "seed":
            out[key] = chk.integer(value, w)
        elif key == "metric":
            out[key] = chk.string(value, w) or None
    return out


def _dims(chk: _Checker, value: Any, where: str) -> dict[str, int]:
    table = chk.table(value, where)
    return {str(k): chk.integer(v, f"{where}.{k}", minimum=1) for k, v in table.items()}


def _resolve(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return (p if p.is_absolute() else base / p).resolve()


def _ray(chk: _Checker, value: Any) -> dict[str, dict[str, Any]]:
    table = chk.table(value, "[ray]")
    chk.keys(table, set(RAY_GROUPS), "[ray]")
    out: dict[str, dict[str, Any]] = {}
    for group, req in table.items():
        where = f"[ray.{group}]"
        req = chk.table(req, where)
        chk.keys(req, RAY_KEYS, where)
        clean: dict[str, Any] = {}
        for key, v in req.items():
            if key == "resources":
                res = chk.table(v, f"{where} resources")
                clean[key] = {
                    str(k): chk.number(n, f"{where} resources.{k}") for k, n in res.items()
                }
            elif key == "memory":
                clean[key] = chk.integer(v, f"{where} memory", minimum=0)
            else:
                clean[key] = chk.number(v, f"{where} {key}")
        out[group] = clean
    return out


def ray_request(recipe: Recipe, group: str, threads: int | None = None) -> dict[str, Any]:
    """Ray resources for a task: the recipe's [ray.GROUP], else a default.

    Defaults: optimize 1 CPU; a CPU cell as many CPUs as its ONNX Runtime threads (1 when
    unset), so cells sharing a node do not share cores; a CUDA/TensorRT cell 1 GPU + 1 CPU.
    """
    if group in recipe.ray:
        return dict(recipe.ray[group])
    if group == "cpu":
        return {"num_cpus": threads or 1}
    if group in ("cuda", "tensorrt"):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


def _pipeline_entry(chk: _Checker, name: str, value: Any) -> PipelineEntry:
    from graphopt.core.pipeline import parse

    where = f"[pipelines] {name}"
    if isinstance(value, str):
        table: dict[str, Any] = {"pipeline": value}
    else:
        table = chk.table(value, where)
        chk.keys(table, PIPELINE_KEYS, where)
        if "pipeline" not in table:
            raise chk.fail(where, "missing key 'pipeline' (the text given to graphopt optimize -p)")
    text = chk.string(table["pipeline"], f"{where} pipeline").strip()
    if text.lower() in NONE_PIPELINES:
        if set(table) - {"pipeline"}:
            raise chk.fail(where, "the model as is ('none') takes no other keys")
        return PipelineEntry(name, text, "")
    try:
        normalized = str(parse(text))
    except PipelineError as exc:
        raise PipelineError(f"recipe {chk.path}: {where}: {exc.message}", hint=exc.hint) from None
    budget = table.get("budget")
    if budget is not None:
        from graphopt.accuracy.budget import Budget

        budget = chk.string(budget, f"{where} budget")
        try:
            Budget.parse(budget)
        except ValueError as exc:
            raise chk.fail(f"{where} budget", str(exc)) from None
    return PipelineEntry(
        name,
        text,
        normalized,
        target=chk.choice(table.get("target", "cpu"), f"{where} target", EPS),
        budget=budget,
        verify=chk.boolean(table.get("verify", True), f"{where} verify"),
        verify_samples=chk.integer(
            table.get("verify_samples", 4), f"{where} verify_samples", minimum=0
        ),
    )


def _pipelines(chk: _Checker, value: Any) -> list[PipelineEntry]:
    if isinstance(value, list):
        items = [(chk.string(v, "[pipelines]").strip() or "none", v) for v in value]
    else:
        items = list(chk.table(value, "[pipelines]").items())
    if not items:
        raise chk.fail("[pipelines]", 'no pipelines (write none = "" for the model as is)')
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise chk.fail("[pipelines]", f"'{dup[0]}' is listed twice")
    out = [_pipeline_entry(chk, str(n), v) for n, v in items]
    seen: dict[tuple[Any, ...], str] = {}
    for p in out:
        ident = (p.normalized, p.target, p.budget, p.verify, p.verify_samples)
        if ident in seen:
            raise chk.fail(
                "[pipelines]",
                f"'{seen[ident]}' and '{p.name}' are the same pipeline "
                f"({p.normalized or 'the model as is'})",
            )
        seen[ident] = p.name
    return out


def _check_file(chk: _Checker, where: str, path: Path, cls: type[GraphoptError]) -> None:
    if not path.exists():
        raise chk.fail(where, f"not found: {path}", cls)


def _model_entry(
    chk: _Checker,
    name: str,
    value: Any,
    bench: dict[str, Any],
    pipelines: list[PipelineEntry],
    sha_cache: dict[Path, str],
) -> ModelEntry:
    from graphopt import ir as gir
    from graphopt.bench.harness import check_metric
    from graphopt.inputs import data as gdata

    where = f"[models.{name}]"
    table = {"path": value} if isinstance(value, str) else chk.table(value, where)
    chk.keys(table, MODEL_KEYS, where)
    if "path" not in table:
        raise chk.fail(where, "missing key 'path' (the ONNX model file)")
    base = chk.path.parent
    path = _resolve(base, chk.string(table["path"], f"{where} path"))
    _check_file(chk, f"{where} path", path, ModelError)
    try:
        proto = gir.read_proto(path)
        model = gir.load_model(path)
    except GraphoptError as exc:
        raise type(exc)(f"recipe {chk.path}: {where} path: {exc.message}", hint=exc.hint) from None
    data = calib = None
    for key in ("data", "calib_data"):
        if key in table:
            p = _resolve(base, chk.string(table[key], f"{where} {key}"))
            _check_file(chk, f"{where} {key}", p, DataError)
            if key == "data":
                data = p
            else:
                calib = p
    calib = calib or data
    calib_batch = chk.integer(table.get("calib_batch", 1), f"{where} calib_batch", minimum=1)
    dims = _dims(chk, table["dims"], f"{where} dims") if "dims" in table else {}
    settings = {**bench, **_bench_settings(chk, table, where)}
    try:
        for p, batch in ((data, 1), (calib, calib_batch)):
            if p is not None:
                gdata.load_data(model, p, batch=batch)
        if settings["metric"] == "top1" and data is None:
            raise UsageError("metric top1 needs labels: give this model data = ... with 'label'")
        check_metric(settings["metric"], str(data) if data else None)
    except GraphoptError as exc:
        exc.message = exc.message.removeprefix("--metric: ")
        raise type(exc)(f"recipe {chk.path}: {where}: {exc.message}", hint=exc.hint) from None
    specs = gdata.input_specs(model)
    batch_dims = {s.dims[0] for s in specs if s.dims and not isinstance(s.dims[0], int)}
    if not batch_dims and settings["batches"] != [1]:
        raise chk.fail(
            f"{where} batches",
            f"{settings['batches']}: the model's inputs have a fixed first dimension, so it "
            "only runs at batch 1; set batches = [1] in this table",
        )
    clash = sorted(d for d in batch_dims if d and d in dims)
    if clash:
        raise chk.fail(f"{where} dims", f"'{clash[0]}' is the batch dimension; use batches")
    for p in pipelines:
        if p.as_is:
            continue
        from graphopt.core.pipeline import parse

        for step in parse(p.normalized).steps():
            if "data" in step.pass_class.needs and calib is None:
                raise chk.fail(
                    where,
                    f"pipeline '{p.name}' needs calibration data (pass '{step.name}'); "
                    "give this model data = ... or calib_data = ...",
                )

    def sha(files: list[Path], root: Path | None = None) -> str:
        key = files[0]
        if key not in sha_cache:
            sha_cache[key] = files_sha256(files, root)
        return sha_cache[key]

    return ModelEntry(
        name=name,
        path=path,
        sha256=sha(model_files(path, proto)),
        data=data,
        data_sha256=sha(data_files(data), data if data.is_dir() else None) if data else None,
        calib_data=calib,
        calib_sha256=sha(data_files(calib), calib if calib.is_dir() else None) if calib else None,
        calib_batch=calib_batch,
        dims=dims,
        bench=settings,
    )


def _optimize_definition(m: ModelEntry, p: PipelineEntry) -> dict[str, Any]:
    """Everything that changes the optimized model (not names, not file locations)."""
    return {
        "model_sha256": m.sha256,
        "pipeline": p.normalized,
        "target": p.target,
        "budget": p.budget,
        "verify": p.verify,
        "verify_samples": p.verify_samples,
        "calib_sha256": m.calib_sha256,
        "calib_batch": m.calib_batch,
        "dims": m.dims,
        "graphopt": graphopt.__version__,
    }


def _cell_definition(
    m: ModelEntry, opt: dict[str, Any] | None, ep: str, batch: int
) -> dict[str, Any]:
    """Everything that changes a cell's measurement (the optimized model's own definition,
    the EP, the batch size and the bench settings)."""
    s = m.bench
    return {
        "model_sha256": m.sha256,
        "optimize": opt,
        "ep": ep,
        "batch": batch,
        "data_sha256": m.data_sha256,
        "dims": m.dims,
        **{k: s[k] for k in ("threads", "warmup", "repeat", "rounds", "seed", "metric", "samples")},
        "graphopt": graphopt.__version__,
    }


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a recipe; every problem is a GraphoptError naming the table and key."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe not found: {p}" if not p.exists() else f"not a file: {p}")
    raw_bytes = p.read_bytes()
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"recipe {p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {p}: invalid TOML: {exc}") from None
    chk = _Checker(p.resolve())
    chk.keys(raw, TOP_KEYS, "top level")
    sweep = chk.table(raw.get("sweep", {}), "[sweep]")
    chk.keys(sweep, SWEEP_KEYS, "[sweep]")
    bench_table = chk.table(raw.get("bench", {}), "[bench]")
    chk.keys(bench_table, set(BENCH_DEFAULTS), "[bench]")
    bench = {**BENCH_DEFAULTS, **_bench_settings(chk, bench_table, "[bench]")}
    if "pipelines" not in raw:
        raise chk.fail("top level", 'missing [pipelines] (name = "pipeline text" entries)')
    if "models" not in raw:
        raise chk.fail("top level", "missing [models] (a [models.NAME] table with path = ...)")
    pipelines = _pipelines(chk, raw["pipelines"])
    models_table = chk.table(raw["models"], "[models]")
    if not models_table:
        raise chk.fail("[models]", "no models")
    sha_cache: dict[Path, str] = {}
    models = [
        _model_entry(chk, str(n), v, bench, pipelines, sha_cache) for n, v in models_table.items()
    ]
    ray = _ray(chk, raw["ray"]) if "ray" in raw else {}
    tasks: list[OptimizeTask] = []
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for m in models:
        for pl in pipelines:
            opt_def = None if pl.as_is else _optimize_definition(m, pl)
            opt_key = None
            if opt_def is not None:
                opt_key = digest(opt_def)
                tasks.append(OptimizeTask(opt_key, m, pl, opt_def))
            for ep in m.bench["eps"]:
                for batch in m.bench["batches"]:
                    definition = _cell_definition(m, opt_def, ep, batch)
                    cell = Cell(digest(definition), m, pl, ep, batch, opt_key, definition)
                    if cell.key in seen:
                        raise chk.fail(
                            "[models]",
                            f"cells {seen[cell.key]} and {cell.id} are the same measurement "
                            "(same model file, data, pipeline and settings); list it once",
                        )
                    seen[cell.key] = cell.id
                    cells.append(cell)
    name = chk.string(sweep.get("name", p.stem), "[sweep] name")
    return Recipe(
        path=p.resolve(),
        name=name,
        description=chk.string(sweep.get("description", ""), "[sweep] description"),
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        models=models,
        pipelines=pipelines,
        bench=bench,
        ray=ray,
        optimize_tasks=tasks,
        cells=cells,
    )


def timing_passes(pipeline: PipelineEntry) -> list[str]:
    """Passes of ``pipeline`` that time the model to decide (int8 guard, precision auto).

    Their decisions depend on a quiet machine, so the sweep optimizes such pipelines alone.
    """
    if pipeline.as_is:
        return []
    from graphopt.core.pipeline import parse

    found = []
    checks: dict[str, Callable[[Any], bool]] = {
        "qdq-insert": lambda o: bool(getattr(o, "guard", False)),
        "assign-precision": lambda o: getattr(o, "target", "") == "auto",
    }
    for step in parse(pipeline.normalized).steps():
        check = checks.get(step.name)
        if check is not None and check(step.options) and step.name not in found:
            found.append(step.name)
    return found
