"""qdq-insert's side of :mod:`graphopt.accuracy.acceptance`: which int8 plans are timed and
measured.

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
from graphopt.passes.quantize.qdq_plan import (
    REQUANT,
    SHARED,
    QdqRun,
    numbering,
    plan_model,
    plan_signature,
)

from graphopt import runtime
from graphopt.accuracy import acceptance
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
    and compared round by round (:func:`graphopt.accuracy.acceptance.compare_latency`); a ratio near
    the threshold is timed again with fresh sessions (:func:`graphopt.accuracy.acceptance.settle`).
    """
    float_sess = runtime.make_session(model, optimize=True)
    info: dict[str, Any] = {"threshold": threshold}
    ops = dict(run.quantized)
    region = {k: "cost" for k, op in ops.items() if op in REQUANT | SHARED}
    for label, extra in (("all", {}), ("anchors only", region)):
        trial = qdq_emit.trial(run, pristine, {**kept, **extra})
        timing = acceptance.compare_latency(
            float_sess, [runtime.make_session(trial, optimize=True)], feed, threshold
        )
        timing = acceptance.settle(  # near the threshold: fresh sessions, twice the rounds
            timing,
            threshold,
            lambda trial=trial: acceptance.compare_latency(
                runtime.make_session(model, optimize=True),
                [runtime.make_session(trial, optimize=True)],
                feed,
            ),
        )
        info[label] = {
            "float_ms": timing.base_ms,
            "int8_ms": timing.ms[0],
            "ratio": timing.ratios[0],
        }
        if timing.retimed:
            info[label]["retimed"] = True
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
    metric, until the budget holds (:func:`graphopt.accuracy.acceptance.fall_back`). Data
    movement ops follow their neighbours and are not candidates. ``quantized``: the plan as it
    stands.
    """
    start = probe(quantized)
    ops = dict(run.quantized)
    candidates = [k for k, op in ops.items() if op not in SHARED or k in run.embeddings]
    # Trials that come out the same model are measured once: a node of an integer region
    # back in float returns the whole region to float, so its members are one trial. Most
    # such trials are known before they are written, by their plan (:class:`_Plans`).
    measured: dict[str, float] = {_structure(quantized): start}
    plans = _Plans(run, pristine)

    def back(names: list[str]) -> float:
        floats = {**kept, **dict.fromkeys(names, "sensitivity")}
        known = plans.get(floats, run)
        if known is not None:
            return known
        whys = dict(run.activation_why)
        trial = qdq_emit.trial(run, pristine, floats)
        key = _structure(trial)
        if key not in measured:
            measured[key] = probe(trial)
        written = {k: v for k, v in run.activation_why.items() if whys.get(k) != v}
        plans.add(measured[key], run, written)
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
    # what the search cost: the trials it asked for, one rewrite per distinct plan, one ONNX
    # Runtime session per distinct model (the whole plan's included)
    info.update(
        candidates=len(candidates),
        trials_planned=plans.asked,
        trials_written=plans.written,
        trials_measured=len(measured),
    )
    return info


class _Plans:
    """The budget search's trials by plan: a plan seen before is neither written nor measured.

    A hit also restores what writing that trial would have left in ``run`` (the nodes it
    quantized, the activations' reasons), so the steps after the search see the run exactly
    as if every trial had been written.
    """

    def __init__(self, run: QdqRun, pristine: Pristine) -> None:
        self.model = pristine.copy()  # planned on, never written (planning reads only)
        self.ids = numbering(self.model)
        self.exclude = set(run.exclude)
        self.seen: dict[tuple, tuple[float, dict[str, str], set[str], dict[str, str]]] = {}
        self.asked = 0
        self.written = 0
        self._last: tuple = ()  # the plan get() looked up last, which add() then records

    def get(self, floats: dict[str, str], run: QdqRun) -> float | None:
        self.asked += 1
        plan = plan_model(run, self.model, self.exclude | set(floats))
        self._last = plan_signature(plan, self.ids)
        hit = self.seen.get(self._last)
        if hit is None:
            return None
        value, quantized, embeddings, whys = hit
        run.quantized, run.embeddings = dict(quantized), set(embeddings)
        run.activation_why.update(whys)
        return value

    def add(self, value: float, run: QdqRun, whys: dict[str, str]) -> None:
        """``value``: the metric of the trial just written for the plan :meth:`get` missed;
        ``run`` holds what that rewrite left, ``whys``: the activations' reasons it wrote."""
        self.written += 1
        self.seen[self._last] = (
            value,
            dict(run.quantized),
            set(run.embeddings),
            whys,
        )
