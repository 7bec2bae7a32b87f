"""The ``graphopt`` command line: one module per command, what they share in ``common``.

Every failure a user can cause ends in one line on stderr (``graphopt: error: ...``) and a
documented exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from graphopt import errors
from graphopt.cli import bench, demo, inspect, optimize, passes, run, sweep, tune  # noqa: F401
from graphopt.cli.common import cli, err

# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps every error to one line and an exit code."""
    args = _debug_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args or os.environ.get("GRAPHOPT_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="graphopt", standalone_mode=False)
        return errors.EXIT_OK
    except click.exceptions.Abort:
        err.print("graphopt: aborted", markup=False)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        err.print(f"graphopt: error: {exc.format_message()}", markup=False, soft_wrap=True)
        return errors.EXIT_USAGE
    except errors.GraphoptError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"graphopt: error: {exc}", markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("graphopt: interrupted")
        return 130
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            traceback.print_exc()
        err.print(
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
