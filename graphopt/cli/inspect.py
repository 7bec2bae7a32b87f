"""``graphopt inspect``: what a model holds."""

from __future__ import annotations

from pathlib import Path

import click

from graphopt import ir as gir
from graphopt.cli.common import (
    cli,
    console,
    json_flag,
    model_arg,
)


@cli.command()
@model_arg
@json_flag()
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
        console.print(table)
