"""qdq-insert's latency guard: int8 is kept only where it is faster than float on this CPU.

The decisions are tested with fabricated timings (monkeypatched
``runtime.interleaved_latency``) so they do not depend on this machine's noise; one test runs
the real timing on the demo CNN and only checks that the report is complete and consistent.
"""

from __future__ import annotations

import collections
import warnings

import graphopt.passes.quantize.insert_qdq as qdq
import onnx_ir as ir
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.cli import demo
from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PassContext
from graphopt.inputs import data


def _demo() -> tuple[ir.Model, data.Samples]:
    model_path, data_path = demo.demo_files()
    model = gir.load_model(model_path)
    run_pipeline(model, "cleanup")
    return model, data.load_data(model, data_path, batch=10)


def _run(model: ir.Model, samples: data.Samples, **options: object):
    cls = get_pass("qdq-insert")
    p = cls(cls.Options(**options), PassContext(data=samples.head(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = p(model)
    return p, result.modified


def _fake_timings(monkeypatch: pytest.MonkeyPatch, ratios: list[float]) -> list[float]:
    """Each call to interleaved_latency reports float 10 ms and int8 10 ms * next ratio."""
    calls: list[float] = []
    todo = list(ratios)

    def fake(sessions, feed, *, rounds=3, **_):
        assert len(sessions) == 2
        r = todo.pop(0)
        calls.append(r)
        return [[0.010, 0.010 * r] for _ in range(rounds)]

    monkeypatch.setattr(runtime, "interleaved_latency", fake)
    return calls


def _ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph)


def test_guard_keeps_int8_that_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_timings(monkeypatch, [0.5])
    model, samples = _demo()
    p, modified = _run(model, samples, guard=True)
    assert modified and calls == [0.5]
    guard = p.details["guard"]
    assert guard["decision"] == "all" and guard["all"]["ratio"] == pytest.approx(0.5)
    assert _ops(model)["QuantizeLinear"] > 0 and "kept_float" not in p.details


def test_guard_drops_region_ops_when_only_anchors_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_timings(monkeypatch, [1.2, 0.8])
    model, samples = _demo()
    p, modified = _run(model, samples, guard=True)
    assert modified and calls == [1.2, 0.8]
    assert p.details["guard"]["decision"] == "anchors only"
    kept = p.details["kept_float"]
    assert set(kept.values()) == {"cost"}
    region_ops = {op for name, op in _node_ops(model).items() if name in kept}
    assert region_ops and region_ops <= qdq.REQUANT | qdq.SHARED
    for node in model.graph:  # the Conv/Gemm anchors are still quantized
        if node.op_type in ("Conv", "Gemm"):
            assert node.inputs[1].producer().op_type == "DequantizeLinear", node.name
    assert not set(kept) & set(p.quantized)  # region ops no longer quantized...
    assert p.details["fusion_final"]["fused"] == 5  # ...only the 3 Conv + 2 Gemm are
    assert p.stats["kept_float:MaxPool"] == 1 and p.stats["kept_float:Flatten"] == 1, p.stats


def test_guard_times_again_near_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.96 is within noise of 0.97: fresh sessions are timed and the pooled rounds decide
    (median of 0.96 x3 and 0.90 x3: 0.93, int8 pays); 0.5 is not timed twice."""
    calls = _fake_timings(monkeypatch, [0.96, 0.90])
    model, samples = _demo()
    p, modified = _run(model, samples, guard=True)
    assert modified and calls == [0.96, 0.90]
    timing = p.details["guard"]["all"]
    assert timing["retimed"] and timing["ratio"] == pytest.approx(0.93)
    calls = _fake_timings(monkeypatch, [0.5])
    model, samples = _demo()
    p, _ = _run(model, samples, guard=True)
    assert calls == [0.5] and "retimed" not in p.details["guard"]["all"]


def test_interleaved_latency_rotates_who_runs_first() -> None:
    order: list[int] = []

    class Session:
        def __init__(self, k: int) -> None:
            self.k = k

        def run(self, outputs: object, feed: object) -> None:
            order.append(self.k)

    rows = runtime.interleaved_latency(
        [Session(0), Session(1), Session(2)], {}, rounds=3, iters=1, min_round_seconds=0
    )
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    timed = order[6:]  # after two warm-up runs each
    assert timed == [0, 1, 2, 1, 2, 0, 2, 0, 1]


def test_interleaved_latency_caps_slow_rounds() -> None:
    """A session slower than the cap runs 3 times a round, not ``iters``; without a cap the
    count stays (benchmarks ask for theirs)."""
    import time

    runs: list[int] = []

    class Slow:
        def run(self, outputs: object, feed: object) -> None:
            runs.append(1)
            time.sleep(0.02)

    runtime.interleaved_latency([Slow()], {}, rounds=2, iters=10, max_round_seconds=0.01)
    assert len(runs) == 2 + 2 * 3
    runs.clear()
    runtime.interleaved_latency([Slow()], {}, rounds=1, iters=10, min_round_seconds=0)
    assert len(runs) == 2 + 10


def _node_ops(model: ir.Model) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph}


def test_guard_keeps_the_model_float_when_int8_never_pays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_timings(monkeypatch, [1.1, 1.05])
    model, samples = _demo()
    before = gir.serialize(model)
    p, modified = _run(model, samples, guard=True)
    assert not modified
    assert gir.serialize(model) == before  # not even node names changed
    assert p.details["guard"]["decision"].startswith("float")
    assert p.stats["guard:model_kept_float"] == 1


def test_guard_off_by_default_and_on_in_the_cpu_int8_preset() -> None:
    from graphopt.core.pipeline import PRESETS, parse

    assert get_pass("qdq-insert").Options().guard is False
    steps = [s for s in parse(PRESETS["cpu-int8"]).steps() if s.name == "qdq-insert"]
    assert steps and steps[0].options.guard is True


def test_guard_real_timing_report_on_demo() -> None:
    model, samples = _demo()
    p, modified = _run(model, samples, guard=True)
    guard = p.details["guard"]
    assert guard["all"]["float_ms"] > 0 and guard["all"]["int8_ms"] > 0
    assert guard["decision"] in ("all", "anchors only") or guard["decision"].startswith("float")
    assert modified == (not guard["decision"].startswith("float"))
