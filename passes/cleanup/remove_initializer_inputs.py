"""remove-initializer-inputs: weights listed as graph inputs become plain constants.

Why: exporters before IR version 4 (PyTorch 1.x's ``keep_initializers_as_inputs``, old
Caffe2/CNTK converters) list every initializer among the graph inputs, which makes it an
overridable default instead of a constant. ONNX Runtime then skips constant folding and
fusions on it, and every graphopt pass that needs a constant weight (quantization, BatchNorm
folding, pruning) sees none: ddddocr's detector stayed float under ``cpu-int8`` for this
reason. Nobody feeds a model its weights, so they leave the input list (onnx_ir's pass).
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
