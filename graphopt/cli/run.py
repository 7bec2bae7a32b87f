"""``graphopt run``: one inference, each output's statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from graphopt import ir as gir
from graphopt import runtime
from graphopt.cli.common import (
    TARGETS,
    cli,
    console,
    dims_option,
    inputs_for,
    json_flag,
    model_arg,
    seed_option,
)


@cli.command()
@model_arg
@click.option("--data", help="DATA to take the first sample from (else random inputs).")
@click.option(
    "--ep", type=click.Choice(TARGETS), default="cpu", show_default=True, help="Execution provider."
)
@dims_option("Size of a symbolic dim for random inputs.")
@seed_option()
@json_flag()
def run(
    model: Path, data: str | None, ep: str, dims: tuple[str, ...], seed: int, as_json: bool
) -> None:
    """Run one inference and print each output's shape and statistics."""
    import time

    import numpy as np

    m = gir.load_model(model)
    samples = inputs_for(m, model, data, dims, 1, seed, 1).samples
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
    console.print(table)
