"""Sparsity passes: unstructured / N:M weight sparsification and structured pruning."""
