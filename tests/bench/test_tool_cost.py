"""The tool's own cost, counted: ONNX Runtime sessions and shape inferences one optimize builds.

Why: qdq-insert's budget search builds one session per trial model, and a regression that
builds them per node again (or re-infers shapes per trial) only shows as minutes on large
models. Counts are deterministic where timings are not; a bound per scenario keeps the cost
from creeping back (raise it only with a reason).
"""

from __future__ import annotations

import collections
import math
import warnings

import onnx

import graphopt
from graphopt import runtime
from graphopt.cli import demo
from graphopt.core.pipeline import PRESETS

CPU_INT8 = PRESETS["cpu-int8"].replace("guard=true", "guard=false")
BUDGET = "cosine>=0.99999"


def _counting(monkeypatch) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    make_session, infer = runtime.make_session, onnx.shape_inference.infer_shapes

    def session(*args, **kwargs):
        counts["sessions"] += 1
        return make_session(*args, **kwargs)

    def shapes(*args, **kwargs):
        counts["shape_inferences"] += 1
        return infer(*args, **kwargs)

    monkeypatch.setattr(runtime, "make_session", session)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", shapes)
    return counts


def _qdq_details(result) -> dict:
    for step in result.report["passes"]:
        if step["pass"] == "qdq-insert":
            return step.get("details") or {}
    raise AssertionError("no qdq-insert step in the report")


def test_cpu_int8_budget_search_builds_a_bounded_number_of_sessions(monkeypatch) -> None:
    """The demo CNN under cpu-int8 (the guard off: int8 does not pay on a model this small) with
    a budget its all-int8 plan misses, verification on: qdq-insert measures
    each candidate's sensitivity, walks the helpful ones, then searches the shortest prefix of
    the rest in about 2·log2(n) trials. Sessions and shape inferences stay under the counts
    this scenario builds today."""
    model_path, data_path = demo.demo_files()
    counts = _counting(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = graphopt.optimize(model_path, CPU_INT8, data=data_path, budget=BUDGET)
    details = _qdq_details(result)
    budget = details["budget"]
    assert budget["met"], budget
    # the report says where the pass's time went, step by step
    assert set(details["seconds"]) == {"calibration", "fusion check", "budget search", "rewrite"}
    assert all(v >= 0 for v in details["seconds"].values())
    n = budget["candidates"]
    searched = budget.get("prefix_search")
    prefix_bound = 2 * math.ceil(math.log2(n + 1)) + 1
    if searched is not None:
        assert searched["probes"] <= 2 * math.ceil(math.log2(searched["of"] + 1)) + 1
    # the search: the whole plan, each candidate alone, the walk, the prefix search, at most;
    # which nodes help rides on cosines near the budget, so it is bounded, not pinned
    assert budget["trials_measured"] <= 1 + n + n + prefix_bound, budget
    # everything else is fixed: the search's reference outputs, the fusion check, the final
    # check and verification after each pass
    others = counts["sessions"] - budget["trials_measured"]
    assert others <= OTHER_SESSIONS_BOUND, (counts, budget)
    assert counts["shape_inferences"] <= SHAPE_INFERENCES_BOUND, counts


#: what the scenario builds today besides the search's trials
OTHER_SESSIONS_BOUND = 9
SHAPE_INFERENCES_BOUND = 2
