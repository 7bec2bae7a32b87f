"""``graphopt tune``: the fastest model within a budget, found on this machine."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from graphopt.cli.common import (
    backend_options,
    batch_option,
    check_backend,
    cli,
    console,
    err,
    model_arg,
    output_option,
    page_options,
    report_option,
    target_option,
    writable,
)


@cli.command()
@model_arg
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
@output_option("Where to write the winner.")
@target_option()
@click.option(
    "--time", "time_limit", default="20m", show_default=True, help="Search time (90s, 20m, 1h)."
)
@click.option(
    "--eval-data", help="Held-out DATA for accuracy (default: every other feed of --data)."
)
@backend_options(
    "Where candidates are built and scored (local: here, one by one; ray: Ray tasks, a phase "
    "at a time). Latency is always measured here.",
    "Ray cluster for --backend ray (default: a local one).",
)
@batch_option()
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
@report_option()
@page_options()
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

    check_backend(backend, ray_address)
    for path, what in ((report_path, "--report"), (md_path, "--md"), (html_path, "--html")):
        writable(path, what)
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
        say=lambda text: err.print(f"tune: {text}", markup=False, soft_wrap=True),
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
    console.print(table)
    if result.winner is not None:
        w = result.winner
        console.print(
            f"winner: {w.name} ({w.accuracy:.6g}, {w.ratio:.3f}x the original's latency); "
            f"pipeline: {w.pipeline}" + (f" --budget '{w.budget}'" if w.budget else ""),
            markup=False,
            soft_wrap=True,
        )
    else:
        console.print(f"nothing pays: {rep['nothing_pays']}", markup=False, soft_wrap=True)
    console.print(f"wrote {output}", markup=False, soft_wrap=True)
