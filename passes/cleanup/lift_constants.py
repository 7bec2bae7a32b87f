"""lift-constants: Constant nodes become initializers, so later passes see one kind of constant."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import CheckedOptions, option, register_pass


@dataclasses.dataclass(frozen=True)
class LiftConstantsOptions(CheckedOptions):
    lift_all: bool = option(
        True, "also lift value_int(s)/value_float(s) Constants, not only 'value'"
    )
    size_limit: int = option(0, "lift only tensors with at least this many elements", minimum=0)


@register_pass
class LiftConstantsPass(IrPassAdapter):
    """Wraps onnx_ir's LiftConstantsToInitializersPass."""

    name = "lift-constants"
    Options = LiftConstantsOptions
    tolerance = Tolerance.exact()
    summary = "turn Constant nodes into initializers"

    def make_inner(self) -> ir.passes.PassBase:
        return ir.passes.common.LiftConstantsToInitializersPass(
            lift_all_constants=self.options.lift_all, size_limit=self.options.size_limit
        )
