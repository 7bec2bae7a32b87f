"""``graphopt passes``: every pass with its options, and the presets."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from graphopt.cli.common import (
    cli,
    console,
    json_flag,
)


@cli.command("passes")
@json_flag()
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
        console.print(
            f"[bold]{escape(p['name'])}[/]  {escape(p['summary'])}  [dim](tolerance: abs "
            f"{tol['max_abs']:g}, rel {tol['max_rel']:g}, cos ≥ {tol['min_cosine']:g})[/]",
            soft_wrap=True,
        )
        for o in p["options"]:
            console.print(
                f"    {escape(o['name'])}: [cyan]{escape(str(o['type']))}[/] = "
                f"{escape(str(o['default']))}  [dim]{escape(o['doc'])}[/]",
                soft_wrap=True,
                highlight=False,
            )
    console.print()
    presets = Table(title="presets", title_justify="left")
    presets.add_column("preset", style="bold")
    presets.add_column("expands to")
    for name, text in PRESETS.items():
        presets.add_row(name, f"{escape(PRESET_DOCS.get(name, ''))}\n[dim]{escape(text)}[/]")
    console.print(presets)
