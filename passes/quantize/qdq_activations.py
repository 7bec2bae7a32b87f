"""Integer forms of the activations ONNX Runtime has no integer kernel for.

Why: a float activation between two integer convolutions costs a DequantizeLinear, the float
kernel and a QuantizeLinear, which on mobile CNNs (HardSwish, squeeze-excite's HardSigmoid)
and detectors (SiLU) eats what int8 convolutions save. ONNX Runtime's CPU EP has table
lookups for Sigmoid and LeakyRelu (``QLinearSigmoid``, ``QLinearLeakyRelu``) and integer
Add/Mul, nothing for the hard activations. Their integer forms here are exact rewrites of
``Q(f(DQ(x)))``:

* ``HardSigmoid(x) = clip(a*x + b, 0, 1)`` quantized with zero point 0 and scale ``s`` equals
  ``Q(x + b/a)`` with scale ``s/a`` read back with scale ``s``: uint8 saturation does the
  clip. ORT runs it as one ``QLinearAdd``; the result is exactly what DQ→HardSigmoid→Q gives
  (up to float rounding of the scales).
* ``HardSwish(x) = x * HardSigmoid(x)``: the gate as above on its own finest scale, then a
  ``QLinearMul``. The gate's rounding (half a step, only where -3 < x < 3) moves the product
  by at most ``max|x| * s_gate / 2``; the form is used only where that is under one output
  step, so it stays within one LSB of DQ→HardSwish→Q (tests check all 256 inputs).
* SiLU (``x * Sigmoid(x)``) needs no rewrite: ``QLinearSigmoid`` + ``QLinearMul`` are ORT's.

Where a form does not apply (symmetric int8 activations cannot saturate at 0; the bound
above fails), the activation keeps the float form between its Q/DQ pairs, and the reason is
recorded. :func:`forms` names the form every activation of a model took, for the report.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const

#: activations rewritten into integer Add/Mul when quantized
SATURATING = frozenset({"HardSwish", "HardSigmoid"})

INTEGER_ADD = "QLinearAdd"
INTEGER_ADD_MUL = "QLinearAdd+QLinearMul"
INTEGER_SILU = "QLinearSigmoid+QLinearMul"
FLOAT_BETWEEN_QDQ = "float between Q/DQ"


def gate_params(node: ir.Node) -> tuple[float, float]:
    """(alpha, beta) of the hard-sigmoid gate: HardSwish's fixed 1/6 and 1/2."""
    if node.op_type == "HardSwish":
        return 1.0 / 6.0, 0.5
    return float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))


def quantized_range(dq: ir.Node) -> tuple[float, float] | None:
    """The smallest and largest value a per-tensor DequantizeLinear can produce."""
    scale, zp = _const(dq.inputs[1]), _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
    if scale is None or scale.size != 1:
        return None
    z = int(zp.reshape(())) if zp is not None and zp.size == 1 else 0
    info = np.iinfo(zp.dtype if zp is not None else np.uint8)
    s = float(scale.reshape(()))
    return s * (info.min - z), s * (info.max - z)


def hardswish_error_steps(x_range: tuple[float, float], gate_scale: float, y_scale: float) -> float:
    """Bound of |integer form - DQ→HardSwish→Q| before the final rounding, in output steps.

    The gate is exact where it saturates (x <= -3 or x >= 3); elsewhere its half-step
    rounding is multiplied by |x|.
    """
    lo, hi = max(x_range[0], -3.0), min(x_range[1], 3.0)
    if lo >= hi:
        return 0.0
    worst = max(abs(lo), abs(hi))
    return worst * gate_scale / 2.0 / y_scale


def why_float(node: ir.Node, act_type: str, x_range: tuple[float, float] | None) -> str:
    """Why ``node`` cannot take its integer form ('' when it can), before its output scale is
    known (:func:`hardswish_error_steps` decides the rest)."""
    if act_type != "uint8":
        return "symmetric int8 activations cannot saturate at 0 (uint8 only)"
    alpha, _ = gate_params(node)
    if not np.isfinite(alpha) or alpha <= 0:
        return f"alpha={alpha} (the gate must rise with x)"
    if x_range is None:
        return "its input is not per-tensor quantized"
    return ""


