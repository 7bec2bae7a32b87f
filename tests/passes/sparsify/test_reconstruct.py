"""reconstruct: layer-wise least squares back to the original model.

im2col patches against ONNX Runtime's convolution, the masked OBS solver against the exact
constrained optimum, exact recovery when a removed channel is a linear combination of kept
ones (both fits), sparse weights keeping their zeros, the demo CNN's top-1 restored after
pruning, bias handling for MatMul+Add and a Gemm without C, stages, idempotence, reverting a
refit that does not help, and the reference taken from the runner or a file.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.sparsify import reconstruct as rc
from graphopt.passes.sparsify.channel_analysis import analyze
from graphopt.passes.sparsify.channel_rewrite import apply
from graphopt.passes.sparsify.reconstruct_fit import conv_patches, masked_solve
from graphopt.passes.sparsify.reconstruct_layers import Layer

from graphopt import ir as gir
from graphopt import runtime
from graphopt.cli import demo
from graphopt.core import run_pipeline
from graphopt.core.pass_base import PassContext
from graphopt.errors import GraphoptError, PipelineError
from graphopt.inputs import data
from graphopt.runtime import Snapshot

PASS = "reconstruct"


def _w(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed + 7 * sum(shape)).standard_normal(shape) * 0.3).astype(
        np.float32
    )


def _samples(model: ir.Model, count: int = 6, batch: int = 4) -> data.Samples:
    return data.random_feeds(model, count=count, seed=3, dims={"*": batch})


def _run(model: ir.Model, reference: ir.Model, samples: data.Samples, **options: object):
    cls = rc.ReconstructPass
    p = cls(cls.Options(**options), PassContext(data=samples, reference=Snapshot.of(reference)))
    return p(model), p


def _rel_error(model: ir.Model, reference: ir.Model, feeds: list) -> float:
    _, want = pt.run_model(reference, feeds)
    _, got = pt.run_model(model, feeds)
    num = sum(float(np.square(g[0] - w[0]).sum()) for g, w in zip(got, want))
    return num / sum(float(np.square(w[0]).sum()) for w in want)


# ------------------------------------------------------------------------ pieces
@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"strides": [2, 2], "pads": [1, 0, 2, 1]},
        {"dilations": [2, 1], "pads": [2, 1, 2, 1]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    ],
)
def test_conv_patches_match_onnxruntime(attrs: dict) -> None:
    w, b = _w(5, 3, 3, 3), _w(5)
    model = pt.make_model(
        [pt.node("Conv", ["x", "w", "b"], ["y"], **attrs)],
        [pt.vi("x", [2, 3, 7, 6])],
        [pt.vi("y", None)],
        [pt.init("w", w), pt.init("b", b)],
        infer_shapes=False,
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    (y,) = runtime.make_session(model, optimize=False).run(None, {"x": x})
    where = np.unravel_index(
        np.arange(y.shape[0] * y.shape[2] * y.shape[3]), (y.shape[0], *y.shape[2:])
    )
    patches = conv_patches(model.graph.node(0), x, (3, 3), where)
    got = patches @ w.reshape(5, -1).T + b
    np.testing.assert_allclose(got, y[(where[0], slice(None), *where[1:])], atol=1e-5)


def test_masked_solve_reaches_the_constrained_optimum() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))  # correlated inputs
    h = x.T @ x + 1e-3 * np.eye(12)
    theta = rng.standard_normal((12, 3))
    mask = rng.random((12, 3)) > 0.5

    def cost(t: np.ndarray) -> float:
        d = t - theta
        return float(np.trace(d.T @ h @ d))

    got = masked_solve(theta, h, mask)
    assert np.all(got[~mask] == 0)
    naive = np.where(mask, theta, 0.0)
    exact = np.zeros_like(theta)  # per output: min over the support of (t-theta)^T H (t-theta)
    for j in range(3):
        s = mask[:, j]
        exact[s, j] = np.linalg.solve(h[np.ix_(s, s)], h[s] @ theta[:, j])
    assert cost(got) == pytest.approx(cost(exact), rel=1e-6)
    assert cost(got) < 0.6 * cost(naive)


# ------------------------------------------------------------------------ exact recovery
def _redundant_convs() -> ir.Model:
    """Conv1 (6 channels, channel 5 = 0.5*ch0 - 2*ch1) -> Conv2, no nonlinearity."""
    w1, b1 = _w(6, 4, 3, 3), _w(6)
    w1[5] = 0.5 * w1[0] - 2 * w1[1]
    b1[5] = 0.5 * b1[0] - 2 * b1[1]
    return pt.make_model(
        [
            pt.node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
            pt.node("Conv", ["h", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
        ],
        [pt.vi("x", ["n", 4, 6, 6])],
        [pt.vi("y", ["n", 3, 6, 6])],
        [pt.init("w1", w1), pt.init("b1", b1), pt.init("w2", _w(3, 6, 3, 3)), pt.init("b2", _w(3))],
    )


def _remove_channel(model: ir.Model, producer: str, drop: int) -> None:
    a = analyze(model.graph)
    (group,) = [g for g in a.groups() if a.spaces[g[0]].producer.name == producer]
    n = a.spaces[group[0]].size
    apply(model.graph, a, {s: np.array([i for i in range(n) if i != drop]) for s in group})


@pytest.mark.parametrize("method", ["output", "input"])
def test_removed_linear_channel_is_recovered_exactly(method: str) -> None:
    original = _redundant_convs()
    model = pt.copy_model(original)
    _remove_channel(model, "h_node", 5)
    feeds = _samples(original, count=3).feeds
    assert _rel_error(model, original, feeds) > 0.05
    # damping ~0 to see the exact solution (the default ridge biases it by ~1e-4)
    result, p = _run(model, original, _samples(original), method=method, damping=1e-9)
    assert result.modified and p.stats["layers_refit"] == 1  # h_node only lost outputs
    assert p.details["layers"]["y_node"]["method"] == method
    assert p.details["relative_error"]["after"] < 1e-8
    assert _rel_error(model, original, feeds) < 1e-8  # held-out feeds too
    again, p2 = _run(model, original, _samples(original), method=method, damping=1e-9)
    assert not again.modified and not p2.stats  # refit weights are recorded


def test_sparse_weights_keep_their_zeros() -> None:
    original = _redundant_convs()
    model = pt.copy_model(original)
    pt.run_pass(model, "sparsify", sparsity=0.5, min_size=0, skip_first_last=False)
    zeros = {
        n.name: n.inputs[1].const_value.numpy() == 0 for n in model.graph if n.op_type == "Conv"
    }
    feeds = _samples(original, count=3).feeds
    before = _rel_error(model, original, feeds)
    result, p = _run(model, original, _samples(original, count=10))
    assert result.modified and all(v["sparse"] for v in p.details["layers"].values())
    for n in model.graph:
        w = n.inputs[1].const_value.numpy()
        np.testing.assert_array_equal(w == 0, zeros[n.name])  # same pattern, nothing refilled
    assert _rel_error(model, original, feeds) < 0.7 * before


def test_stages_follow_dependencies() -> None:
    original = _redundant_convs()
    model = pt.copy_model(original)
    pt.run_pass(model, "sparsify", sparsity=0.5, min_size=0, skip_first_last=False)
    _, p = _run(model, original, _samples(original))
    assert {k: v["stage"] for k, v in p.details["layers"].items()} == {"h_node": 0, "y_node": 1}
    model = pt.copy_model(original)
    pt.run_pass(model, "sparsify", sparsity=0.5, min_size=0, skip_first_last=False)
    _, p = _run(model, original, _samples(original), sequential=False)
    assert {v["stage"] for v in p.details["layers"].values()} == {0}


def test_matmul_bias_add_and_gemm_without_bias() -> None:
    nodes = [
        pt.node("MatMul", ["x", "w1"], ["m1"]),
        pt.node("Add", ["m1", "b1"], ["h1"]),
        pt.node("Relu", ["h1"], ["r1"]),
        pt.node("MatMul", ["r1", "w2"], ["m2"]),
        pt.node("Add", ["b2", "m2"], ["h2"]),  # bias first: either operand order
        pt.node("Relu", ["h2"], ["r2"]),
        pt.node("Gemm", ["r2", "w3"], ["y"], alpha=0.5),
    ]
    original = pt.make_model(
        nodes,
        [pt.vi("x", ["n", 8])],
        [pt.vi("y", ["n", 4])],
        [
            pt.init("w1", _w(8, 16)),
            pt.init("b1", _w(16)),
            pt.init("w2", _w(16, 16, seed=1)),
            pt.init("b2", _w(16, seed=1)),
            pt.init("w3", _w(16, 4)),
        ],
    )
    model = pt.copy_model(original)
    pt.run_pass(model, "prune-channels", ratio=0.5, round_to=1, min_channels=1)
    b2 = model.graph.initializers["b2"].const_value.numpy().copy()
    feeds = _samples(original, count=3, batch=16).feeds
    before = _rel_error(model, original, feeds)
    result, p = _run(model, original, _samples(original, count=20, batch=16))
    assert result.modified and set(p.details["layers"]) == {"m2_node", "y_node"}
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert len(gemm.inputs) == 3 and gemm.attributes["beta"].value == 1.0  # bias added
    assert gemm.attributes["alpha"].value == 0.5  # alpha kept, weights scaled back
    new_b2 = model.graph.initializers["b2"].const_value.numpy()
    assert new_b2.shape == b2.shape and not np.array_equal(new_b2, b2)  # the Add's bias refit
    assert _rel_error(model, original, feeds) < 0.5 * before


# ------------------------------------------------------------------------ behaviour
def test_nothing_to_fit_without_a_lossy_pass_before() -> None:
    model = _redundant_convs()
    cls = rc.ReconstructPass
    p = cls(cls.Options(), PassContext(data=_samples(model)))
    assert not p(model).modified
    assert "nothing to fit" in p.details["note"] or "no reference" in p.details["note"]


def test_a_refit_that_does_not_help_is_reverted(monkeypatch: pytest.MonkeyPatch) -> None:
    original = _redundant_convs()
    model = pt.copy_model(original)
    _remove_channel(model, "h_node", 5)
    pruned = pt.to_bytes(model)

    def wrong(self: rc.ReconstructPass, lay: Layer) -> tuple[np.ndarray, np.ndarray]:
        return -3 * lay.w, np.full(lay.w.shape[0], 5.0)

    monkeypatch.setattr(rc.ReconstructPass, "_solve", wrong)
    result, p = _run(model, original, _samples(original))
    assert not result.modified and "reverted" in p.details["note"]
    assert p.details["relative_error"]["after"] > p.details["relative_error"]["before"]
    assert pt.to_bytes(model) == pruned


def test_reference_from_a_file(tmp_path) -> None:
    original = _redundant_convs()
    path = tmp_path / "orig.onnx"
    gir.save_model(original, path)
    model = pt.copy_model(original)
    _remove_channel(model, "h_node", 5)
    cls = rc.ReconstructPass
    p = cls(cls.Options(reference=str(path)), PassContext(data=_samples(original)))
    assert p(model).modified
    with pytest.raises(GraphoptError):
        cls(
            cls.Options(reference=str(tmp_path / "missing.onnx")),
            PassContext(data=_samples(original)),
        )(model)


def test_needs_data_in_a_pipeline() -> None:
    model = _redundant_convs()
    with pytest.raises(PipelineError, match="needs calibration data"):
        run_pipeline(model, "prune-channels,reconstruct")


def test_demo_top1_restored_after_pruning() -> None:
    """cleanup folds BatchNorm; the runner keeps the model after it as the reference."""
    path, npz = demo.demo_files()
    with np.load(npz) as f:
        x, y = f["input"], f["label"]
    model = gir.load_model(path)
    calib = data.from_arrays(model, {"input": x[:200]}, source="calib", batch=50)
    test = data.from_arrays(model, {"input": x[200:]}, source="test", batch=50)
    base = demo.top1_accuracy(model, test, y[200:])
    pruned = gir.load_model(path)
    run_pipeline(pruned, "cleanup,prune-channels", context=PassContext(data=calib))
    rebuilt = gir.load_model(path)
    result = run_pipeline(
        rebuilt, "cleanup,prune-channels,reconstruct", context=PassContext(data=calib)
    )
    step = result.steps[-1]
    # /0/Conv only lost output channels (its inputs are the image): the other 4 are refit
    assert step["pass"] == PASS and step["stats"]["layers_refit"] == 4
    err = step["details"]["relative_error"]
    assert err["after"] < 0.1 * err["before"]
    acc_pruned = demo.top1_accuracy(pruned, test, y[200:])
    acc = demo.top1_accuracy(rebuilt, test, y[200:])
    assert acc_pruned < base - 0.2  # pruning alone breaks this small CNN
    assert acc >= base - 0.01  # reconstruct brings it back within a point


def test_after_quantization_the_int32_biases_are_corrected() -> None:
    """On a QDQ model the int8 weights stay; each layer's int32 bias absorbs its mean error
    against the float original (bias correction), requantized with the bias's own scale."""
    path, npz = demo.demo_files()
    with np.load(npz) as f:
        x = f["input"]
    model = gir.load_model(path)
    calib = data.from_arrays(model, {"input": x[:200]}, source="calib", batch=50)
    pipeline = "cleanup,qdq-insert{target=cpu,reduce_range=true},reconstruct,reconstruct"
    result = run_pipeline(model, pipeline, context=PassContext(data=calib), samples=calib.head(2))
    first, second = result.steps[-2], result.steps[-1]
    assert first["modified"] and not second["modified"]  # idempotent
    assert {v["method"] for v in first["details"]["layers"].values()} == {"bias"}
    err = first["details"]["relative_error"]
    assert err["after"] < 0.5 * err["before"]
    quantized = gir.load_model(path)  # the same pipeline without reconstruct
    run_pipeline(
        quantized,
        "cleanup,qdq-insert{target=cpu,reduce_range=true}",
        context=PassContext(data=calib),
    )
    ints = {
        name: v.const_value.numpy()
        for name, v in model.graph.initializers.items()
        if v.const_value is not None
        and v.const_value.dtype in (ir.DataType.INT8, ir.DataType.INT32)
    }
    before = {
        name: v.const_value.numpy()
        for name, v in quantized.graph.initializers.items()
        if name in ints
    }
    changed = {n for n in ints if not np.array_equal(ints[n], before[n])}
    assert changed and all(ints[n].dtype == np.int32 for n in changed)  # biases only
