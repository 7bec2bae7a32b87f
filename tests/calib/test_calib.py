"""Calibration statistics: exact streaming histograms, range methods, collection and cache."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.calib import (
    TensorStats,
    cache_key,
    collect_stats,
    compute_range,
    compute_ranges,
    load_or_collect,
    load_stats,
    model_hash,
    save_stats,
)
from graphopt.calib.search import kl_divergences
from graphopt.errors import DataError, UsageError
from graphopt.inputs.data import Samples, load_data

RNG = np.random.default_rng(1234)


def _gaussian(n: int = 400_000, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * sigma).astype(np.float32)


def _growing_data() -> np.ndarray:
    """Values whose range grows by several powers of two along the array."""
    rng = np.random.default_rng(7)
    parts = [rng.standard_normal(5000) * s for s in (1e-3, 0.3, 5.0, 40.0, 1000.0)]
    parts.append(np.zeros(300))
    return np.concatenate(parts).astype(np.float32)


def _assert_same(a: TensorStats, b: TensorStats) -> None:
    assert a.count == b.count
    assert a.min == b.min and a.max == b.max
    assert a.half_range == b.half_range
    assert a.zero_count == b.zero_count
    np.testing.assert_array_equal(a.hist, b.hist)
    # row statistics are per row of the last axis: splitting a 1-D array splits its row
    da, db = a.to_dict(), b.to_dict()
    for key in ("row_max_min", "row_len", "hist"):
        da.pop(key), db.pop(key)
    assert da == db


def test_row_statistics_stream_over_leading_axes_and_skip_constant_rows() -> None:
    """Smallest row maximum over the last axis, whatever the feed split; a constant row (a
    fully masked attention row) and -inf/-3.4e38 mask values do not count."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 16)).astype(np.float32) + 3.0
    x[..., 10:] = np.finfo(np.float32).min  # masked keys
    x[2, 1, :] = np.finfo(np.float32).min  # a fully masked row
    x[4, 0, 5] = -np.inf
    want = float(np.delete(x.reshape(-1, 16), 2 * 4 + 1, axis=0).max(axis=1).min())
    at_once = TensorStats().update(x)
    assert at_once.row_max_min == pytest.approx(want) and at_once.row_len == 16
    streamed = TensorStats()
    for part in np.array_split(x, 3):
        streamed.update(part)
    assert streamed == at_once
    merged = TensorStats().update(x[:2]).merge(TensorStats().update(x[2:]))
    assert merged == at_once
    assert TensorStats.from_dict(at_once.to_dict()) == at_once
    assert TensorStats().update(np.float32(2.0)).row_max_min == np.inf  # no rows: no value


# ------------------------------------------------------------------------------ histogram


def test_histogram_matches_numpy_with_exact_edges() -> None:
    x = _growing_data()
    s = TensorStats(1024).update(x)
    r = s.half_range
    assert r > np.abs(x).max() >= r / 2  # smallest power of two strictly above amax
    edges = np.linspace(-r, r, 1025)  # powers of two: these edges are exact
    expected, _ = np.histogram(x.astype(np.float64), bins=edges)
    np.testing.assert_array_equal(s.hist, expected)
    assert s.hist[512] >= 300  # exact zeros sit in the bin right of the 0 edge


@pytest.mark.parametrize("chunks", [2, 7, 64])
def test_chunked_updates_equal_one_update_after_growth(chunks: int) -> None:
    x = _growing_data()
    at_once = TensorStats().update(x)
    streamed = TensorStats()
    for part in np.array_split(x, chunks):
        streamed.update(part)
    _assert_same(streamed, at_once)
    # the range grew many times on the way; the order of chunks does not matter either
    backwards = TensorStats()
    for part in reversed(np.array_split(x, chunks)):
        backwards.update(part)
    _assert_same(backwards, at_once)


def test_merge_equals_combined() -> None:
    x = _growing_data()
    parts = np.array_split(RNG.permutation(x), 5)
    merged = TensorStats()
    for part in parts:
        merged.merge(TensorStats().update(part))
    _assert_same(merged, TensorStats().update(x))
    # merging into a wider-range stats object, and empty or all-zero ones, is exact too
    wide = TensorStats().update(parts[0] * 0 + 3000.0)
    wide.merge(TensorStats().update(parts[1])).merge(TensorStats()).merge(
        TensorStats().update(np.zeros(10, np.float32))
    )
    ref = TensorStats().update(np.concatenate([parts[0] * 0 + 3000.0, parts[1], np.zeros(10)]))
    _assert_same(wide, ref)
    with pytest.raises(ValueError, match="bins"):
        TensorStats(1024).merge(TensorStats(2048))


