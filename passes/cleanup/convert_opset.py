"""convert-opset: move the model to another ai.onnx opset with onnx's version converter.

Why: exporters still write old opsets (Paddle 11-12, PyTorch 1.x), and the passes that act
on them need newer operators (per-channel DequantizeLinear needs opset 13). The runner inserts
this pass before any pass whose ``min_opset`` is above the model's, and verifies it like any
pass. onnx's converter is used because it has adapters for every op from opset 7 up;
onnxscript's converter (0.7) only targets 18-25 and, below that, relabels versions without
adapting the ops (measured on the corpus: invalid models or wrong Softmax outputs).

What the converter gets wrong, and this pass makes right or refuses:

* model-local functions are dropped by the converter: they are inlined first (onnx_ir);
* Upsample and Resize at opset <= 10 are asymmetric, but the converter's Resize 10->11
  adapter leaves the new default ``half_pixel``: linear upsampling changed by up to 0.9 in
  our measurements. Such nodes get ``coordinate_transformation_mode=asymmetric`` (and
  ``nearest_mode=floor``), opset 10's exact semantics;
* Hardmax before opset 13 flattens at ``axis``, after it works on ``axis`` alone, and the
  converter does not adapt it: a model with a Hardmax on a non-last axis is left unconverted,
  with the reason.

Large initializers are kept out of the converter (it serializes the whole model; onnx_ir's
``call_onnx_api`` turns them into inputs meanwhile) and put back afterwards, so weights are
not copied and external data stays where it is.
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import MAX_OPSET, MIN_OPSET, ai_onnx_opset

#: temporary node names, so nodes the converter rewrites can be found again
_MARK = "graphopt.convert-opset.node."


@dataclasses.dataclass(frozen=True)
class ConvertOpsetOptions:
    opset: int = option(17, f"target ai.onnx opset ({MIN_OPSET}..{MAX_OPSET})")

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(
                f"opset must be between {MIN_OPSET} and {MAX_OPSET} (what ONNX Runtime runs), "
                f"got {self.opset}"
            )


@register_pass
class ConvertOpsetPass(GraphoptPass):
    name = "convert-opset"
    Options = ConvertOpsetOptions
    # Adapters rewrite attributes into inputs and insert Reshapes; arithmetic is unchanged
    # except where an op's definition changed (verified against the original every run).
    tolerance = Tolerance.reassociation()
    summary = "move the model to another ai.onnx opset (onnx's version converter, verified)"

    def run(self, model: ir.Model) -> bool:
        target = self.options.opset
        have = ai_onnx_opset(model)
        if have == target:
            return self.decline(f"the model is already at ai.onnx opset {target}")
        refusal = _unconvertible(model, have, target)
        if refusal:
            return self.decline(refusal)
        if model.functions:
            ir.passes.common.InlinePass()(model)
            self.count("functions_inlined", 1)
        resize = _mark_old_resizes(model) if have <= 10 < target else {}

        def convert(proto: onnx.ModelProto) -> onnx.ModelProto:
            return onnx.version_converter.convert_version(proto, target)

        try:
            converted = _c_api_utils.call_onnx_api(convert, model)
        except Exception as exc:  # the converter raises RuntimeError with C++ assertions
            _unmark(model, resize)
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return self.decline(f"onnx's version converter cannot convert it: {reason[:300]}")
        got = {o.domain: o.version for o in converted.opset_import}.get("", 0)
        if got != target:
            _unmark(model, resize)
            return self.decline(f"onnx's version converter returned opset {got}, not {target}")
        new = ir.serde.deserialize_model(converted)
        _restore_initializers(model, new)
        self.count("asymmetric_resize", _fix_resizes(new, resize))
        _unmark(new, resize)
        model.graph = new.graph
        model.functions.clear()
        self.count(f"opset:{have}->{target}")
        return True


def _unconvertible(model: ir.Model, have: int, target: int) -> str:
    """Why the converter would get this model wrong (empty when it will not)."""
    if have < 13 <= target or target < 13 <= have:
        for node in model.graph.all_nodes():
            if node.op_type != "Hardmax" or node.domain not in ("", "ai.onnx"):
                continue
            x = node.inputs[0]
            rank = len(x.shape) if x is not None and x.shape is not None else None
            axis_attr = node.attributes.get("axis")
            axis = axis_attr.value if axis_attr is not None else (1 if have < 13 else -1)
            if rank is None or axis not in (-1, rank - 1):
                return (
                    f"Hardmax '{node.name}' on axis {axis} changes meaning at opset 13 and the "
                    "version converter does not adapt it"
                )
    return ""


def _mark_old_resizes(model: ir.Model) -> dict[str, str]:
    """Name every Upsample/Resize (opset <= 10 semantics) uniquely; returns mark -> old name."""
    marks = {}
    for i, node in enumerate(model.graph.all_nodes()):
        if node.op_type in ("Upsample", "Resize") and node.domain in ("", "ai.onnx"):
            mark = f"{_MARK}{i}"
            marks[mark] = node.name or ""
            node.name = mark
    return marks


def _fix_resizes(model: ir.Model, marks: dict[str, str]) -> int:
    n = 0
    for node in model.graph.all_nodes():
        if node.name in marks and node.op_type == "Resize":
            node.attributes["coordinate_transformation_mode"] = ir.AttrString(
                "coordinate_transformation_mode", "asymmetric"
            )
            node.attributes["nearest_mode"] = ir.AttrString("nearest_mode", "floor")
            n += 1
    return n


def _unmark(model: ir.Model, marks: dict[str, str]) -> None:
    if marks:
        for node in model.graph.all_nodes():
            if node.name in marks:
                node.name = marks[node.name]


def _restore_initializers(old: ir.Model, new: ir.Model) -> None:
    """Put the original tensors (kept out of the converter as inputs) back as initializers."""
    originally_inputs = {v.name for v in old.graph.inputs}
    graph = new.graph
    inputs = {v.name: v for v in graph.inputs}
    for name, old_value in old.graph.initializers.items():
        tensor = old_value.const_value
        value = graph.initializers.get(name)
        if name in inputs and name not in originally_inputs:
            graph.inputs.remove(inputs[name])  # every initializer went in as an input
        value = value or inputs.get(name)  # an IR 3 weight listed as an input comes back
        if value is None or tensor is None:
            continue
        value.const_value = tensor  # the original object: no copy of the data
        if name not in graph.initializers:
            graph.register_initializer(value)
