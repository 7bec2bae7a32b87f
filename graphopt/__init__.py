"""graphopt: a compiler of graph passes for ONNX models."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from pathlib import Path

__version__ = "0.1.0"

#: The Python API. Each is a module that is also a function (see graphopt.core.callable):
#: ``graphopt.optimize(model, "cpu-int8", data=...)`` returns a ``graphopt.optimize.Result``,
#: ``graphopt.bench([...])`` the bench report, ``graphopt.passes()`` the pass catalog.
_API = ("optimize", "bench", "passes", "tune")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """Import an API module on first use (``import graphopt`` stays cheap for the CLI)."""
    if name in _API:
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


#: Modules that moved into the package's layer folders: the old path still imports the same
#: module object, with a DeprecationWarning naming the new one.
MOVED = {
    "graphopt.metrics": "graphopt.accuracy.metrics",
    "graphopt.budget": "graphopt.accuracy.budget",
    "graphopt.acceptance": "graphopt.accuracy.acceptance",
    "graphopt.verify": "graphopt.accuracy.verify",
    "graphopt.data": "graphopt.inputs.data",
    "graphopt.probe": "graphopt.inputs.probe",
    "graphopt.snapshot": "graphopt.runtime.snapshot",
    "graphopt.target": "graphopt.runtime.target",
    "graphopt.report": "graphopt.core.report",
    "graphopt._callable": "graphopt.core.callable",
    "graphopt.tune_build": "graphopt.tune.build",
    "graphopt.tune_candidates": "graphopt.tune.candidates",
    "graphopt.tune_report": "graphopt.tune.report",
    "graphopt.demo": "graphopt.cli.demo",
}
#: Modules that left the installed package: importing them says where they went.
GONE = {
    "graphopt.zoo": "the model corpus moved out of the installed package to benchmarks/zoo "
    "in the repository: put benchmarks/ on the path and 'import zoo'",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import graphopt.data`` (an old path) gives ``graphopt.inputs.data`` itself."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        root = ".".join(fullname.split(".")[:2])
        if root in GONE:
            raise ModuleNotFoundError(f"{fullname}: {GONE[root]}", name=fullname)
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is already executed under its new name."""


if not any(type(f).__name__ == "_MovedModuleFinder" for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
