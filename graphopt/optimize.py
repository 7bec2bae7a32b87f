"""``graphopt.optimize``: the one orchestration of a pipeline run, for Python and the CLI.

Load the model (a path, an ``onnx.ModelProto`` or an ``ir.Model``), read DATA (a path, a dict
of arrays, an ONNX Runtime ``CalibrationDataReader`` or any iterable of feed dicts), choose
verification inputs, run the pipeline with verify-each, write the output atomically, and
complete the report. ``graphopt optimize``, ``graphopt demo`` and the sweep's workers all come
here; the CLI only parses arguments and prints.

The input is never modified: a path is checked by hash after the run, a proto or an
``ir.Model`` is copied before any pass sees it.

This module is callable: ``graphopt.optimize(model, "cpu-int8", data=...)`` is
:func:`optimize`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from graphopt import errors
from graphopt import ir as gir
from graphopt.core.callable import make_callable
from graphopt.core.instruments import PassRecord

Listener = Callable[[str, dict[str, Any]], None]


@dataclasses.dataclass
class Result:
    """What :func:`optimize` returns: the optimized model, its report, the files written."""

    model: ir.Model
    report: dict[str, Any]
    output: Path | None = None
    #: the typed pass records (the report's ``passes`` are their dicts)
    records: list[PassRecord] = dataclasses.field(default_factory=list)

    @property
    def passes(self) -> list[dict[str, Any]]:
        """One record per pass run (what it changed, verification, findings)."""
        return self.report["passes"]

    @property
    def notes(self) -> list[str]:
        """Every pass's one-line findings, prefixed with the pass name."""
        return [f"{r.name}: {n}" for r in self.records for n in r.notes]

    def save(self, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
        """Write the model atomically to ``path``; returns it."""
        source = self.report.get("model", {}).get("path")
        gir.save_model(self.model, path, external_data=external_data, source=source)
        return Path(path)


def _load(model: Any) -> tuple[ir.Model, Path | None]:
    """The model to rewrite (never the caller's object) and its path when it has one.

    Small tensors an exporter wrote to external data (a dynamo export's Unsqueeze axes) are
    read into memory first: shape inference (onnx's, ONNX Runtime's) refuses to read them
    from a file, and the snapshots sessions load keep only large tensors external."""
    if isinstance(model, (str, os.PathLike)):
        loaded = gir.load_model(model)
        gir.inline_small_external_tensors(loaded)
        return loaded, Path(model)
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return ir.serde.deserialize_model(copy), None
    if isinstance(model, ir.Model):
        return ir.serde.deserialize_model(ir.serde.serialize_model(model)), None
    raise errors.UsageError(
        f"model: cannot optimize a {type(model).__name__}",
        hint="give a path to an .onnx file, an onnx.ModelProto or an onnx_ir.Model",
    )


def _check_paths(model_path: Path | None, output: Path | None, report_path: Path | None) -> None:
    if output is not None:
        if model_path is not None and output.resolve() == model_path.resolve():
            raise errors.UsageError(
                f"output path is the input model ({output}); graphopt never modifies its input"
            )
        if not output.resolve().parent.is_dir():
            raise errors.UsageError(f"output folder does not exist: {output.parent}")
    if report_path is not None and not report_path.resolve().parent.is_dir():
        raise errors.UsageError(f"report folder does not exist: {report_path.parent}")


def optimize(
    model: str | os.PathLike[str] | onnx.ModelProto | ir.Model,
    pipeline: str = "cleanup",
    *,
    data: Any = None,
    target: str = "cpu",
    budget: str | None = None,
    output: str | os.PathLike[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    dims: Sequence[str] = (),
    verify: bool = True,
    verify_samples: int = 4,
    seed: int = 0,
    batch: int = 1,
    dump_dir: str | os.PathLike[str] | None = None,
    external_data: bool | None = None,
    listener: Listener | None = None,
    calib_cache: str | os.PathLike[str] | None = None,
) -> Result:
    """Run ``pipeline`` (pipeline text, e.g. ``"cpu-int8"``) on ``model`` and verify it.

    ``data`` calibrates the passes that need it and is what verification runs on; without
    it, verification inputs are chosen by :mod:`graphopt.inputs.probe` (``dims`` as ``NAME=SIZE``
    fixes dynamic dims). ``budget`` (``"cosine>=0.99"``, ``"top1>=0.98"``) bounds the lossy
    passes. With ``output`` the model is written there (and ``report_path`` gets the JSON
    report). ``calib_cache`` (a folder) keeps calibration statistics for later runs on the
    same model and DATA. Raises a :class:`graphopt.errors.GraphoptError` with a hint on any
    user error.
    """
    from graphopt import runtime
    from graphopt.core.pass_base import PassContext
    from graphopt.core.pipeline import parse
    from graphopt.core.report import add_files, write_json
    from graphopt.core.runner import Runner
    from graphopt.inputs import data as gdata
    from graphopt.inputs import probe

    plan = parse(pipeline)  # usage errors first, before any heavy work
    if budget:
        from graphopt.accuracy.budget import Budget

        try:
            Budget.parse(budget)
        except ValueError as exc:
            raise errors.UsageError(str(exc)) from None
    out = Path(output) if output is not None else None
    rep_path = Path(report_path) if report_path is not None else None
    ir_model, model_path = _load(model)
    _check_paths(model_path, out, rep_path)
    source_hash = gir.file_sha256(model_path) if model_path is not None else None
    calib = gdata.as_samples(ir_model, data, batch=batch)
    samples = None
    run_dims = gdata.parse_dims(tuple(dims))
    if verify:
        if calib is not None:  # verify on the user's data, read once
            samples = calib.spread(verify_samples) if verify_samples else calib
        else:
            chosen = probe.choose(
                ir_model,
                model_path=model_path,
                dims=run_dims,
                count=max(1, verify_samples),
                seed=seed,
            )
            samples, run_dims = chosen.samples, chosen.dims
    context = PassContext(
        target=target,
        data=calib,
        seed=seed,
        budget=budget or "",
        dims=run_dims,
        calib_cache=str(calib_cache) if calib_cache is not None else None,
    )
    result = Runner(
        plan,
        context=context,
        samples=samples,
        verify_each=verify,
        dump_dir=dump_dir,
        listener=listener,
    ).run(ir_model, source=str(model_path) if model_path else type(model).__name__)
    output_info = None
    if out is not None:
        written = gir.save_model(result.model, out, external_data=external_data, source=model_path)
        output_info = {
            "path": str(out),
            "files": [str(p) for p in written],
            "bytes": sum(p.stat().st_size for p in written),
        }
    report = add_files(
        result.report,
        model={"path": str(model_path) if model_path else None, "sha256": source_hash},
        output=output_info,
        providers={"verify": ["CPUExecutionProvider"], "target": runtime.providers_for(target)},
        environment=runtime.environment(),
    )
    # belt and braces: the input must be untouched
    if model_path is not None and gir.file_sha256(model_path) != source_hash:
        raise errors.GraphoptError(f"internal error: input model {model_path} changed on disk")
    if rep_path is not None:
        write_json(rep_path, report)
    return Result(result.model, report, out, result.records)


make_callable(__name__, optimize)
