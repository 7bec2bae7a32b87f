"""eliminate-common-subexpressions: identical nodes on identical inputs are computed once."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import CheckedOptions, option, register_pass


@dataclasses.dataclass(frozen=True)
class EliminateCommonSubexpressionsOptions(CheckedOptions):
    size_limit: int = option(10, "largest tensor attribute (elements) compared by value", minimum=0)


@register_pass
class EliminateCommonSubexpressionsPass(IrPassAdapter):
    """Wraps onnx_ir's CommonSubexpressionEliminationPass."""

    name = "eliminate-common-subexpressions"
    Options = EliminateCommonSubexpressionsOptions
    tolerance = Tolerance.exact()
    summary = "merge identical nodes with identical inputs"

    def make_inner(self) -> ir.passes.PassBase:
        return ir.passes.common.CommonSubexpressionEliminationPass(
            size_limit=self.options.size_limit
        )
