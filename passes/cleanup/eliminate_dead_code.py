"""eliminate-dead-code: nodes, initializers, functions and opsets that no output depends on."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass


@register_pass
class EliminateDeadCodePass(IrPassAdapter):
    """Wraps onnx_ir's unused-node, unused-function and unused-opset removal."""

    name = "eliminate-dead-code"
    tolerance = Tolerance.exact()
    summary = "remove nodes, initializers, functions and opsets no output uses"

    def make_inner(self) -> ir.passes.PassBase:
        common = ir.passes.common
        return ir.passes.Sequential(
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
        )
