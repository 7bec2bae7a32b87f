"""eliminate-identity: Identity nodes are bypassed (kept only between graph inputs/outputs)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common.identity_elimination import IdentityEliminationPass

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass


class _SafeIdentityElimination(IdentityEliminationPass):
    """onnx_ir 1.1's pass, but an Identity between two graph outputs is kept.

    Upstream renames the Identity's input to the output's name when the output is a graph
    output; if the input is itself a graph output, that drops one of the model's outputs
    (``Relu -> r (output) -> Identity -> y (output)`` became outputs ``[y, y]``). CSE makes
    exactly this shape out of two identical output computations.
    """

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if (
            node.op_type == "Identity"
            and node.inputs
            and node.inputs[0] is not None
            and node.inputs[0].is_graph_output()
            and node.outputs[0].is_graph_output()
        ):
            return False
        return super()._try_eliminate_identity_node(node)


@register_pass
class EliminateIdentityPass(IrPassAdapter):
    """Wraps onnx_ir's IdentityEliminationPass (with a guard for output-to-output Identity)."""

    name = "eliminate-identity"
    tolerance = Tolerance.exact()
    summary = "remove Identity nodes"

    def make_inner(self) -> ir.passes.PassBase:
        return _SafeIdentityElimination()
