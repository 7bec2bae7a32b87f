"""``graphopt bench``: latency, memory and accuracy of models side by side."""

from __future__ import annotations

from pathlib import Path

import click

from graphopt.cli.common import (
    TARGETS,
    batch_list,
    cli,
    console,
    dims_option,
    err,
    nullcontext,
    page_options,
    seed_option,
    writable,
)


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
    callback=batch_list,
    help="Batch sizes, comma-separated (e.g. 1,8,32).",
)
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads.")
@click.option("--data", help="DATA for inputs (and labels for --metric top1); else random.")
@dims_option("Size of a symbolic dim other than the batch (e.g. sequence=128), for random inputs.")
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
@seed_option()
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
@page_options(json_flag="--json")
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
        writable(path, what)
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
    with err.status("benchmarking", spinner="dots") if err.is_terminal else nullcontext():
        result = run_bench(settings)
    for item in brep.console_tables(result):
        console.print(item)
    written = []
    if json_path is not None:
        written.append(brep.write_json(json_path, result))
    if md_path is not None:
        written.append(brep.write_text(md_path, brep.markdown(result)))
    if html_path is not None:
        written.append(brep.write_text(html_path, brep.html_page(result)))
        if not brep.plots_available():
            err.print(f"graphopt: note: {brep.PLOTS_MISSING}", markup=False, soft_wrap=True)
    if written:
        console.print("wrote " + ", ".join(str(p) for p in written), markup=False, soft_wrap=True)
