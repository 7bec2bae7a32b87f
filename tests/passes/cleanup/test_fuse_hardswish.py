"""fuse-hardswish: paddle2onnx's spelled-out hard-swish becomes one HardSwish node (golden,
numerical against ONNX Runtime, idempotent), an SE gate's Clip(x+3,0,6)/6 becomes
HardSigmoid, models without the pattern are declined with the reason, and an opset-12 model
is moved to opset 14 by the runner only because the pattern is there."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper
from pass_testing import (
    apply_and_check,
    constant,
    created_by,
    init,
    make_model,
    node,
    op_counts,
    run_pass,
    vi,
)

from graphopt import ir as gir
from graphopt.core import run_pipeline


def _paddle_hardswish_nodes(x: str, out: str, prefix: str) -> list:
    """x * Clip(x + 3, 0, 6) / 6 with Constant-node operands, as paddle2onnx writes it."""
    return [
        constant(f"{prefix}_three", np.array(3.0, np.float32)),
        constant(f"{prefix}_zero", np.array(0.0, np.float32)),
        constant(f"{prefix}_six", np.array(6.0, np.float32)),
        node("Add", [x, f"{prefix}_three"], [f"{prefix}_add"]),
        node("Clip", [f"{prefix}_add", f"{prefix}_zero", f"{prefix}_six"], [f"{prefix}_clip"]),
        node("Mul", [x, f"{prefix}_clip"], [f"{prefix}_mul"]),
        node("Div", [f"{prefix}_mul", f"{prefix}_six"], [out]),
    ]


def _mobilenet_block() -> ir.Model:
    """Conv -> hard-swish -> Conv -> SE gate (Clip(x + 3, 0, 6) / 6 times the features)."""
    rng = np.random.default_rng(0)
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        *_paddle_hardswish_nodes("c1", "h1", "hs1"),
        node("Conv", ["h1", "w2"], ["c2"]),
        constant("g_three", np.array(3.0, np.float32)),
        constant("g_zero", np.array(0.0, np.float32)),
        constant("g_six", np.array(6.0, np.float32)),
        node("Add", ["c2", "g_three"], ["g_add"]),
        node("Clip", ["g_add", "g_zero", "g_six"], ["g_clip"]),
        node("Div", ["g_clip", "g_six"], ["gate"]),
        node("Mul", ["h1", "gate"], ["y"]),
    ]
    return make_model(
        nodes,
        [vi("x", [1, 4, 8, 8])],
        [vi("y", [1, 8, 8, 8])],
        [
            init("w1", (rng.standard_normal((8, 4, 3, 3)) * 0.8).astype(np.float32)),
            init("w2", (rng.standard_normal((8, 8, 1, 1)) * 0.5).astype(np.float32)),
        ],
    )


def test_fuse_hardswish_golden_and_numerics() -> None:
    model = _mobilenet_block()
    feeds = [{"x": (np.random.default_rng(s).standard_normal((1, 4, 8, 8)) * 3).astype(np.float32)}
             for s in range(2)]  # fmt: skip
    _, p = apply_and_check(model, "fuse-hardswish", feeds)
    counts = op_counts(model)
    assert counts["HardSwish"] == 1 and counts["HardSigmoid"] == 1
    assert counts["Clip"] == 0 and counts["Div"] == 0 and counts["Add"] == 0
    assert counts["Mul"] == 1  # the SE gate's product stays
    (hs,) = [n for n in model.graph if n.op_type == "HardSwish"]
    assert hs.inputs[0].name == "c1"
    assert {n.op_type for n in created_by(model, "fuse-hardswish")} == {"HardSwish", "HardSigmoid"}
    assert p.stats["created:HardSwish"] == 1


def test_fuse_hardswish_declines_without_the_pattern() -> None:
    model = make_model(
        [node("Relu", ["x"], ["r"]), node("Clip", ["r"], ["y"])],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
    )
    result, p = run_pass(model, "fuse-hardswish")
    assert not result.modified and not p.declined  # lossless, in cleanup: no line for nothing
    assert p.required_opset(model) == 0  # nothing to fuse: no opset change asked for


def test_a_clip_of_other_bounds_is_left_alone() -> None:
    """Clip(x + 3, 0, 5): a different function, not fused."""
    nodes = _paddle_hardswish_nodes("x", "y", "p")
    nodes[2] = constant("p_six", np.array(5.0, np.float32))  # Clip's max and the divisor
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    result, _ = run_pass(model, "fuse-hardswish")
    assert not result.modified


def test_a_fused_model_is_not_a_candidate_again() -> None:
    """After a run, the SE gate's HardSigmoid (times the features, not its own input) does
    not make the next round ask for opset 14 or say it could not fuse."""
    model = _mobilenet_block()
    run_pass(model, "fuse-hardswish")
    result, p = run_pass(model, "fuse-hardswish")
    assert not result.modified and not p.declined and p.required_opset(model) == 0


def _opset12(proto: onnx.ModelProto) -> onnx.ModelProto:
    proto.opset_import[0].version = 12
    return proto


def test_the_runner_moves_an_opset12_model_to_14_for_it() -> None:
    model = _mobilenet_block()
    proto = _opset12(ir.serde.serialize_model(model))
    model = ir.serde.deserialize_model(proto)
    direct, p = run_pass(ir.serde.deserialize_model(proto), "fuse-hardswish")
    assert not direct.modified and "opset 14" in p.declined  # alone it says what it needs
    result = run_pipeline(model, "fuse-hardswish")
    assert gir.ai_onnx_opset(result.model) == 14
    assert op_counts(result.model)["HardSwish"] == 1
    steps = result.report["passes"]
    assert [s["pass"] for s in steps] == ["convert-opset", "fuse-hardswish"]
    assert steps[0]["inserted"] == "fuse-hardswish needs ai.onnx opset 14"


def test_a_model_without_the_pattern_keeps_its_opset() -> None:
    proto = _opset12(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("Relu", ["x"], ["y"], name="r")],
                "g",
                [vi("x", [2])],
                [vi("y", [2])],
            ),
            opset_imports=[helper.make_opsetid("", 12)],
            ir_version=8,
        )
    )
    result = run_pipeline(ir.serde.deserialize_model(proto), "fuse-hardswish")
    assert gir.ai_onnx_opset(result.model) == 12
    (rec,) = result.report["passes"]
    assert rec["pass"] == "fuse-hardswish" and not rec["modified"]
