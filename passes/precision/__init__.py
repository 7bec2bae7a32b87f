"""Precision passes (lossy): per-node fp16/bf16/fp32 assignment."""
