"""Sparsity passes: unstructured / N:M weight sparsification and structured pruning."""

from graphopt.passes.sparsify import prune_channels, reconstruct, sparsify_weights  # noqa: F401
