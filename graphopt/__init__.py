"""graphopt: a compiler of graph passes for ONNX models."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

#: The Python API. Each is a module that is also a function (see graphopt._callable):
#: ``graphopt.optimize(model, "cpu-int8", data=...)`` returns a ``graphopt.optimize.Result``,
#: ``graphopt.bench([...])`` the bench report, ``graphopt.passes()`` the pass catalog.
_API = ("optimize", "bench", "passes", "tune")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """Import an API module on first use (``import graphopt`` stays cheap for the CLI)."""
    if name in _API:
        import importlib

        return importlib.import_module(f"graphopt.{name}")
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")


class _SourcePassesFinder:
    """Make ``graphopt.passes`` importable from a plain source checkout.

    An installed wheel (or an editable install) maps the top-level ``passes/`` folder to
    ``graphopt.passes``. Running from a checkout without installing, Python finds
    ``graphopt/`` first and never looks at ``passes/``; this finder, consulted last, points
    there in that one case.
    """

    @classmethod
    def find_spec(
        cls, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "graphopt.passes":
            return None
        folder = Path(__file__).resolve().parent.parent / "passes"
        if not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


if not any(f is _SourcePassesFinder for f in sys.meta_path):
    sys.meta_path.append(_SourcePassesFinder)
