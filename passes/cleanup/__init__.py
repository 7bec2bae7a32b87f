"""Lossless cleanups: the passes behind the ``cleanup`` preset."""

from graphopt.passes.cleanup import (  # noqa: F401
    deduplicate_initializers,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    eliminate_identity,
    fold_attention_biases,
    fold_batchnorm,
    fold_constants,
    infer_shapes,
    lift_constants,
    sort_topologically,
)
