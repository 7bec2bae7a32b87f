"""Quantization passes (lossy): static post-training int8 QDQ insertion."""

from graphopt.passes.quantize import (  # noqa: F401
    insert_qdq,
    quantize_attention,
    quantize_dynamic,
    quantize_recurrent,
    quantize_weights,
)
