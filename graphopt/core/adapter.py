"""Run an onnx_ir (or onnxscript) pass as the body of a graphopt pass.

Some upstream passes report ``modified=True`` even when the graph came out the same (shape
inference re-stamps types, sorting keeps the order). graphopt's idempotence contract needs an
honest flag, so the adapter compares a structural fingerprint before and after.
"""

from __future__ import annotations

import abc
import collections

import onnx_ir as ir

from graphopt import ir as gir
from graphopt.core.pass_base import GraphoptPass


class IrPassAdapter(GraphoptPass):
    """A graphopt pass whose work is done by an upstream in-place pass."""

    @abc.abstractmethod
    def make_inner(self) -> ir.passes.PassBase:
        """The upstream pass configured from ``self.options``."""

    def run(self, model: ir.Model) -> bool:
        before_fp = gir.fingerprint(model)
        before_ops = collections.Counter(n.op_type for n in gir.iter_nodes(model))
        before_inits = sum(len(g.initializers) for g in gir.iter_graphs(model))
        before_nodes = {id(n) for n in gir.iter_nodes(model)}
        before_typed = _typed_values(model)
        result = self.make_inner()(model)
        if result.model is not model:  # a functional upstream pass: adopt its graph
            raise TypeError(f"{type(self).__name__}: upstream pass must be in place")
        if gir.fingerprint(model) == before_fp:
            return False
        for node in gir.iter_nodes(model):  # provenance on what the upstream pass created
            if id(node) not in before_nodes:
                self.mark(node)
        after_ops = collections.Counter(n.op_type for n in gir.iter_nodes(model))
        removed = before_ops - after_ops
        added = after_ops - before_ops
        self.count("nodes_removed", sum(removed.values()))
        self.count("nodes_added", sum(added.values()))
        after_inits = sum(len(g.initializers) for g in gir.iter_graphs(model))
        self.count("initializers_removed", max(0, before_inits - after_inits))
        self.count("initializers_added", max(0, after_inits - before_inits))
        for op, n in removed.items():
            self.count(f"removed:{op}", n)
        self.count("values_typed", max(0, _typed_values(model) - before_typed))
        return True


def _typed_values(model: ir.Model) -> int:
    """Node outputs whose type and shape are known (what shape inference adds)."""
    return sum(
        1
        for node in gir.iter_nodes(model)
        for v in node.outputs
        if v.type is not None and v.shape is not None
    )
