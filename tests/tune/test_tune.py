"""``graphopt tune``: budgets, the data split, the candidate plan, the search on the digits CNN,
resuming, and the "nothing pays" path (the original back, exit 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphopt
from graphopt import ir as gir
from graphopt.cli.demo import demo_files
from graphopt.errors import DataError, UsageError
from graphopt.inputs import data as gdata
from graphopt.tune.candidates import (
    Candidate,
    TuneBudget,
    pareto_front,
    plan_candidates,
    split_data,
)


def test_budgets_absolute_and_relative() -> None:
    b = TuneBudget.parse("top1>=-0.5pt")
    assert (b.metric, b.threshold, b.delta) == ("top1", None, -0.005)
    assert b.resolve(0.99) == "top1>=0.985"
    assert TuneBudget.parse("cosine>=0.99").resolve(0.5) == "cosine>=0.99"
    assert TuneBudget.parse("cosine>=-1%").resolve(0.2) == "cosine>=0.99"  # vs itself: 1
    with pytest.raises(UsageError, match="unknown metric"):
        TuneBudget.parse("accuracy>=0.9")


def test_split_keeps_labels_with_their_feeds() -> None:
    feeds = [{"x": np.full((2, 1), i, np.float32)} for i in range(5)]
    labels = np.arange(10)  # two rows per feed
    s = gdata.Samples(feeds, "t", {"label": labels})
    calib, held, how = split_data(s)
    assert [int(f["x"][0, 0]) for f in calib.feeds] == [0, 2, 4]
    assert [int(f["x"][0, 0]) for f in held.feeds] == [1, 3]
    assert held.extras["label"].tolist() == [2, 3, 6, 7]
    assert "feeds 1, 3" in how["evaluation"]
    with pytest.raises(DataError, match="at least 2"):
        split_data(gdata.Samples(feeds[:1], "t"))


def test_plan_skips_what_cannot_apply_with_the_reason() -> None:
    plan = plan_candidates({"conv": 3, "matmul": 0, "const_matmul": 0}, "cpu", "top1>=0.9")
    by = {c.name: c for c in plan}
    assert by["weights-int4"].status == "skipped" and "MatMul" in by["weights-int4"].why
    assert by["int8-static-fallback"].budget == "top1>=0.9"
    # plain int8 is all int8, judged by tune's budget, not by qdq-insert's cosine floor
    assert "qdq-insert{budget=none," in by["int8-static"].pipeline
    assert by["int8-static"].budget == ""
    lean = by["int8-static-lean"]  # the cpu-int8 preset without SmoothQuant, under the budget
    assert "smooth=0}" in lean.pipeline and "smooth=0.7" not in lean.pipeline
    assert lean.budget == "top1>=0.9"
    assert by["prune-0.3"].status == "pending"
    assert "fp16" not in by  # no low precision on the CPU EP
    none = plan_candidates({"conv": 0, "matmul": 0, "const_matmul": 0}, "cuda", "cosine>=0.9")
    assert {c.name for c in none if c.status == "skipped"} >= {"prune-0.3", "int8-dynamic"}
    assert any(c.name == "fp16" for c in none)
    assert "int8-static-lean" not in {c.name for c in none}  # SmoothQuant's Muls: a CPU cost


class _Scripted:
    """A search whose builds give scripted results: the phases' decisions, without builds."""

    def __init__(self, outcomes: dict[str, dict[str, object]]) -> None:
        facts = {"conv": 0, "matmul": 12, "const_matmul": 12}
        self.candidates = plan_candidates(facts, "cpu", "cosine>=0.99")
        self.outcomes, self.built = outcomes, []

    def get(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def run(self, batch: list[Candidate]) -> None:
        for c in batch:
            if c.status == "pending":
                self.built.append(c.name)
                c.status = "over-budget"
                for k, v in self.outcomes.get(c.name, {}).items():
                    setattr(c, k, v)

    def skip(self, cand: Candidate, why: str) -> None:
        if cand.status == "pending":
            cand.status, cand.why = "skipped", why


@pytest.mark.parametrize("smoothed", [20, 0])
def test_search_goes_leaner_when_int8_meets_the_budget(smoothed: int) -> None:
    from graphopt.tune.search import phases as _phases

    s = _Scripted({"int8-static": {"status": "meets-budget", "smoothed": smoothed}})
    _phases(s, "cpu", "cosine>=0.99")  # type: ignore[arg-type]
    lean = s.get("int8-static-lean")
    if smoothed:
        assert "int8-static-lean" in s.built
    else:  # nothing was smoothed: the lean build would be int8-static again
        assert lean.status == "skipped" and "same as int8-static" in lean.why
    for name in ("int8-static-fallback", "int8-static-percentile"):
        assert s.get(name).status == "skipped" and "meets the budget" in s.get(name).why


def test_search_goes_safer_when_int8_misses_the_budget() -> None:
    from graphopt.tune.search import phases as _phases

    s = _Scripted({"int8-static": {"status": "over-budget", "smoothed": 20}})
    _phases(s, "cpu", "cosine>=0.99")  # type: ignore[arg-type]
    assert {"int8-static-fallback", "int8-static-percentile"} <= set(s.built)
    lean = s.get("int8-static-lean")
    assert lean.status == "skipped" and "already misses" in lean.why
    assert s.built.index("int8-static") < s.built.index("int8-static-fallback")


def test_a_finalist_is_judged_on_both_measurements() -> None:
    """ddddocr on this VM: int8 0.72x paired but 0.94x in the runoff, dynamic 0.83x / 0.92x;
    the runoff alone would pick dynamic, which the final rounds then measured at 1.05x."""
    from graphopt.tune.search import evidence as _evidence

    static = Candidate("s", "int8", "p", ratio_rounds=[0.70, 0.72, 0.74], runoff_rounds=[0.944])
    dynamic = Candidate("d", "int8", "p", ratio_rounds=[0.82, 0.83, 0.84], runoff_rounds=[0.923])
    assert _evidence(static) == pytest.approx((0.72 * 0.944) ** 0.5)
    assert _evidence(static) < _evidence(dynamic)
    assert _evidence(Candidate("x", "fp32", "p", ratio_rounds=[0.9, 1.1])) == pytest.approx(1.0)


def test_pareto_front() -> None:
    a = Candidate("a", "x", "p", accuracy=0.99, ratio=0.5)
    b = Candidate("b", "x", "p", accuracy=0.98, ratio=0.6)  # dominated by a
    c = Candidate("c", "x", "p", accuracy=1.0, ratio=0.9)
    d = Candidate("d", "x", "p")  # not measured
    assert [x.name for x in pareto_front([a, b, c, d])] == ["a", "c"]


def _data() -> tuple[Path, Path]:
    return demo_files()


def test_tune_digits_finds_a_model_within_budget_and_resumes(tmp_path: Path) -> None:
    model, data = _data()
    out = tmp_path / "tuned.onnx"
    said: list[str] = []
    res = graphopt.tune(
        model,
        str(data),
        "top1>=-1pt",
        output=out,
        batch=10,
        rounds=3,
        report_path=tmp_path / "r.json",
        md_path=tmp_path / "r.md",
        html_path=tmp_path / "r.html",
        say=said.append,
    )
    rep = json.loads((tmp_path / "r.json").read_text())
    assert out.is_file() and rep["output"] == str(out)
    assert rep["data"]["calibration"] != rep["data"]["evaluation"]
    for c in res.candidates:  # every candidate ends with a status, and a reason unless it won
        assert c.status in {"winner", "meets-budget", "slower", "over-budget", "failed", "skipped"}
        assert c.status in {"winner", "meets-budget"} or c.why
    judge = graphopt.accuracy.budget.Budget.parse(rep["budget"]["absolute"])
    # the written model meets the budget on the held-out feeds (odd feeds of DATA)
    samples = gdata.load_data(gir.load_model(model), data, batch=10)
    held = samples.subset(range(1, len(samples), 2))
    from graphopt import runtime

    ref = runtime.run_feeds(runtime.make_session(model), held.feeds)
    got = runtime.run_feeds(runtime.make_session(out), held.feeds)
    assert judge.holds(judge.measure(ref, got, held))
    if res.winner is not None:
        assert rep["winner_pipeline"] == res.winner.pipeline and res.winner.ratio < 1
    else:
        assert rep["nothing_pays"]
    assert "Budget `top1>=-1pt`" in (tmp_path / "r.md").read_text()
    page = (tmp_path / "r.html").read_text()
    assert "<table>" in page and "int8-static" in page
    from graphopt.bench.report import plots_available

    assert ("data:image/png;base64," in page) == plots_available()
    # a second run keeps what the first one finished
    said.clear()
    again = graphopt.tune(
        model, str(data), "top1>=-1pt", output=out, batch=10, rounds=3, say=said.append
    )
    assert any("kept from an earlier run" in s for s in said)
    assert not any("building" in s for s in said)
    first = {c.name: (c.accuracy, c.ratio_rounds) for c in res.candidates}
    assert {c.name: (c.accuracy, c.ratio_rounds) for c in again.candidates} == first
    # the kept winner competes again in a new runoff (a stale "winner" would be left out)
    winners = [c for c in again.candidates if c.status == "winner"]
    assert winners == ([again.winner] if again.winner else [])


def test_nothing_pays_gives_the_original_back_with_exit_0(tmp_path: Path) -> None:
    model, data = _data()
    out = tmp_path / "o.onnx"
    res = subprocess.run(
        [
            sys.executable, "-m", "graphopt", "tune", str(model), "--data", str(data),
            "--batch", "10", "--budget", "cosine>=1.5", "-o", str(out), "--rounds", "3",
            "--report", str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "nothing pays" in res.stdout
    assert out.read_bytes() == model.read_bytes()
    rep = json.loads((tmp_path / "r.json").read_text())
    # the original itself misses this absolute budget: said plainly, with the relative form
    assert rep["winner"] is None and rep["budget"]["original_meets"] is False
    said = " ".join(res.stdout.split())
    assert "the original itself scores cosine 1 on the" in said
    assert "--budget 'cosine>=-0.5pt'" in said
    assert "the original itself scores" in rep["nothing_pays"]


def test_time_limit_is_respected(tmp_path: Path) -> None:
    model, data = _data()
    res = graphopt.tune(model, str(data), "cosine>=0.99", output=tmp_path / "o.onnx",
                        batch=10, time_limit="0s")  # fmt: skip
    assert res.winner is None
    assert all(c.status == "skipped" for c in res.candidates)
    assert any("time limit" in c.why for c in res.candidates)


def _spec(tmp_path: Path, pipeline: str) -> dict[str, object]:
    """One local build of the digits CNN, as the search hands it to its backend."""
    from graphopt import runtime
    from graphopt.tune.build import save_samples

    model, data = _data()
    samples = gdata.load_data(gir.load_model(model), data).head(4)
    calib, held, _ = split_data(samples)
    reference = runtime.run_feeds(runtime.make_session(model), held.feeds)
    save_samples(tmp_path / "calib.npz", calib)
    save_samples(tmp_path / "eval.npz", held, reference)
    return {
        "model": str(model),
        "calib": str(tmp_path / "calib.npz"),
        "eval": str(tmp_path / "eval.npz"),
        "judge": "cosine>=0.9",
        "target": "cpu",
        "calib_cache": None,
        "pipeline": pipeline,
        "budget": "",
        "float_form": True,
        "output": str(tmp_path / "candidate.onnx"),
    }


def test_local_builds_run_in_a_worker_the_time_limit_stops(tmp_path: Path) -> None:
    """A build still running at the deadline is stopped (its worker killed, no file left);
    the next build gets a fresh worker."""
    import time

    from graphopt.tune.engine import LocalBackend as _Local

    spec = _spec(tmp_path, "cleanup,prune-channels{ratio=0.3},reconstruct,cpu-fp32")
    local = _Local()
    try:
        (stopped,) = local.map([spec], time.perf_counter() + 0.05, 7.0)
        assert stopped == {"status": "skipped", "why": "time limit (7 s) reached during its build"}
        assert local._pool is None and not Path(str(spec["output"])).exists()
        (built,) = local.map([{**spec, "pipeline": "cpu-fp32"}], time.perf_counter() + 600, 600)
        assert built["status"] == "within-budget", built
        assert Path(str(spec["output"])).is_file()
    finally:
        local.close()
    assert local._pool is None


def test_a_worker_that_dies_fails_its_build_at_once(tmp_path: Path) -> None:
    """Killed mid-build (as the OOM killer would), the build fails with the reason instead of
    waiting for the time limit; the next build gets a fresh worker."""
    import os
    import signal
    import threading
    import time

    from graphopt.tune.engine import LocalBackend as _Local

    spec = _spec(tmp_path, "cleanup,prune-channels{ratio=0.3},reconstruct,cpu-fp32")
    local = _Local()

    def kill_when_started() -> None:
        while not local._pid:
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(local._pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    try:
        t0 = time.perf_counter()
        (failed,) = local.map([spec], time.perf_counter() + 600, 600)
        killer.join()
        assert failed["status"] == "failed" and "died" in failed["why"]
        assert time.perf_counter() - t0 < 60 and local._pool is None
        (built,) = local.map([{**spec, "pipeline": "cpu-fp32"}], time.perf_counter() + 600, 600)
        assert built["status"] == "within-budget", built
    finally:
        local.close()


def test_bad_usage() -> None:
    model, data = _data()
    with pytest.raises(UsageError, match="--time"):
        graphopt.tune(model, str(data), "cosine>=0.99", time_limit="soon")
    with pytest.raises(UsageError, match="output folder"):
        graphopt.tune(model, str(data), "cosine>=0.99", output="/nonexistent/x.onnx")


def test_subset_keeps_an_extra_that_is_not_per_sample_whole() -> None:
    feeds = [{"x": np.zeros((1, 3), np.float32)} for _ in range(5)]
    s = gdata.Samples(feeds, "t", {"text": np.arange(5), "charset": np.arange(10)})
    sub = s.subset([0, 4])
    assert sub.extras["text"].tolist() == [0, 4]
    assert sub.extras["charset"].shape == (10,)  # 2 per feed, but feeds hold 1 sample


def test_ray_backend_without_ray_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _data()
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match="pip install"):
        graphopt.tune(model, str(data), "cosine>=0.99", backend="ray", batch=10)


@pytest.mark.slow
def test_ray_backend_gives_the_same_accuracies(tmp_path: Path) -> None:
    """Candidates built and scored as Ray tasks (inputs shipped through the object store)
    reach the same accuracies as local builds; latency is measured here either way."""
    ray = pytest.importorskip("ray")
    model, data = _data()
    kw = {"batch": 10, "rounds": 3, "time_limit": "10m"}
    local = graphopt.tune(model, str(data), "top1>=-1pt", work_dir=tmp_path / "local", **kw)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = graphopt.tune(
            model, str(data), "top1>=-1pt", work_dir=tmp_path / "ray", backend="ray", **kw
        )
    finally:
        ray.shutdown()
    assert remote.report["backend"] == "ray"
    # qdq-insert's latency guard times int8 inside the build, so under two parallel Ray
    # tasks it may decide otherwise: compare what both runs built
    acc = {c.name: c.accuracy for c in local.candidates}
    both = {c.name: c.accuracy for c in remote.candidates if c.accuracy and acc.get(c.name)}
    assert len(both) >= 3 and all(acc[k] == v for k, v in both.items())


def test_store_keeps_a_candidate_only_while_its_definition_is_the_same(tmp_path: Path) -> None:
    """A resumed tune must rebuild a candidate whose pipeline or fallback budget changed
    (int8-static's definition changed once, and a rerun kept its old failed result)."""
    from graphopt.tune.candidates import Candidate
    from graphopt.tune.engine import Store as _Store

    store = _Store(tmp_path, {"model": "m", "budget": "top1>=0.9"})
    done = Candidate("int8-static", "int8", "cpu-int8")
    done.status, done.why = "over-budget", "top1 0.5 misses"
    store.save(done)
    assert store.load(Candidate("int8-static", "int8", "cpu-int8"))["status"] == "over-budget"
    changed = Candidate("int8-static", "int8", "cleanup,qdq-insert{budget=none}")
    assert store.load(changed) is None
    assert store.load(Candidate("int8-static", "int8", "cpu-int8", budget="top1>=0.9")) is None
    other = _Store(tmp_path, {"model": "m", "budget": "top1>=0.95"})
    assert other.load(Candidate("int8-static", "int8", "cpu-int8")) is None
