"""deduplicate-initializers: initializers with equal dtype, shape and bytes are stored once."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.core.adapter import IrPassAdapter
from graphopt.core.pass_base import Tolerance
from graphopt.core.registry import option, register_pass


@dataclasses.dataclass(frozen=True)
class DeduplicateInitializersOptions:
    size_limit: int = option(1 << 32, "skip tensors with more elements than this (hashing cost)")

    def __post_init__(self) -> None:
        if self.size_limit < 1:
            raise ValueError("size_limit must be >= 1")


@register_pass
class DeduplicateInitializersPass(IrPassAdapter):
    """Wraps onnx_ir's hashed deduplication (content hashes, then byte comparison)."""

    name = "deduplicate-initializers"
    Options = DeduplicateInitializersOptions
    tolerance = Tolerance.exact()
    summary = "store identical initializers once"

    def make_inner(self) -> ir.passes.PassBase:
        return _ContiguousDeduplication(size_limit=self.options.size_limit)


class _ContiguousDeduplication(ir.passes.common.DeduplicateHashedInitializersPass):
    """onnx_ir 1.1's pass hashes ``tensor.numpy()`` as is, which fails on a non-contiguous
    array ("ndarray is not C-contiguous"): onnxscript's constant folder leaves transposed
    views as initializers (dynamo-exported GPT-2). Those are made contiguous first."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.Tensor) and isinstance(tensor.raw, np.ndarray):
                    if not tensor.raw.flags.c_contiguous:
                        value.const_value = ir.tensor(
                            np.ascontiguousarray(tensor.raw), dtype=tensor.dtype, name=tensor.name
                        )
        return super().call(model)