def test_nonfinite_values_are_counted_and_ignored() -> None:
    x = np.array([1.0, np.nan, -2.0, np.inf, -np.inf, 0.0, np.nan], dtype=np.float32)
    s = TensorStats().update(x).update(np.full(3, np.nan, np.float16))
    assert (s.count, s.nan_count, s.inf_count, s.zero_count) == (3, 5, 2, 1)
    assert (s.min, s.max) == (-2.0, 1.0)
    assert int(s.hist.sum()) == 3
    assert TensorStats().update(np.arange(5, dtype=np.int64)).max == 4.0


def test_dict_roundtrip_and_validation() -> None:
    s = TensorStats(256).update(_growing_data())
    again = TensorStats.from_dict(s.to_dict())
    _assert_same(again, s)
    bad = s.to_dict()
    bad["hist"] = bad["hist"][:-1]
    with pytest.raises(ValueError):
        TensorStats.from_dict(bad)
    bad = s.to_dict()
    bad["half_range"] = 3.0
    with pytest.raises(ValueError):
        TensorStats.from_dict(bad)
    with pytest.raises(UsageError):
        TensorStats(1000)


# ---------------------------------------------------------------------------------- ranges


def test_minmax_and_percentile_on_known_distributions() -> None:
    u = np.random.default_rng(3).uniform(-1.0, 3.0, 1_000_000).astype(np.float32)
    s = TensorStats().update(u)
    w = s.bin_width
    assert s.minmax() == (float(u.min()), float(u.max()))
    assert s.minmax(symmetric=True) == (-float(u.max()), float(u.max()))
    lo, hi = s.percentile(99.0)  # 0.5 % cut from each tail of a width-4 uniform: 0.02
    assert lo == pytest.approx(-0.98, abs=2 * w + 0.003)
    assert hi == pytest.approx(2.98, abs=2 * w + 0.003)
    g = TensorStats().update(_gaussian(1_000_000, sigma=2.0))
    lo, hi = g.percentile(99.99)
    assert lo == pytest.approx(-2 * 3.8906, rel=0.02) and hi == pytest.approx(2 * 3.8906, rel=0.02)
    lo, hi = g.percentile(99.0, symmetric=True)  # |x| 99th percentile: 2.5758 sigma
    assert hi == -lo == pytest.approx(2 * 2.5758, rel=0.01)
    assert g.percentile(100.0) == g.minmax()


@pytest.mark.parametrize("symmetric", [True, False])
def test_entropy_and_mse_on_gaussian_are_a_few_sigma(symmetric: bool) -> None:
    sigma = 0.5
    s = TensorStats().update(_gaussian(1_000_000, sigma=sigma))
    for method, (low, high) in {"entropy": (2.5, 6.0), "mse": (3.0, 5.0)}.items():
        lo, hi = compute_range(s, method, symmetric=symmetric)
        assert low * sigma < hi < high * sigma and hi <= s.max, (method, hi / sigma)
        assert -lo > low * sigma, (method, lo / sigma)
        if symmetric:
            assert lo == -hi


def test_outlier_is_clipped_by_all_but_minmax() -> None:
    x = _gaussian(2_000_000)  # MSE weighs one outlier by its share: keep it rare
    x[1234] = 1000.0
    s = TensorStats().update(x)
    assert compute_range(s, "minmax", symmetric=True)[1] == 1000.0
    for symmetric in (True, False):
        assert compute_range(s, "percentile", symmetric=symmetric)[1] < 10.0
        for method in ("entropy", "mse"):
            hi = compute_range(s, method, symmetric=symmetric)[1]
            assert hi < 500.0, (method, symmetric, hi)


def test_relu_zeros_do_not_collapse_the_entropy_threshold() -> None:
    relu = np.maximum(_gaussian(1_000_000), 0.0)
    s = TensorStats().update(relu)
    assert s.zero_count > 400_000
    for symmetric in (True, False):
        lo, hi = compute_range(s, "entropy", symmetric=symmetric)
        assert hi > 2.5 and (lo == 0.0 or symmetric)
        assert compute_range(s, "mse", symmetric=symmetric)[1] > 2.5


def test_compute_range_contains_zero_and_checks_its_input() -> None:
    s = TensorStats().update(np.random.default_rng(0).uniform(1.0, 2.0, 1000))
    for method in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = compute_range(s, method, symmetric=False)
        assert lo == 0.0 and 1.0 < hi <= 2.0
    assert compute_range(TensorStats().update(np.zeros(4)), "entropy", symmetric=True) == (0, 0)
    with pytest.raises(UsageError, match="unknown calibration method"):
        compute_range(s, "kl", symmetric=True)
    with pytest.raises(DataError, match="no finite values"):
        compute_range(TensorStats().update(np.array([np.nan])), "minmax", symmetric=True)
    with pytest.raises(DataError, match="'t'"):
        compute_ranges({"t": TensorStats()}, "mse", symmetric=True)


