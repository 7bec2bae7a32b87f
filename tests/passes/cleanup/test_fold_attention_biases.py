"""fold-attention-biases: the key bias goes (softmax ignores per-row constants), the value
bias moves into the output projection's bias (softmax rows sum to 1); proven on every run."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pass_testing as pt

from graphopt.core.registry import get_pass

LAYERS = 2


def _bert() -> ir.Model:
    return pt.tiny_bert(LAYERS)


def _feeds() -> list[dict[str, np.ndarray]]:
    return pt.tiny_bert_feeds(2, seed=5)


def test_bert_loses_two_bias_adds_per_layer_and_keeps_its_outputs() -> None:
    model = _bert()
    before = pt.copy_model(model)
    result, p = pt.run_pass(model, "fold-attention-biases")
    assert result.modified
    assert p.stats["key_bias_dropped"] == LAYERS and p.stats["value_bias_moved"] == LAYERS
    assert pt.op_counts(model)["Add"] == pt.op_counts(before)["Add"] - 2 * LAYERS
    # the key projection now feeds its Reshape directly; the output bias absorbed bv @ Wo
    for layer in range(LAYERS):
        k = next(n for n in model.graph if n.name == f"l{layer}.k.matmul")
        (use,) = list(k.outputs[0].uses())
        assert use.node.op_type == "Reshape"
        bv = pt.initializer_array(before, f"l{layer}.v.b")
        wo = pt.initializer_array(before, f"l{layer}.attn_out.w")
        bo = pt.initializer_array(before, f"l{layer}.attn_out.b")
        add = next(n for n in model.graph if n.name == f"l{layer}.attn_out.add")
        new = add.inputs[1].const_value.numpy()
        np.testing.assert_allclose(new, bo + bv @ wo, rtol=1e-5, atol=1e-6)
    pt.assert_same_outputs(before, model, get_pass("fold-attention-biases").tolerance, _feeds())
    again, _ = pt.run_pass(model, "fold-attention-biases")
    assert not again.modified


def test_the_proof_refuses_a_structure_where_the_identity_fails() -> None:
    """scores = A . (x Wk + bk) with the bias on the softmax axis: not a per-row constant."""
    rng = np.random.default_rng(0)
    nodes = [
        pt.node("MatMul", ["x", "Wa"], ["a"]),
        pt.node("MatMul", ["x", "Wk"], ["kk"]),
        pt.node("Add", ["kk", "bk"], ["k"]),
        pt.node("MatMul", ["a", "k"], ["s"]),
        pt.node("Softmax", ["s"], ["y"], axis=-1),
    ]
    inits = [
        pt.init("Wa", rng.standard_normal((8, 4)).astype(np.float32)),
        pt.init("Wk", rng.standard_normal((8, 6)).astype(np.float32)),
        pt.init("bk", rng.standard_normal(6).astype(np.float32)),
    ]
    model = pt.make_model(nodes, [pt.vi("x", [4, 8])], [pt.vi("y", [4, 6])], inits)
    original = pt.to_bytes(model)
    result, p = pt.run_pass(model, "fold-attention-biases")
    assert not result.modified and pt.to_bytes(model) == original
    assert p.stats["not_applied"] == 1 and "tolerance" in p.details["not_applied"]


def test_presets_run_it_before_quantizing() -> None:
    from graphopt.core.pipeline import PRESETS

    # after fuse-ort-kernels, which packs the biases into ORT's Attention where it pays
    assert "cleanup,fuse-ort-kernels,fold-attention-biases," in PRESETS["cpu-fp32"]
    assert PRESETS["cpu-int8"].startswith("cleanup,fuse-ort-kernels,fold-attention-biases,")
    assert PRESETS["cpu-int8"].index("fold-attention") < PRESETS["cpu-int8"].index("qdq-insert")


def test_without_input_shapes_or_data_it_declines_instead_of_failing() -> None:
    model = pt.tiny_bert(1)
    for v in model.graph.inputs:
        v.shape = None
    result, p = pt.run_pass(model, "fold-attention-biases")
    assert not result.modified and "cannot prove without DATA" in p.details["not_applied"]
