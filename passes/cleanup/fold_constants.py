"""fold-constants: subgraphs computed only from constants are evaluated once, at compile time."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import PROVENANCE_KEY, Tolerance
from graphopt.core.registry import option, register_pass


@dataclasses.dataclass(frozen=True)
class FoldConstantsOptions:
    input_size_limit: int = option(
        1 << 20, "largest input tensor (elements) a folded node may read"
    )
    output_size_limit: int = option(1 << 22, "largest tensor (elements) a fold may create")
    shape_inference: bool = option(True, "run ONNX shape inference on each node while folding")

    def __post_init__(self) -> None:
        if self.input_size_limit < 0 or self.output_size_limit < 0:
            raise ValueError("size limits must be >= 0")


#: Provenance tags of the in-graph weight decoders that storage passes emit on purpose
#: (sparse values + bit mask, cluster indices + codebook); folding them would undo the pass.
STORAGE_DECODERS = frozenset({"compress-sparse", "cluster-weights"})
#: ConstantOfShape outputs up to this many elements are folded. onnxscript keeps every
#: ConstantOfShape (so a large zeros tensor is not stored), which leaves PyTorch's Pad
#: arithmetic (ConstantOfShape -> Concat -> ... -> pads) unfolded: on CREPE the pads of all
#: six Pads stayed computed, and shape inference lost every shape after the first Pad.
SMALL_CONSTANT_OF_SHAPE = 1024


def _should_fold(node: ir.Node) -> bool | None:
    """True/False to force the decision, None for onnxscript's default rules."""
    if node.metadata_props.get(PROVENANCE_KEY) in STORAGE_DECODERS:
        return False
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") and node.inputs:
        shape = node.inputs[0]
        if shape is not None and shape.const_value is not None:
            dims = shape.const_value.numpy().ravel()
            if (dims >= 0).all() and int(np.prod(dims)) <= SMALL_CONSTANT_OF_SHAPE:
                return True
    return None


class _SafeFolder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder, with guards around its per-node evaluators.

    * Small ConstantOfShape nodes are folded (see :data:`SMALL_CONSTANT_OF_SHAPE`); storage
      decoders are never folded (see :data:`STORAGE_DECODERS`).

    * CastLike carrying ``saturate``/``round_mode`` is left alone: onnxscript 0.7.2 rewrites
      it to Cast without those attributes (float8 results change from NaN to 448).
    * An evaluator that raises skips that node instead of aborting the whole pass (it
      crashed on SplitToSequence with a scalar, non-constant ``split``).
    """

    skipped = 0

    def process_node(self, node: ir.Node, is_function: bool) -> Any:
        if node.op_type == "CastLike" and (
            "saturate" in node.attributes or "round_mode" in node.attributes
        ):
            return None
        try:
            return super().process_node(node, is_function)
        except RuntimeError as exc:
            if "Error during constant folding" not in str(exc):
                raise
            self.skipped += 1
            return None


@register_pass
class FoldConstantsPass(IrPassAdapter):
    """Wraps onnxscript's constant folder (which also folds Shape of known shapes)."""

    name = "fold-constants"
    Options = FoldConstantsOptions
    tolerance = Tolerance.reassociation()
    summary = "evaluate constant subgraphs"

    def make_inner(self) -> ir.passes.PassBase:
        return _SafeFolder(
            should_fold=_should_fold,
            shape_inference=self.options.shape_inference,
            input_size_limit=self.options.input_size_limit,
            output_size_limit=self.options.output_size_limit,
        )
