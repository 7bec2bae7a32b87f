"""Attention proven by its function, and tf2onnx's moments LayerNorm, on a real tf2onnx export.

The model is graphopt.models' Keras transformer (two blocks, 4 heads, 64 pixel tokens) as
tf2onnx 1.17 writes it: the einsum lowering of Keras' MultiHeadAttention, which neither ORT
nor onnxscript's rules fuse, and LayerNormalization as GlobalAveragePool moments."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.target import (
    attention_boundary,
    fuse_ort_kernels,
    inferred_attention,
    moments_layernorm,
)
from zoo.training import train_digits_transformer_keras as keras_model

from graphopt.core.registry import get_pass


def _prepared() -> ir.Model:
    model = ir.load(keras_model.DEFAULT_ONNX)
    fuse_ort_kernels._prepare(model)
    return model


def _pixels(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of two images: real digits (the demo's held-out split) where
    scikit-learn is installed, else seeded uniform pixels in the same 0..1 range."""
    rng = np.random.default_rng(seed)
    try:
        _, x_te, _, _ = keras_model.load_split_flat()
    except ImportError:
        x_te = rng.uniform(0.0, 1.0, (64, 64)).astype(np.float32)
    return [{"pixels": x_te[rng.choice(len(x_te), 2, replace=False)]} for _ in range(count)]


def _attention_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Attention" and n.domain == "com.microsoft"]


def test_tf2onnx_einsum_attention_becomes_one_attention_per_block() -> None:
    model = _prepared()
    before = pt.copy_model(model)
    assert inferred_attention.fuse_inferred_attention(model) == 2
    fuse_ort_kernels._settle(model)
    attn = _attention_nodes(model)
    assert len(attn) == 2
    for node in attn:
        assert node.attributes.get_int("num_heads") == 4
        assert "scale" not in node.attributes  # Keras' 1/sqrt(16) is Attention's default
        w = ir.convenience.get_const_tensor(node.inputs[1]).numpy()
        assert w.shape == (64, 3 * 64) and node.inputs[2].const_value.shape == (3 * 64,)
    ops = pt.op_counts(model)
    # the einsum lowering is gone: no softmax, no 5-D transposes, no run-time shape arithmetic
    assert ops["Softmax"] == 0 and ops["Unsqueeze"] == 0 and ops["ReduceProd"] == 0
    tol = get_pass("fuse-ort-kernels").tolerance
    pt.assert_same_outputs(before, model, tol, _pixels(3, seed=1))
    # idempotent: nothing left to find
    assert inferred_attention.fuse_inferred_attention(model) == 0


def _with_score_bias(model: ir.Model, bias: np.ndarray) -> None:
    """Add a constant to every block's scores before the softmax (a relative position bias)."""
    for softmax in [n for n in model.graph if n.op_type == "Softmax"]:
        scores = softmax.inputs[0]
        const = ir.Value(name=f"{softmax.name}_bias", const_value=ir.tensor(bias))
        model.graph.register_initializer(const)
        add = ir.node("Add", [scores, const], name=f"{softmax.name}_add_bias")
        model.graph.insert_before(softmax, add)
        softmax.replace_input_with(0, add.outputs[0])


def test_a_position_bias_in_the_scores_fails_the_proof() -> None:
    """The block still has the boundary of attention, but it does not compute plain
    multi-head attention: the functional check refuses it."""
    model = _prepared()
    rng = np.random.default_rng(0)
    _with_score_bias(model, rng.standard_normal((1, 4, 64, 64)).astype(np.float32))
    before = pt.to_bytes(model)
    assert inferred_attention.fuse_inferred_attention(model) == 0
    assert pt.to_bytes(model) == before


def test_a_zero_bias_still_proves() -> None:
    """The same edit with zeros computes attention again: the proof is by function."""
    model = _prepared()
    _with_score_bias(model, np.zeros((1, 4, 64, 64), np.float32))
    assert inferred_attention.fuse_inferred_attention(model) == 2


