"""eliminate-identity: Identity nodes are bypassed (kept only between graph inputs/outputs)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common.identity_elimination import IdentityEliminationPass

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass
from graphopt.ir import defining_graph


class _SafeIdentityElimination(IdentityEliminationPass):
    """onnx_ir 1.1's pass, but two kinds of Identity feeding a graph output are kept.

    Upstream renames the Identity's input to the output's name when the output is a graph
    output. That is wrong when the input is (a) itself a graph output: one of the model's
    outputs disappears (``Relu -> r (output) -> Identity -> y (output)`` became outputs
    ``[y, y]``; CSE makes exactly this out of two identical output computations); or (b) a
    value from an enclosing graph: an If/Loop branch would return an outer-scope value
    directly, which ONNX Runtime refuses.
    """

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.inputs and node.inputs[0] is not None:
            x, y = node.inputs[0], node.outputs[0]
            if y.is_graph_output() and (x.is_graph_output() or defining_graph(x) is not node.graph):
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
