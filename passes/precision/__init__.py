"""Precision passes (lossy): per-node fp16/bf16/fp32 assignment."""

from graphopt.passes.precision import assign_precision  # noqa: F401