def _with_mask_input(model: ir.Model, shape: list[int | str]) -> None:
    """Add a float mask graph input to every block's scaled scores, as BERT exporters do."""
    mask = ir.Value(name="mask", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))
    model.graph.inputs.append(mask)
    for softmax in [n for n in model.graph if n.op_type == "Softmax"]:
        add = ir.node("Add", [softmax.inputs[0], mask], name=f"{softmax.name}_mask")
        model.graph.insert_before(softmax, add)
        softmax.replace_input_with(0, add.outputs[0])


def _masked(feeds: list[dict[str, np.ndarray]], seed: int) -> list[dict[str, np.ndarray]]:
    """Each feed with a key-padding mask of its own: 0 or the float minimum, plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for feed in feeds:
        mask = rng.standard_normal((len(feed["pixels"]), 1, 1, 64)).astype(np.float32)
        mask[-1, ..., int(rng.integers(8, 64)) :] = np.finfo(np.float32).min
        out.append({**feed, "mask": mask})
    return out


def test_an_additive_mask_input_becomes_attention_bias() -> None:
    """A mask that does not read x is Attention's attention_bias, broadcast as the Add did
    ([B, 1, 1, S] expanded once to [B, 1, S, S] for both blocks)."""
    model = _prepared()
    _with_mask_input(model, ["batch", 1, 1, 64])
    for softmax in [n for n in model.graph if n.op_type == "Softmax"]:
        m = attention_boundary.read_block(softmax)
        assert m is not None and m["bias"].name == "mask"
    before = pt.copy_model(model)
    assert inferred_attention.fuse_inferred_attention(model) == 2
    fuse_ort_kernels._settle(model)
    attn = _attention_nodes(model)
    assert len(attn) == 2 and len({id(n.inputs[5]) for n in attn}) == 1
    expand = attn[0].inputs[5].producer()
    assert expand.op_type == "Expand" and expand.inputs[0].name == "mask"
    assert pt.op_counts(model)["Softmax"] == 0
    tol = get_pass("fuse-ort-kernels").tolerance
    pt.assert_same_outputs(before, model, tol, _masked(_pixels(3, seed=2), seed=3))
    assert inferred_attention.fuse_inferred_attention(model) == 0


def test_a_full_mask_is_read_as_it_is() -> None:
    """A mask already [B, 1, S, S] for the block's S needs no Expand; one whose dims are
    unknown gets one (unknown dims compare equal in onnx_ir and prove nothing)."""
    model = _prepared()
    _with_mask_input(model, ["batch", 1, 64, 64])
    before = pt.copy_model(model)
    assert inferred_attention.fuse_inferred_attention(model) == 2
    fuse_ort_kernels._settle(model)
    assert all(n.inputs[5].name == "mask" for n in _attention_nodes(model))
    rng = np.random.default_rng(4)
    feeds = [
        {**f, "mask": rng.standard_normal((2, 1, 64, 64)).astype(np.float32)}
        for f in _pixels(2, seed=4)
    ]
    pt.assert_same_outputs(before, model, get_pass("fuse-ort-kernels").tolerance, feeds)
    unknown = _prepared()
    _with_mask_input(unknown, [None, None, None, None])
    assert inferred_attention.fuse_inferred_attention(unknown) == 2
    fuse_ort_kernels._settle(unknown)
    assert {n.inputs[5].producer().op_type for n in _attention_nodes(unknown)} == {"Expand"}


def test_a_score_term_that_reads_x_is_not_a_mask() -> None:
    """A term computed from x's values is part of the block, not a bias: the search ends."""
    model = _prepared()
    for softmax in [n for n in model.graph if n.op_type == "Softmax"]:
        m = attention_boundary.read_block(softmax)
        x = m["x"]
        axes = [
            ir.Value(name=f"{softmax.name}_ax{a}", const_value=ir.tensor(np.array([a], np.int64)))
            for a in (2, 1)
        ]
        for a in axes:
            model.graph.register_initializer(a)
        total = ir.node("ReduceSum", [x, axes[0]], attributes={"keepdims": 1})
        term = ir.node("Unsqueeze", [total.outputs[0], axes[1]])  # [B, 1, S, 1]
        add = ir.node("Add", [softmax.inputs[0], term.outputs[0]])
        for n in (total, term, add):
            model.graph.insert_before(softmax, n)
        softmax.replace_input_with(0, add.outputs[0])
        assert attention_boundary.read_block(softmax) is None
        _, _, outside = attention_boundary.walk([softmax.inputs[0]], stop=None)
        assert any("ReduceSum" in why for why in outside)
    assert inferred_attention.fuse_inferred_attention(model) == 0


