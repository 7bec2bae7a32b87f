"""qdq-insert's side of :mod:`graphopt.acceptance`: which int8 plans are timed and measured.

The acceptance rules (the budget's greedy fallback, "int8 must pay") are shared with
assign-precision; what is qdq-insert's own is what a trial is (a fresh plan with some nodes
kept float, :func:`.qdq_emit.trial`), which nodes are candidates, and the fallback from the
whole plan to its anchors when only they pay.
"""

from __future__ import annotations

import hashlib
from typing import Any

import onnx_ir as ir
from graphopt.passes.quantize import qdq_emit
from graphopt.passes.quantize.qdq_plan import REQUANT, SHARED, QdqRun

from graphopt import acceptance, runtime
from graphopt.ir import Pristine, iter_nodes


def latency_guard(
    run: QdqRun,
    model: ir.Model,
    pristine: Pristine,
    kept: dict[str, str],
    feed: dict[str, Any],
    threshold: float,
) -> tuple[bool, dict[str, Any]]:
    """Never slower than fp32: time the plan against the float model on this CPU.

    If the whole plan does not pay, try it without the integer-region ops (Add, Concat,
    pooling, data movement: only Conv/Gemm/MatMul/Gather), and keep those float (reason
    ``cost``) if that pays; if that does not pay either, the model stays float. Returns
    whether int8 pays, and the ``details["guard"]`` record. Timing is interleaved round-robin
    and compared round by round (:func:`graphopt.acceptance.compare_latency`).
    """
    float_sess = runtime.make_session(model, optimize=True)
    info: dict[str, Any] = {"threshold": threshold}
    ops = dict(run.quantized)
    region = {k: "cost" for k, op in ops.items() if op in REQUANT | SHARED}
    for label, extra in (("all", {}), ("anchors only", region)):
        trial = qdq_emit.trial(run, pristine, {**kept, **extra})
        timing = acceptance.compare_latency(
            float_sess, [runtime.make_session(trial, optimize=True)], feed
        )
        info[label] = {
            "float_ms": timing.base_ms,
            "int8_ms": timing.ms[0],
            "ratio": timing.ratios[0],
        }
        if acceptance.fastest_that_pays(timing, threshold) is not None:
            info["decision"] = label
            for name in extra:
                kept.setdefault(name, "cost")
                run.count(f"kept_float:{ops[name]}")
            return True, info
        if not region:
            break
    info["decision"] = "float: int8 does not pay on this CPU"
    run.count("guard:model_kept_float")
    return False, info


def _structure(trial: ir.Model) -> str:
    """What tells two trials of one plan apart: which nodes read which values (Q/DQ pairs
    included). Trials are built afresh, so tensor identities differ even when nothing else
    does; their scales follow from the same calibration wherever the structure is the same."""
    h = hashlib.blake2b(digest_size=16)
    for node in iter_nodes(trial):  # If/Loop bodies too: trials differ inside them
        ins = [v.name if v is not None else "" for v in node.inputs]
        h.update(repr((node.op_type, ins, [v.name for v in node.outputs])).encode())
    return h.hexdigest()


def apply_budget(
    run: QdqRun,
    probe: acceptance.BudgetProbe,
    pristine: Pristine,
    quantized: ir.Model,
    kept: dict[str, str],
) -> dict[str, Any]:
    """Keep the most sensitive nodes in float until the budget holds; the budget record.

    A node's sensitivity is how much the metric recovers when that node alone stays in
    float (a fresh plan without it, so upstream outputs that were quantized only for it
    go back to float too), measured with one ONNX Runtime session per candidate. Nodes
    then go back to float greedily, most sensitive first, each where it improves the
    metric, until the budget holds (:func:`graphopt.acceptance.fall_back`). Data movement ops
    follow their neighbours and are not candidates. ``quantized``: the plan as it stands.
    """
    start = probe(quantized)
    ops = dict(run.quantized)
    candidates = [k for k, op in ops.items() if op not in SHARED or k in run.embeddings]
    # Trials that come out the same model are measured once: a node of an integer region
    # back in float returns the whole region to float, so its members are one trial.
    measured: dict[str, float] = {_structure(quantized): start}

    def back(names: list[str]) -> float:
        floats = {**kept, **dict.fromkeys(names, "sensitivity")}
        trial = qdq_emit.trial(run, pristine, floats)
        key = _structure(trial)
        if key not in measured:
            measured[key] = probe(trial)
        return measured[key]

    def keep(name: str, gain: float) -> None:
        kept[name] = "sensitivity"
        run.count(f"kept_float:{ops[name]}")

    info = acceptance.fall_back(
        probe.budget,
        start,
        candidates,
        sensitivity=lambda name: back([name]),
        measure=back,
        keep=keep,
        start_key="quantized_all",
        chosen_key="kept_float",
        progress="qdq-insert sensitivity",
    )
    # what the search cost: one ONNX Runtime session per distinct trial model
    info.update(candidates=len(candidates), trials_measured=len(measured))
    return info
