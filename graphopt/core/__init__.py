"""Pass base, registry, pipeline text and the runner."""

from graphopt.core.pass_base import GraphoptPass, NoOptions, PassContext, Tolerance
from graphopt.core.pipeline import PRESETS, PassStep, Pipeline, RepeatGroup, parse
from graphopt.core.registry import all_passes, get_pass, option, register_pass
from graphopt.core.runner import Runner, RunResult, run_pipeline

__all__ = [
    "PRESETS",
    "GraphoptPass",
    "NoOptions",
    "PassContext",
    "PassStep",
    "Pipeline",
    "RepeatGroup",
    "RunResult",
    "Runner",
    "Tolerance",
    "all_passes",
    "get_pass",
    "option",
    "parse",
    "register_pass",
    "run_pipeline",
]
