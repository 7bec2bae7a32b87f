"""remove-initializer-inputs: weights listed as graph inputs become plain constants.

Why: exporters before IR version 4 (PyTorch 1.x's ``keep_initializers_as_inputs``, old
Caffe2/CNTK converters) list every initializer among the graph inputs, which makes it an
overridable default instead of a constant. ONNX Runtime then skips constant folding and
fusions on it, and every graphopt pass that needs a constant weight (quantization, BatchNorm
folding, pruning) sees none: ddddocr's detector stayed float under ``cpu-int8`` for this
reason. Nobody feeds a model its weights, so they leave the input list (onnx_ir's pass).
A model below IR version 4 must list every initializer as an input (ONNX Runtime refuses
one that is not: "Graph ctor should have created NodeArg for initializer"), so its IR
version is raised to 4 when any leave.
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import register_pass


@register_pass
class RemoveInitializerInputsPass(IrPassAdapter):
    """Wraps onnx_ir's RemoveInitializersFromInputsPass."""

    name = "remove-initializer-inputs"
    # The arithmetic is the same, but ONNX Runtime prepacks a constant weight and picks other
    # Conv/Gemm kernels for it than for an input: outputs move by float rounding (1e-7).
    tolerance = Tolerance.reassociation()
    summary = "weights listed as graph inputs (old exporters) become constants"

    def make_inner(self) -> ir.passes.PassBase:
        return ir.passes.common.RemoveInitializersFromInputsPass()

    def run(self, model: ir.Model) -> bool:
        modified = super().run(model)
        if modified and (model.ir_version or 0) < _IR_WITHOUT_INITIALIZER_INPUTS:
            model.ir_version = _IR_WITHOUT_INITIALIZER_INPUTS
            self.count("ir_version_raised")
        return modified


#: the first IR version whose initializers need not be graph inputs
_IR_WITHOUT_INITIALIZER_INPUTS = 4
