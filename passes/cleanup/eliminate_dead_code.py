"""eliminate-dead-code: nodes, initializers, functions and opsets that no output depends on."""

from __future__ import annotations

import onnx_ir as ir

from graphopt import ir as gir
from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass


class _KeepEmptyInputs(ir.passes.InPlacePass):
    """Put back the trailing empty optional inputs that onnx_ir's unused-node removal drops.

    Dropping them is legal ONNX, but it is not dead code and it changes what ONNX Runtime
    does: a ``Pad(x, pads, "")`` that loses its empty third input becomes eligible for ORT's
    Pad-into-Conv fusion, which made CREPE (kernel 512, pad 254) 1.6x slower on CPU
    (benchmarks/results/cleanup.md). A cleanup must not move a model's speed, so keep them.
    """

    def __init__(self, counts: dict[int, int]) -> None:
        self.counts = counts

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        restored = False
        for node in gir.iter_nodes(model):
            want = self.counts.get(id(node))
            if want is not None and len(node.inputs) < want:
                node.resize_inputs(want)
                restored = True
        return ir.passes.PassResult(model, restored)


class _RemoveUnreadInitializers(ir.passes.InPlacePass):
    """Drop initializers, in any graph, that no node of the model reads.

    onnx_ir's unused-node removal drops unused initializers of the main graph only, and
    counts a read by a node that is no longer in the model: onnxscript's constant folder
    inlines an If with a constant condition and drops the other branch without detaching
    its nodes. In Silero VAD (spox) both left the LSTM weights of every branch behind,
    unread: ``cleanup`` grew the file by half instead of shrinking it.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        live = {id(n) for n in gir.iter_nodes(model)}
        removed = False
        for graph in gir.iter_graphs(model):
            kept = set(map(id, graph.outputs)) | set(map(id, graph.inputs))
            for name, value in list(graph.initializers.items()):
                if id(value) in kept or any(id(u.node) in live for u in value.uses()):
                    continue
                del graph.initializers[name]
                removed = True
        return ir.passes.PassResult(model, removed)


@register_pass
class EliminateDeadCodePass(IrPassAdapter):
    """Wraps onnx_ir's unused-node, unused-function and unused-opset removal."""

    name = "eliminate-dead-code"
    tolerance = Tolerance.exact()
    summary = "remove nodes, initializers, functions and opsets no output uses"

    def run(self, model: ir.Model) -> bool:
        self._input_counts = {id(n): len(n.inputs) for n in gir.iter_nodes(model)}
        return super().run(model)

    def make_inner(self) -> ir.passes.PassBase:
        common = ir.passes.common
        return ir.passes.Sequential(
            common.RemoveUnusedNodesPass(),
            _RemoveUnreadInitializers(),
            _KeepEmptyInputs(self._input_counts),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
        )
