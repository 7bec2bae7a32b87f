"""``graphopt optimize``: run a pipeline on a model, verified after every pass."""

from __future__ import annotations

from pathlib import Path

import click

from graphopt.cli.common import (
    batch_option,
    cli,
    dims_option,
    model_arg,
    optimize_and_print,
    output_option,
    report_option,
    seed_option,
    target_option,
)


@cli.command()
@model_arg
@output_option("Where to write the optimized model.")
@click.option(
    "-p",
    "--pipeline",
    "pipeline_text",
    default="cleanup",
    show_default=True,
    help="Pipeline text or preset name.",
)
@click.option("--data", help="DATA: .npz keyed by input names, or a folder of test_data_set_*.")
@target_option()
@report_option()
@click.option(
    "--dump-dir",
    type=click.Path(path_type=Path),
    help="Keep the model after every pass (and reproducers) here.",
)
@click.option("--no-verify", is_flag=True, help="Skip verify-each (faster, unchecked).")
@dims_option()
@click.option(
    "--verify-samples",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Feeds used by verify-each (0: all of DATA).",
)
@batch_option()
@seed_option("Seed of random verification inputs.")
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
