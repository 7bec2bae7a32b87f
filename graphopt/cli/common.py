"""What the commands share: the consoles, the command group, the model argument, inputs
for a model, the progress bar and the optimize-and-print step."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import graphopt
from graphopt import errors

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)

F = TypeVar("F", bound=Callable[..., Any])

TARGETS = ("cpu", "cuda", "tensorrt")


def inputs_for(
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


class ProgressListener:
    """Shows which pass is running on long pipelines (on a terminal only)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} passes"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not enabled,
        )
        self.task = self.progress.add_task("optimizing", total=total)

    def __enter__(self) -> ProgressListener:
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
    with ProgressListener(total, enabled=err.is_terminal) as listener:
        result = run(model_path, pipeline_text, output=output, listener=listener, **kwargs)
    print_run(console, result.report, show_unchanged=show_unchanged)
    report_path = kwargs.get("report_path")
    console.print(
        f"wrote {output}" + (f" and {report_path}" if report_path else ""),
        markup=False,
        soft_wrap=True,
    )
    return result.report


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
model_arg = click.argument("model", type=click.Path(path_type=Path, readable=False))


def batch_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    from graphopt.bench import parse_batches

    try:
        return parse_batches(value)
    except errors.UsageError as exc:
        raise click.BadParameter(exc.message.removeprefix("--batch ")) from None


def writable(path: Path | None, what: str) -> None:
    if path is not None and not path.resolve().parent.is_dir():
        raise errors.UsageError(f"{what} folder does not exist: {path.parent}")


def nullcontext() -> Any:
    import contextlib

    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- shared options
# Each option more than one command takes is declared here once: the same flag, destination
# and type everywhere; a command may say in its own words what the option means for it.
def output_option(help: str, *, required: bool = True) -> Callable[[F], F]:
    return click.option(
        "-o", "--output", type=click.Path(path_type=Path), required=required, help=help
    )


def report_option() -> Callable[[F], F]:
    return click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        help="Write the JSON report here.",
    )


def page_options(json_flag: str | None = None) -> Callable[[F], F]:
    """--md and --html (and ``json_flag`` for a JSON file): where the reports go."""

    def apply(f: F) -> F:
        for flag, dest, what in reversed(
            [
                *([(json_flag, "json_path", "JSON")] if json_flag else []),
                ("--md", "md_path", "markdown"),
                ("--html", "html_path", "HTML"),
            ]
        ):
            f = click.option(
                flag, dest, type=click.Path(path_type=Path), help=f"Write the {what} report here."
            )(f)
        return f

    return apply


def json_flag() -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def target_option() -> Callable[[F], F]:
    return click.option(
        "--target",
        type=click.Choice(TARGETS),
        default="cpu",
        show_default=True,
        help="Execution provider the model is optimized for.",
    )


def dims_option(
    help: str = "Size of a symbolic input dim for random inputs (repeatable; '*=N' for all).",
) -> Callable[[F], F]:
    return click.option("--dim", "dims", multiple=True, metavar="NAME=N", help=help)


def batch_option() -> Callable[[F], F]:
    return click.option(
        "--batch",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Batch size when DATA's sample axis is the model's batch axis.",
    )


def seed_option(help: str = "Seed of random inputs.") -> Callable[[F], F]:
    return click.option("--seed", default=0, show_default=True, help=help)


def backend_options(backend_help: str, address_help: str) -> Callable[[F], F]:
    """--backend local|ray and --ray-address (tune, sweep)."""

    def apply(f: F) -> F:
        f = click.option("--ray-address", metavar="ADDR", help=address_help)(f)
        return click.option(
            "--backend",
            type=click.Choice(("local", "ray")),
            default="local",
            show_default=True,
            help=backend_help,
        )(f)

    return apply


def check_backend(backend: str, ray_address: str | None) -> None:
    if ray_address and backend != "ray":
        raise errors.UsageError("--ray-address needs --backend ray")
