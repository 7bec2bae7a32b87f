"""eliminate-identity: Identity nodes are bypassed (kept only between a graph input and output)."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass


@register_pass
class EliminateIdentityPass(IrPassAdapter):
    """Wraps onnx_ir's IdentityEliminationPass."""

    name = "eliminate-identity"
    tolerance = Tolerance.exact()
    summary = "remove Identity nodes"

    def make_inner(self) -> ir.passes.PassBase:
        return ir.passes.common.IdentityEliminationPass()