def _kl_loop(h: np.ndarray, s: int, e: int, levels: int, eps: float = 1e-4) -> float:
    """Reference: the TensorRT/ONNX Runtime loop for one window, written plainly."""
    p = h[s:e].astype(np.float64).copy()
    p[0] += h[:s].sum()
    p[-1] += h[e:].sum()
    m = e - s
    group = np.arange(m) * levels // m
    q = np.zeros(m)
    for c in range(levels):
        sel = group == c
        nonzero = int((p[sel] > 0).sum())
        if nonzero:
            q[sel] = np.where(p[sel] > 0, h[s:e][sel].sum() / nonzero, 0.0)
    q = np.where((p > 0) & (q == 0), eps, q)
    pn, qn = p / p.sum(), q / q.sum()
    keep = pn > 0
    return float(np.sum(pn[keep] * np.log(pn[keep] / qn[keep])))


def test_vectorized_kl_matches_the_loop() -> None:
    rng = np.random.default_rng(5)
    for _ in range(10):
        h = rng.integers(0, 6, 300) * (rng.random(300) < 0.6)
        h[rng.integers(0, 300, 3)] += 50
        levels = int(rng.integers(2, 40))
        starts = rng.integers(0, 150, 25)
        ends = np.minimum(300, starts + levels + rng.integers(0, 150, 25))
        got = kl_divergences(h, starts, ends, levels)
        want = [_kl_loop(h, int(a), int(b), levels) for a, b in zip(starts, ends)]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ collection


@pytest.fixture
def demo(demo_paths: tuple[Path, Path]) -> tuple[Path, Any, Samples]:
    model_path, npz = demo_paths
    model = gir.load_model(model_path)
    return model_path, model, load_data(model, npz, batch=50)


def _manual_outputs(model_path: Path, samples: Samples) -> dict[str, list[np.ndarray]]:
    """Every node output of the model, by an augmented model built by hand."""
    proto = onnx.load(str(model_path))
    present = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name not in present:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = runtime.make_session(runtime.Snapshot(data=proto.SerializeToString()), optimize=False)
    names = [o.name for o in sess.get_outputs()]
    out: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for feed in samples.feeds:
        for name, value in zip(names, sess.run(names, feed)):
            out[name].append(value)
    return out


def test_collect_stats_matches_a_manual_augmented_run(demo: Any, capsys: Any) -> None:
    model_path, model, samples = demo
    before = (gir.fingerprint(model), gir.summarize(model)["ops"], len(model.graph.outputs))
    stats = collect_stats(model, samples, progress=True)
    after = (gir.fingerprint(model), gir.summarize(model)["ops"], len(model.graph.outputs))
    assert before == after  # the caller's model is untouched
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal

    manual = _manual_outputs(model_path, samples)
    assert set(stats) == set(manual) | {"input"}
    for name, values in manual.items():
        s = stats[name]
        assert s.min == min(float(v.min()) for v in values), name
        assert s.max == max(float(v.max()) for v in values), name
        assert s.count == sum(v.size for v in values)
        _assert_same(s, TensorStats().update(np.concatenate([v.ravel() for v in values])))
    x = np.concatenate([f["input"].ravel() for f in samples.feeds])
    assert (stats["input"].min, stats["input"].max) == (float(x.min()), float(x.max()))


def test_collect_stats_subset_and_errors(demo: Any) -> None:
    _, model, samples = demo
    relu = next(n.outputs[0].name for n in model.graph if n.op_type == "Relu")
    stats = collect_stats(model, samples.head(2), [relu, "logits"], bins=256, progress=False)
    assert list(stats) == [relu, "logits"] and stats[relu].bins == 256 and stats[relu].min == 0
    with pytest.raises(DataError, match=r"unknown tensor '/2/Relu_outptu_0'.*did you mean"):
        collect_stats(model, samples, ["/2/Relu_outptu_0"], progress=False)
    with pytest.raises(DataError, match="no samples"):
        collect_stats(model, Samples([], "empty"), progress=False)
    with pytest.raises(DataError, match="lacks model input 'input'"):
        collect_stats(model, Samples([{"x": samples.feeds[0]["input"]}], "bad"), progress=False)


def test_collect_stats_rejects_non_float_tensors(build_proto: Any, tmp_path: Path) -> None:
    tp = onnx.TensorProto
    nodes = [
        onnx.helper.make_node("Shape", ["x"], ["shape"]),
        onnx.helper.make_node("Relu", ["x"], ["y"]),
    ]
    proto = build_proto(nodes, [("x", tp.FLOAT, [2, 3])], [("y", tp.FLOAT, [2, 3])])
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path))
    model = gir.load_model(path)
    samples = Samples([{"x": np.ones((2, 3), np.float32)}], "ones")
    assert set(collect_stats(model, samples, progress=False)) == {"x", "y"}
    with pytest.raises(DataError, match=r"'shape'.*only float"):
        collect_stats(model, samples, ["shape"], progress=False)


