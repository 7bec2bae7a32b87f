"""Quantization passes (lossy): static post-training int8 QDQ insertion."""

from graphopt.passes.quantize import insert_qdq  # noqa: F401
