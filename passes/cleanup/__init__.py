"""Lossless cleanups: the passes behind the ``cleanup`` preset."""

from graphopt.passes.cleanup import (  # noqa: F401
    capture_loop_invariants,
    convert_opset,
    deduplicate_initializers,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    eliminate_identity,
    fold_attention_biases,
    fold_batchnorm,
    fold_constants,
    fuse_hardswish,
    infer_shapes,
    lift_constants,
    remove_initializer_inputs,
    sort_topologically,
)
