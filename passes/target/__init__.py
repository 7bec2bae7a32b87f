"""Target passes: the graph's form chosen for what the execution provider runs fastest."""

from graphopt.passes.target import (  # noqa: F401
    avoid_slow_fusions,
    fuse_ort_kernels,
    fuse_qdq_matmul_bias,
    fuse_qdq_sibling_matmuls,
    move_stride_to_channels,
)
