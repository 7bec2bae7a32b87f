"""avoid-slow-fusions: residual Adds before LayerNormalization become Sum where ORT's
SkipLayerNormalization is slower, which must be bit-exact and really stop the fusion."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.quantize import fusion
from graphopt.passes.target.avoid_slow_fusions import probe_skip_layernorm

from graphopt import runtime
from graphopt.core.pass_base import PassContext
from graphopt.core.registry import get_pass
from graphopt.core.runner import run_pipeline

LAYERS = 2


def _bert() -> ir.Model:
    """Post-LayerNorm: 2 residual Add -> LayerNormalization per layer."""
    return pt.tiny_bert(LAYERS)


def _feeds() -> list[dict[str, np.ndarray]]:
    return pt.tiny_bert_feeds(3, seed=4)


def _fused_ops(model: ir.Model) -> dict[str, int]:
    ops: dict[str, int] = {}
    for n in fusion.optimized_graph(model).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def test_block_writes_residual_adds_as_sum_and_stops_the_fusion() -> None:
    model = _bert()
    before = pt.copy_model(model)
    assert _fused_ops(before).get("SkipLayerNormalization", 0) == 2 * LAYERS
    result, p = pt.run_pass(model, "avoid-slow-fusions", decide="block")
    assert result.modified
    sums = pt.nodes_of(model, "Sum")
    assert len(sums) == 2 * LAYERS and p.stats["skip-layernorm:blocked"] == 2 * LAYERS
    assert pt.created_by(model, "avoid-slow-fusions") == sums
    for s in sums:  # each Sum is a residual read by one LayerNormalization
        (use,) = list(s.outputs[0].uses())
        assert use.node.op_type == "LayerNormalization"
    ops = _fused_ops(model)
    assert "SkipLayerNormalization" not in ops and ops["LayerNormalization"] >= 2 * LAYERS
    pt.assert_same_outputs(before, model, get_pass("avoid-slow-fusions").tolerance, _feeds())
    # bias Adds (a constant operand) stay Adds
    assert len(pt.nodes_of(model, "Add")) == len(pt.nodes_of(before, "Add")) - 2 * LAYERS


def test_idempotent_and_allow_restores_the_adds() -> None:
    model = _bert()
    original = pt.to_bytes(model)
    pt.run_pass(model, "avoid-slow-fusions", decide="block")
    blocked = pt.to_bytes(model)
    again, _ = pt.run_pass(model, "avoid-slow-fusions", decide="block")
    assert not again.modified and pt.to_bytes(model) == blocked
    restored, p = pt.run_pass(model, "avoid-slow-fusions", decide="allow")
    assert restored.modified and p.stats["skip-layernorm:allowed"] == 2 * LAYERS
    assert not pt.nodes_of(model, "Sum") and pt.to_bytes(model) == original


def test_measure_decides_from_the_timing_it_reports() -> None:
    model = _bert()
    _, p = pt.run_pass(model, "avoid-slow-fusions", margin=0.1)
    (probe,) = p.details["skip-layernorm"]
    assert probe["shape"] == [1, 16, 64]
    assert probe["fused_us"] > 0 and probe["unfused_us"] > 0
    assert probe["blocked"] == (probe["unfused_us"] < 0.9 * probe["fused_us"])
    decision = "blocked" if probe["blocked"] else "allowed"
    assert p.stats[f"skip-layernorm:{decision}"] == 2 * LAYERS
    # the residual LayerNorms read Sum when blocked; allowed, they and the embedding
    # LayerNorm (its Add has a constant operand: no residual) all read Add
    lns = [n for n in model.graph if n.op_type == "LayerNormalization"]
    sums = sum(ln.inputs[0].producer().op_type == "Sum" for ln in lns)
    assert sums == (2 * LAYERS if probe["blocked"] else 0)


def test_probe_models_compute_the_same_thing() -> None:
    """The timed pair differ only in Add vs Sum: ORT fuses one, the outputs agree."""
    import onnxruntime as ort
    from graphopt.passes.target.avoid_slow_fusions import _probe_model

    shape = (1, 8, 32)
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(shape).astype(np.float32) for n in ("x", "r")}
    so = runtime.session_options(optimize=True)
    outs = [
        ort.InferenceSession(_probe_model(shape, op), so, providers=["CPUExecutionProvider"]).run(
            None, feed
        )[0]
        for op in ("Add", "Sum")
    ]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)  # fused kernel vs pair
    p = probe_skip_layernorm(shape, rounds=1)
    assert p.fused_us > 0 and p.unfused_us > 0


def test_other_targets_and_non_residual_adds_are_left_alone() -> None:
    model = _bert()
    cls = get_pass("avoid-slow-fusions")
    p = cls(cls.Options(decide="block"), PassContext(target="cuda"))
    assert not p(model).modified and "cuda" in p.details["skipped"]
    # an Add whose sum is also read elsewhere is not what ORT fuses
    nodes = [
        pt.node("Add", ["x", "r"], ["s"]),
        pt.node("LayerNormalization", ["s", "g"], ["y"], axis=-1),
        pt.node("Relu", ["s"], ["z"]),
    ]
    shared = pt.make_model(
        nodes,
        [pt.vi("x", [1, 4, 8]), pt.vi("r", [1, 4, 8])],
        [pt.vi("y", [1, 4, 8]), pt.vi("z", [1, 4, 8])],
        [pt.init("g", np.ones(8, np.float32))],
    )
    result, _ = pt.run_pass(shared, "avoid-slow-fusions", decide="block")
    assert not result.modified


@pytest.mark.parametrize("bad", [{"margin": 1.0}, {"margin": -0.1}, {"rounds": 0}])
def test_options_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        get_pass("avoid-slow-fusions").Options(**bad)


def test_cpu_presets_include_the_pass() -> None:
    from graphopt.core.pipeline import PRESETS

    assert "avoid-slow-fusions" in PRESETS["cpu-int8"]
    assert (
        PRESETS["cpu-fp32"].startswith("cleanup,") and "avoid-slow-fusions" in PRESETS["cpu-fp32"]
    )
    model = _bert()
    run_pipeline(model, "cpu-fp32", verify_each=True)
    assert runtime.make_session(model) is not None
