"""``graphopt sweep``: a recipe's models x pipelines x EPs x batch sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from graphopt.cli.common import (
    backend_options,
    check_backend,
    cli,
    console,
    err,
)


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
@backend_options(
    "local: one process per task on this machine; ray: Ray tasks.",
    "Ray cluster to use (e.g. ray://head:10001 or auto); default: start a local one.",
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

    check_backend(backend, ray_address)
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
        console.print(table)
        return

    def write(report: dict[str, Any]) -> list[Path]:
        root = options.out
        return [
            write_json(root / "sweep.json", report),
            write_text(root / "sweep.md", srep.markdown(report)),
            write_text(root / "sweep.html", srep.html_page(report)),
        ]

    listener = sw.ProgressDisplay(err, live=err.is_terminal)
    report = sw.run_sweep(rec, options, listener=listener, write=write)
    from graphopt.bench.report import PLOTS_MISSING, plots_available

    if not plots_available():
        err.print(f"graphopt: note: {PLOTS_MISSING}", markup=False, soft_wrap=True)
    for item in srep.console_tables(report):
        console.print(item)
    console.print("wrote " + ", ".join(report["written"]), markup=False, soft_wrap=True)
    failed = sw.failure_message(report)
    if failed:
        raise sw.CellsFailed(failed)