# ----------------------------------------------------------------------------------- cache


def test_cache_roundtrip_skips_onnx_runtime(
    demo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_path, model, samples = demo
    sessions = []
    real = runtime.make_session
    monkeypatch.setattr(
        runtime, "make_session", lambda *a, **k: sessions.append(1) or real(*a, **k)
    )

    first = load_or_collect(model, samples, tmp_path, progress=False)
    assert len(sessions) == 1 and len(list(tmp_path.glob("calib-*.npz"))) == 1
    again = load_or_collect(gir.load_model(model_path), samples, tmp_path, progress=False)
    assert len(sessions) == 1  # hit: a fresh load of the same file has the same key
    assert list(again) == list(first)
    for name in first:
        _assert_same(again[name], first[name])
    subset = load_or_collect(model, samples, tmp_path, ["logits"], progress=False)
    assert len(sessions) == 1 and list(subset) == ["logits"]

    # other data, or other bins: a miss
    load_or_collect(model, samples.head(3), tmp_path, progress=False)
    load_or_collect(model, samples, tmp_path, bins=512, progress=False)
    assert len(sessions) == 3 and len(list(tmp_path.glob("calib-*.npz"))) == 3

    # a single cache file: wrong key or a corrupt file is a miss and is replaced atomically
    path = tmp_path / "one" / "stats.npz"
    load_or_collect(model, samples, path, ["logits"], progress=False)
    path.write_bytes(b"not an npz")
    load_or_collect(model, samples, path, ["logits"], progress=False)
    assert len(sessions) == 5
    key = cache_key(model, samples)
    assert list(load_stats(path, key=key) or {}) == ["logits"]
    assert load_stats(path, key="other") is None
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temp files left


def test_model_hash_follows_content_not_identity(demo: Any, tmp_path: Path) -> None:
    model_path, model, samples = demo
    assert model_hash(model) == model_hash(gir.load_model(model_path))
    changed = gir.load_model(model_path)
    init = next(v for v in changed.graph.initializers.values() if v.const_value is not None)
    arr = init.const_value.numpy().copy()
    arr.flat[0] += 1.0
    init.const_value = ir.tensor(arr, name=init.name)
    assert model_hash(changed) != model_hash(model)
    feeds = [dict(f) for f in samples.feeds]
    feeds[0] = {"input": feeds[0]["input"].copy()}
    feeds[0]["input"][0, 0, 0, 0] += 1
    assert cache_key(model, Samples(feeds, "x")) != cache_key(model, samples)
    s = {"t": TensorStats().update(_growing_data())}
    save_stats(tmp_path / "s.npz", s, key="k")
    _assert_same((load_stats(tmp_path / "s.npz", key="k") or {})["t"], s["t"])


def test_minmax_statistics_without_histogram_give_the_same_ranges(demo: Any) -> None:
    """``minmax`` calibration reads only the extremes: collected without histograms (and
    without row maxima except where asked), the ranges are exactly those of full statistics;
    a histogram method on them is refused, never answered from an empty histogram."""
    _, model, samples = demo
    full = collect_stats(model, samples, progress=False)
    some = sorted(full)[:2]
    lean = collect_stats(model, samples, progress=False, histogram=False, rows=some[:1])
    assert set(lean) == set(full)
    for symmetric in (False, True):
        assert compute_ranges(lean, "minmax", symmetric=symmetric) == compute_ranges(
            full, "minmax", symmetric=symmetric
        )
    for name, s in lean.items():
        assert (s.count, s.nan_count, s.inf_count) == (full[name].count, 0, 0)
        assert not s.hist.any()
    kept, dropped = lean[some[0]], lean[some[1]]
    assert (kept.row_max_min, kept.row_len) == (full[some[0]].row_max_min, full[some[0]].row_len)
    assert dropped.row_len == 0
    with pytest.raises(UsageError, match="without a histogram"):
        compute_range(kept, "percentile", symmetric=False)
    with pytest.raises(ValueError, match="not cached"):
        kept.to_dict()
    copy = kept.copy()
    assert (copy.min, copy.max, copy.count, copy.histogram) == (
        kept.min,
        kept.max,
        kept.count,
        False,
    )
    merged = (
        TensorStats(histogram=False)
        .update(np.array([-3.0, 2.0]))
        .merge(TensorStats(histogram=False).update(np.array([5.0])))
    )
    assert (merged.min, merged.max, merged.count) == (-3.0, 5.0, 3)
    with pytest.raises(ValueError, match="with and without a histogram"):
        merged.merge(TensorStats().update(np.array([1.0])))
