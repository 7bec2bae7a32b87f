"""capture-loop-invariants: what a Loop or Scan carries through unchanged is read from outside.

tf2onnx writes a Keras LSTM/GRU it cannot match as a ``Loop`` whose body receives the layer's
weights as loop-carried state and returns them unchanged on every iteration (chars2vec: both
300-unit LSTMs, W, U and the bias). To every weight pass such a weight is a body input, not a
constant, so nothing can quantize or prune it. A carried value the body returns as it
received it (directly or through Identity) holds its initial value on every iteration, so the
body may read that initial value from the enclosing graph (ONNX's outer-scope capture), and
the node's final value for it is the initial value too. The pass rewrites both reads and
drops the carried slot: the weights become initializers the body reads, and ONNX Runtime no
longer threads them through each iteration.

Slots (N carried values, K scan outputs):

* ``Loop``: inputs ``(M, cond, v_1..v_N)``, body inputs ``(i, cond, v_1..v_N)``, body outputs
  ``(cond, v_1..v_N, scan_1..scan_K)``, node outputs ``(v_1..v_N, scan_1..scan_K)``;
* ``Scan`` (opset 9+): inputs ``(s_1..s_N, x_1..x_M)``, body inputs ``(s_1..s_N, x slices)``,
  body outputs and node outputs ``(s_1..s_N, y_1..y_K)``.

A carried value whose final output is itself a graph output stays (its name is part of that
graph's interface). The body computes with the same tensors; only the kernels ONNX Runtime
picks for constant weights (prepacked, fused) round differently.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt import ir as gir
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import register_pass


@dataclasses.dataclass(frozen=True)
class CaptureLoopInvariantsOptions:
    """No options: a carried value is invariant or it is not."""


def _slots(node: ir.Node, opset: int) -> tuple[ir.Graph, int, int, int] | None:
    """(body, first carried input of the node and of the body, first carried body output,
    number carried) of a Loop or Scan, None for anything else."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Loop", "Scan"):
        return None
    attr = node.attributes.get("body")
    if attr is None or attr.type != ir.AttributeType.GRAPH:
        return None
    body = attr.value
    if node.op_type == "Loop":
        return body, 2, 1, max(0, len(node.inputs) - 2)
    if (node.version or opset) < 9:  # Scan-8 has a sequence_lens input first and batched state
        return None
    scans = node.attributes.get_int("num_scan_inputs", 0)
    return body, 0, 0, max(0, len(node.inputs) - scans)


def _through_identity(value: ir.Value) -> ir.Value:
    """The value an Identity chain copies (``value`` itself where none)."""
    while True:
        p = value.producer()
        if p is None or p.op_type != "Identity" or p.domain not in ("", "ai.onnx"):
            return value
        if not p.inputs or p.inputs[0] is None:
            return value
        value = p.inputs[0]


@register_pass
class CaptureLoopInvariantsPass(GraphoptPass):
    name = "capture-loop-invariants"
    Options = CaptureLoopInvariantsOptions
    # The body computes with the same tensors, but as constants ONNX Runtime prepacks the
    # weights and fuses MatMul + Add: float rounding moves (chars2vec: 4e-7 relative).
    tolerance = Tolerance.reassociation()
    summary = "values a Loop/Scan carries through unchanged are read from the enclosing graph"

    def run(self, model: ir.Model) -> bool:
        captured: list[dict[str, object]] = []
        opset = gir.ai_onnx_opset(model)
        for node in list(gir.iter_nodes(model)):
            names = self._capture(node, opset)
            if names:
                captured.append({"node": node.name or node.op_type, "captured": names})
        if captured:
            self.details["loops"] = captured
        return bool(captured)  # lossless and part of cleanup: nothing to do needs no line

    def render_notes(self) -> list[str]:
        return [
            f"{d['node']}: {len(d['captured'])} unchanged carried value(s) now read from "
            f"outside ({', '.join(map(str, d['captured'][:3]))}"  # type: ignore[index]
            f"{' ...' if len(d['captured']) > 3 else ''})"  # type: ignore[arg-type]
            for d in self.details.get("loops", [])
        ]

    def _capture(self, node: ir.Node, opset: int) -> list[str]:
        slots = _slots(node, opset)
        if slots is None:
            return []
        body, first_in, first_out, n = slots
        if len(body.inputs) < first_in + n or len(body.outputs) < first_out + n:
            return []
        invariant = []
        for k in range(n):
            init = node.inputs[first_in + k]
            inner = body.inputs[first_in + k]
            out = node.outputs[k] if k < len(node.outputs) else None
            if init is None or (out is not None and out.is_graph_output()):
                continue
            if _through_identity(body.outputs[first_out + k]) is inner:
                invariant.append(k)
        if not invariant:
            return []
        inner = {k: body.inputs[first_in + k] for k in invariant}
        for k in sorted(invariant, reverse=True):  # the body no longer returns them
            body.outputs.pop(first_out + k)
        for k in invariant:
            init = node.inputs[first_in + k]
            assert init is not None
            inner[k].replace_all_uses_with(init)
            if k < len(node.outputs):
                node.outputs[k].replace_all_uses_with(init)
            self.count(f"captured:{node.op_type}")
        for k in sorted(invariant, reverse=True):
            body.inputs.pop(first_in + k)
        names = [node.inputs[first_in + k].name or "?" for k in invariant]  # type: ignore[union-attr]
        self._rebuild(node, first_in, set(invariant))
        return names

    def _rebuild(self, node: ir.Node, first_in: int, drop: set[int]) -> None:
        """The node without the carried slots ``drop`` (its body has lost them already)."""
        inputs = [v for i, v in enumerate(node.inputs) if i < first_in or i - first_in not in drop]
        keep = [k for k in range(len(node.outputs)) if k not in drop]
        graph = node.graph
        assert graph is not None
        new = ir.Node(
            node.domain,
            node.op_type,
            inputs,
            attributes=list(node.attributes.values()),
            num_outputs=len(keep),
            name=node.name,
            version=node.version,
        )
        old_values = [node.outputs[k] for k in keep]
        for old, fresh in zip(old_values, new.outputs, strict=True):
            fresh.type, fresh.shape = old.type, old.shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], [new], old_values, new.outputs)
        # Identity nodes that copied a dropped slot have no reader now: eliminate-dead-code
