"""Target passes: the graph's form chosen for what the execution provider runs fastest."""

from graphopt.passes.target import avoid_slow_fusions, move_stride_to_channels  # noqa: F401