def test_moments_layernorm_becomes_layernormalization() -> None:
    model = _prepared()
    before = pt.copy_model(model)
    assert moments_layernorm.fuse_moments_layernorm(model) == 5
    fuse_ort_kernels._settle(model)
    ops = pt.op_counts(model)
    assert ops["LayerNormalization"] == 5 and ops.get("GlobalAveragePool", 0) == 0
    for node in model.graph:
        if node.op_type == "LayerNormalization":
            assert node.attributes.get_int("axis") == -1
            assert node.attributes.get_float("epsilon") == pytest.approx(1e-6)
    pt.assert_same_outputs(before, model, get_pass("fuse-ort-kernels").tolerance, _pixels(3, 2))
    assert moments_layernorm.fuse_moments_layernorm(model) == 0


def _moments_model(shape: list[int]) -> ir.Model:
    """The tf2onnx moments form on an input of ``shape`` (channels last)."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))
    c = shape[-1]
    consts = {
        "eps": np.array(1e-3, np.float32),
        "gamma": np.linspace(0.5, 1.5, c, dtype=np.float32),
        "beta": np.linspace(-1, 1, c, dtype=np.float32),
    }
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 15}, name="moments")
    vals = {}
    for name, arr in consts.items():
        vals[name] = ir.Value(name=name, const_value=ir.tensor(arr))
        graph.register_initializer(vals[name])

    def add(op: str, *inputs: ir.Value) -> ir.Value:
        node = ir.node(op, list(inputs))
        graph.append(node)
        return node.outputs[0]

    mean = add("GlobalAveragePool", x)
    d = add("Sub", x, mean)
    var = add("GlobalAveragePool", add("Mul", d, d))
    g = add("Mul", add("Reciprocal", add("Sqrt", add("Add", var, vals["eps"]))), vals["gamma"])
    y = add("Add", add("Mul", x, g), add("Add", add("Mul", add("Neg", mean), g), vals["beta"]))
    graph.outputs.append(y)
    ir.passes.common.ShapeInferencePass()(model := ir.Model(graph, ir_version=8))
    return model


def test_moments_layernorm_numerics_and_rank_guard() -> None:
    model = _moments_model([2, 5, 8])
    before = pt.copy_model(model)
    assert moments_layernorm.fuse_moments_layernorm(model) == 1
    feeds = [{"x": np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)}]
    pt.assert_same_outputs(before, model, get_pass("fuse-ort-kernels").tolerance, feeds)
    # on [N, C, H, W] GlobalAveragePool averages H and W: not a LayerNorm over the last axis
    nchw = _moments_model([1, 8, 4, 4])
    assert moments_layernorm.fuse_moments_layernorm(nchw) == 0


def test_whole_pass_on_the_tf2onnx_transformer() -> None:
    model = ir.load(keras_model.DEFAULT_ONNX)
    before = pt.copy_model(model)
    feeds = _pixels(2, seed=4)
    result, p = pt.run_pass(model, "fuse-ort-kernels", data=feeds, decide="always")
    assert result.modified
    assert p.stats["created:Attention"] == 2 and p.stats["created:LayerNormalization"] == 5
    assert p.details["sets"]["attention"]["fused"] == {"Attention proven by function": 2}
    pt.assert_same_outputs(before, model, get_pass("fuse-ort-kernels").tolerance, _pixels(2, 5))
