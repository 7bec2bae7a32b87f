"""infer-shapes: ONNX shape inference fills in value types and shapes for later passes."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import option, register_pass


@dataclasses.dataclass(frozen=True)
class InferShapesOptions:
    strict: bool = option(False, "fail on inference errors instead of leaving shapes unknown")
    data_prop: bool = option(True, "propagate constant shape values through Shape/Gather/Concat")


@register_pass
class InferShapesPass(IrPassAdapter):
    """Wraps onnx_ir's ShapeInferencePass (which calls onnx's shape inference)."""

    name = "infer-shapes"
    Options = InferShapesOptions
    tolerance = Tolerance.exact()
    summary = "infer value types and shapes"

    def make_inner(self) -> ir.passes.PassBase:
        return ir.passes.common.ShapeInferencePass(
            check_type=self.options.strict,
            strict_mode=self.options.strict,
            data_prop=self.options.data_prop,
        )
