"""deduplicate-initializers: initializers with equal dtype, shape and bytes are stored once."""

from __future__ import annotations

import dataclasses

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
        return ir.passes.common.DeduplicateHashedInitializersPass(
            size_limit=self.options.size_limit
        )
