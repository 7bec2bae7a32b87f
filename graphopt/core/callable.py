"""Modules that are also functions: ``graphopt.optimize(...)``, ``graphopt.bench(...)``,
``graphopt.passes()``.

``graphopt.optimize``, ``graphopt.bench`` and ``graphopt.passes`` are modules (the code behind
each entry point lives there), and importing a submodule always sets the package attribute
of that name to the module. So the documented Python API, a function of the same name, is the
module itself made callable.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


class CallableModule(types.ModuleType):
    """A module whose call runs its ``__call_target__``."""

    __call_target__: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__call_target__(*args, **kwargs)


def make_callable(module_name: str, func: Callable[..., Any]) -> None:
    """Make the module ``module_name`` (already importing) call ``func`` when called."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__call_target__ = func  # type: ignore[attr-defined]
