"""Target passes: the graph's form chosen for what the execution provider runs fastest."""

from graphopt.passes.target import avoid_slow_fusions  # noqa: F401
