"""sort-topologically: nodes in dependency order, as ONNX requires and tools expect."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass


@register_pass
class SortTopologicallyPass(IrPassAdapter):
    """Wraps onnx_ir's TopologicalSortPass."""

    name = "sort-topologically"
    tolerance = Tolerance.exact()
    summary = "sort nodes topologically"

    def make_inner(self) -> ir.passes.PassBase:
        return ir.passes.common.TopologicalSortPass()
