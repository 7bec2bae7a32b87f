"""Sparsity passes: unstructured / N:M sparsification, structured pruning, reconstruction,
weight sharing and compact storage."""

from graphopt.passes.sparsify import (  # noqa: F401
    cluster_weights,
    compress,
    prune_channels,
    reconstruct,
    sparsify_weights,
)
