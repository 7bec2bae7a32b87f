"""Running the ``graphopt`` command line in-process from tests, with its output captured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from graphopt.cli import main


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def flat_err(self) -> str:
        """stderr with rich's line wrapping undone (runs of whitespace become one space)."""
        return " ".join(self.err.split())

    @property
    def flat_out(self) -> str:
        return " ".join(self.out.split())


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    """``graphopt ARGS...``: its exit code, stdout and stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return Result(code, out, err)
