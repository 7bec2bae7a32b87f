"""tf2onnx's layer normalization (moments through GlobalAveragePool) as one LayerNormalization.

Keras' ``LayerNormalization`` reaches tf2onnx as ``tf.nn.moments`` plus a batch-norm style
affine, and tf2onnx writes the means over the last axis of a [batch, seq, channels] tensor as
``GlobalAveragePool`` (which averages every axis after the second)::

    mean = GlobalAveragePool(x)
    d = Sub(x, mean)
    var = GlobalAveragePool(Mul(d, d))
    g = Mul(Reciprocal(Sqrt(Add(var, eps))), gamma)
    y = Add(Mul(x, g), Add(Mul(Neg(mean), g), beta))

Eleven ops per normalization, none of which ONNX Runtime fuses (its LayerNorm fusion looks for
ReduceMean). ``y`` is ``LayerNormalization(x, gamma, beta, axis=-1, epsilon=eps)``; below
opset 17 the op is ONNX Runtime's own ``LayerNormalization`` in the default domain (as
onnxscript's rules write ``SimplifiedLayerNormalization``). Only rank-3 ``x`` matches: there
GlobalAveragePool reduces the last axis alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import _fusion_utils, pattern

from graphopt.ir import const_array as _const


class MomentsLayerNormFusion(pattern.RewriteRuleClassBase):
    """The GlobalAveragePool moments form above → LayerNormalization."""

    def pattern(self, op, x, eps, gamma, beta):
        mean = op.GlobalAveragePool(x)
        d = op.Sub(x, mean)
        var = op.GlobalAveragePool(op.Mul(d, d))
        g = op.Mul(op.Reciprocal(op.Sqrt(op.Add(var, eps))), gamma)
        return op.Add(op.Mul(x, g), op.Add(op.Mul(op.Neg(mean), g), beta))

    def check(self, op, x, eps, gamma, beta, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or len(x.shape) != 3 or not isinstance(x.shape[2], int):
            return result.fail("input is not [batch, seq, channels] with static channels", x)
        if x.dtype != ir.DataType.FLOAT:
            return result.fail("input is not float32", x)
        channels = int(x.shape[2])
        e = _const(eps)
        if e is None or e.size != 1:
            return result.fail("epsilon is not a constant scalar", eps)
        for v in (gamma, beta):
            c = _const(v)
            if c is None or c.size != channels or (c.ndim > 1 and c.shape[-1] != channels):
                return result.fail("scale/bias is not a constant per channel", v)
        return result

    def rewrite(self, op, x, eps, gamma, beta, **_):
        channels = int(x.shape[2])
        scale = op.initializer(
            ir.tensor(_const(gamma).reshape(channels).astype(np.float32)),  # type: ignore[union-attr]
            name=f"{gamma.name}_ln_scale",
        )
        bias = op.initializer(
            ir.tensor(_const(beta).reshape(channels).astype(np.float32)),  # type: ignore[union-attr]
            name=f"{beta.name}_ln_bias",
        )
        epsilon = float(_const(eps).reshape(-1)[0])  # type: ignore[union-attr]
        return op.LayerNormalization(x, scale, bias, axis=-1, epsilon=epsilon)


_rules = pattern.RewriteRuleSet([MomentsLayerNormFusion.rule()], commute=True)

fuse_moments_layernorm = _fusion_utils.apply_fusion_rules(_rules)