def gate_scale(alpha: float, beta: float, x_hi: float) -> float:
    """The finest uint8 scale (zero point 0) that holds clip(alpha*x + beta, 0, 1) for
    x up to ``x_hi``: the largest gate value / 255."""
    top = min(1.0, max(alpha * x_hi + beta, 0.0))
    return top / 255.0 if top > 0 else 1.0 / 255.0


def forms(graph: ir.Graph, why: dict[str, str]) -> dict[str, str]:
    """The form each activation of ``graph`` took: node name -> "op: form".

    Rewritten activations carry their form in metadata; a SiLU is a Sigmoid whose output and
    input feed one Mul, integer when both sit between Q/DQ. ``why``: node name -> why it is
    float (the rewrite's own reasons, the budget's, the guard's).
    """
    found: dict[str, str] = {}
    for node in graph:
        name = node.name or ""
        if FORM_KEY in node.metadata_props:
            found[name] = node.metadata_props[FORM_KEY]
            continue
        if node.op_type == "Sigmoid":
            mul = _silu_mul(node)
            if mul is None:
                continue
            op, form = "SiLU", _silu_form(node, mul)
        elif node.op_type in SATURATING:
            op = node.op_type
            form = FLOAT_BETWEEN_QDQ if _reads_dq(node) and _feeds_q(node) else "float"
        else:
            continue
        reason = why.get(name) or (why.get(mul.name or "") if op == "SiLU" else "")
        found[name] = f"{op}: {form}" + (f" ({reason})" if reason and form != INTEGER_SILU else "")
    return found


def summary(found: dict[str, str]) -> str:
    """One line: how many activations took each form (reasons left to the report)."""
    counts: dict[str, int] = {}
    for form in found.values():
        key = form.split(" (", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items()))


#: node metadata: the integer form a rewritten activation took (on the node that now bears
#: the activation's name)
FORM_KEY = "pkg.graphopt.qdq-insert.activation_form"


def _silu_mul(sig: ir.Node) -> ir.Node | None:
    """The Mul of ``x * Sigmoid(x)``, read through a Q/DQ pair on either side."""
    uses = _readers(sig.outputs[0])
    if len(uses) != 1 or uses[0].node.op_type != "Mul":
        return None
    mul = uses[0].node
    other = mul.inputs[1 - uses[0].idx]
    return mul if _same_tensor(other, sig.inputs[0]) else None


def _readers(value: ir.Value) -> list[ir.Usage]:
    """Who reads ``value``, looking through one QuantizeLinear -> DequantizeLinear pair."""
    uses = list(value.uses())
    if len(uses) == 1 and uses[0].node.op_type == "QuantizeLinear":
        dqs = [u.node for u in uses[0].node.outputs[0].uses()]
        if len(dqs) == 1 and dqs[0].op_type == "DequantizeLinear":
            return list(dqs[0].outputs[0].uses())
    return uses


def _same_tensor(a: ir.Value | None, b: ir.Value | None) -> bool:
    """The same value, or DequantizeLinears of the same quantized tensor."""
    if a is None or b is None:
        return False
    if a is b:
        return True
    pa, pb = a.producer(), b.producer()
    return (
        pa is not None
        and pb is not None
        and pa.op_type == pb.op_type == "DequantizeLinear"
        and pa.inputs[0] is pb.inputs[0]
    )


def _silu_form(sig: ir.Node, mul: ir.Node) -> str:
    if _reads_dq(sig) and _feeds_q(sig) and _feeds_q(mul):
        return INTEGER_SILU
    if _reads_dq(sig) or _feeds_q(mul):
        return FLOAT_BETWEEN_QDQ
    return "float"


def _reads_dq(node: ir.Node) -> bool:
    v = node.inputs[0] if node.inputs else None
    p = v.producer() if v is not None else None
    return p is not None and p.op_type == "DequantizeLinear"


def _feeds_q(node: ir.Node) -> bool:
    uses = list(node.outputs[0].uses())
    return bool(uses) and all(u.node.op_type == "QuantizeLinear" for u in uses)
