"""fold-batchnorm: BatchNormalization and per-channel Mul/Add/Sub folded into the producer.

Every positive case runs on random weights and non-trivial BatchNorm statistics (var > 0,
gamma != 1, mean != 0), compares ONNX Runtime outputs before and after within the pass's
tolerance, checks the rewritten structure, the folded weights against a numpy reference,
provenance on the created nodes, the ``folded:<Kind>`` counters and idempotence. Negative
cases must leave the graph exactly as it was.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from pass_testing import (
    apply_and_check,
    assert_noop,
    created_by,
    init,
    initializer_array,
    make_model,
    node,
    nodes_of,
    op_counts,
    vi,
)

from graphopt.core import get_pass, run_pipeline
from graphopt.core.pass_base import PROVENANCE_KEY

PASS = "fold-batchnorm"
EPS = 1e-3


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _bn_params(
    rng: np.random.Generator, channels: int, prefix: str = "bn", dtype: type = np.float32
) -> list[onnx.TensorProto]:
    """gamma of both signs and away from 1, beta and mean != 0, var in [0.2, 3]."""
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
    return [
        init(f"{prefix}.gamma", gamma.astype(dtype)),
        init(f"{prefix}.beta", rng.standard_normal(channels).astype(dtype)),
        init(f"{prefix}.mean", rng.standard_normal(channels).astype(dtype)),
        init(f"{prefix}.var", rng.uniform(0.2, 3.0, channels).astype(dtype)),
    ]


def _bn(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    attrs.setdefault("epsilon", EPS)
    return node(
        "BatchNormalization",
        [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean", f"{prefix}.var"],
        [y],
        **attrs,
    )


def _bn_affine(model: ir.Model, prefix: str = "bn") -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of a BatchNormalization in float64, from the model's initializers."""
    g, b, m, v = (
        initializer_array(model, f"{prefix}.{k}").astype(np.float64)
        for k in ("gamma", "beta", "mean", "var")
    )
    scale = g / np.sqrt(v + EPS)
    return scale, b - m * scale


# ============================================================================ positive cases
@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[], ir.Model]
    ops_after: dict[str, int]
    stats: dict[str, int]
    # golden weights: (model before) -> {producer input index: expected array}
    golden: Callable[[ir.Model], dict[int, np.ndarray]] | None = None
    producer: str = "Conv"
    attrs_after: dict[str, object] = dataclasses.field(default_factory=dict)


def _conv_bn() -> ir.Model:
    rng = _rng(1)
    return make_model(
        [
            node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            _bn("c", "n"),
            node("Relu", ["n"], ["y"]),
        ],
        [vi("x", [2, 3, 6, 6])],
        [vi("y", [2, 4, 6, 6])],
        [init("w", _f32(rng, 4, 3, 3, 3)), init("b", _f32(rng, 4)), *_bn_params(rng, 4)],
    )


def _conv_bn_golden(m: ir.Model) -> dict[int, np.ndarray]:
    scale, shift = _bn_affine(m)
    w = initializer_array(m, "w").astype(np.float64)
    b = initializer_array(m, "b").astype(np.float64) if "b" in m.graph.initializers else 0.0
    return {1: w * scale[:, None, None, None], 2: scale * b + shift}


def _conv_nobias_bn() -> ir.Model:
    rng = _rng(2)
    return make_model(
        [node("Conv", ["x", "w"], ["c"], strides=[2, 2]), _bn("c", "y")],
        [vi("x", [2, 3, 7, 7])],
        [vi("y", [2, 5, 3, 3])],
        [init("w", _f32(rng, 5, 3, 3, 3)), *_bn_params(rng, 5)],
    )


def _depthwise_bn() -> ir.Model:
    rng = _rng(3)
    return make_model(
        [node("Conv", ["x", "w", "b"], ["c"], group=4, pads=[1, 1, 1, 1]), _bn("c", "y")],
        [vi("x", [2, 4, 5, 5])],
        [vi("y", [2, 4, 5, 5])],
        [init("w", _f32(rng, 4, 1, 3, 3)), init("b", _f32(rng, 4)), *_bn_params(rng, 4)],
    )


def _convtranspose_bn(group: int) -> Callable[[], ir.Model]:
    def build() -> ir.Model:
        rng = _rng(4 + group)
        cin, cout_g = 4, 3
        return make_model(
            [
                node("ConvTranspose", ["x", "w", "b"], ["c"], group=group, strides=[2, 2]),
                _bn("c", "y"),
            ],
            [vi("x", [2, cin, 3, 3])],
            [vi("y", [2, cout_g * group, 7, 7])],
            [
                init("w", _f32(rng, cin, cout_g, 3, 3)),
                init("b", _f32(rng, cout_g * group)),
                *_bn_params(rng, cout_g * group),
            ],
        )

    return build


def _convtranspose_golden(group: int) -> Callable[[ir.Model], dict[int, np.ndarray]]:
    def golden(m: ir.Model) -> dict[int, np.ndarray]:
        scale, shift = _bn_affine(m)
        w = initializer_array(m, "w").astype(np.float64)  # [Cin, Cout/group, kH, kW]
        cin_g, cout_g = w.shape[0] // group, w.shape[1]
        out = w.copy()
        for g in range(group):  # output channel g*cout_g + j reads w[g-th input block, j]
            block = slice(g * cin_g, (g + 1) * cin_g)
            out[block] *= scale[g * cout_g : (g + 1) * cout_g][None, :, None, None]
        b = initializer_array(m, "b").astype(np.float64)
        return {1: out, 2: scale * b + shift}

    return golden


def _gemm_bn() -> ir.Model:
    rng = _rng(8)
    return make_model(
        [node("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.7, beta=1.3), _bn("g", "y")],
        [vi("x", [3, 6])],
        [vi("y", [3, 5])],
        [init("w", _f32(rng, 5, 6)), init("c", _f32(rng, 5)), *_bn_params(rng, 5)],
    )


def _gemm_bn_golden(m: ir.Model) -> dict[int, np.ndarray]:
    scale, shift = _bn_affine(m)
    w = initializer_array(m, "w").astype(np.float64)  # [N, K] (transB)
    c = initializer_array(m, "c").astype(np.float64)
    return {1: w * scale[:, None], 2: scale * 1.3 * c + shift}


def _gemm_noc_bn() -> ir.Model:
    rng = _rng(9)
    return make_model(
        [node("Gemm", ["x", "w"], ["g"], alpha=1.5), _bn("g", "y")],
        [vi("x", [3, 6])],
        [vi("y", [3, 5])],
        [init("w", _f32(rng, 6, 5)), *_bn_params(rng, 5)],
    )


def _gemm_noc_golden(m: ir.Model) -> dict[int, np.ndarray]:
    scale, shift = _bn_affine(m)
    w = initializer_array(m, "w").astype(np.float64)  # [K, N]
    return {1: w * scale[None, :], 2: shift}


def _matmul_bn() -> ir.Model:
    rng = _rng(10)
    return make_model(
        [node("MatMul", ["x", "w"], ["mm"]), _bn("mm", "n"), node("Relu", ["n"], ["y"])],
        [vi("x", [4, 6])],
        [vi("y", [4, 5])],
        [init("w", _f32(rng, 6, 5)), *_bn_params(rng, 5)],
    )


def _conv_mul_add() -> ir.Model:
    rng = _rng(11)
    return make_model(
        [
            node("Conv", ["x", "w", "b"], ["c"]),
            node("Mul", ["c", "s"], ["m"]),
            node("Add", ["m", "t"], ["y"]),
        ],
        [vi("x", [2, 3, 5, 5])],
        [vi("y", [2, 4, 3, 3])],
        [
            init("w", _f32(rng, 4, 3, 3, 3)),
            init("b", _f32(rng, 4)),
            init("s", _f32(rng, 4, 1, 1)),
            init("t", _f32(rng, 1, 4, 1, 1)),
        ],
    )


def _conv_mul_add_golden(m: ir.Model) -> dict[int, np.ndarray]:
    s = initializer_array(m, "s").reshape(-1).astype(np.float64)
    t = initializer_array(m, "t").reshape(-1).astype(np.float64)
    w = initializer_array(m, "w").astype(np.float64)
    b = initializer_array(m, "b").astype(np.float64)
    return {1: w * s[:, None, None, None], 2: s * b + t}


def _matmul3_mul() -> ir.Model:
    rng = _rng(12)
    return make_model(
        [node("MatMul", ["x", "w"], ["mm"]), node("Mul", ["mm", "s"], ["y"])],
        [vi("x", [2, 3, 6])],
        [vi("y", [2, 3, 5])],
        [init("w", _f32(rng, 6, 5)), init("s", _f32(rng, 5))],
    )


def _matmul3_mul_golden(m: ir.Model) -> dict[int, np.ndarray]:
    w = initializer_array(m, "w").astype(np.float64)
    return {1: w * initializer_array(m, "s").astype(np.float64)[None, :]}


def _conv_sub() -> ir.Model:
    rng = _rng(13)
    return make_model(
        [node("Conv", ["x", "w", "b"], ["c"]), node("Sub", ["c", "t"], ["y"])],
        [vi("x", [2, 3, 5, 5])],
        [vi("y", [2, 4, 3, 3])],
        [
            init("w", _f32(rng, 4, 3, 3, 3)),
            init("b", _f32(rng, 4)),
            init("t", _f32(rng, 1, 4, 1, 1)),
        ],
    )


def _conv_sub_golden(m: ir.Model) -> dict[int, np.ndarray]:
    b = initializer_array(m, "b").astype(np.float64)
    t = initializer_array(m, "t").reshape(-1).astype(np.float64)
    return {1: initializer_array(m, "w").astype(np.float64), 2: b - t}


def _conv_bn_mul_sub_chain() -> ir.Model:
    rng = _rng(14)
    return make_model(
        [
            node("Conv", ["x", "w", "b"], ["c"]),
            _bn("c", "n"),
            node("Mul", ["s", "n"], ["m"]),  # constant on the left
            node("Sub", ["m", "t"], ["y"]),
        ],
        [vi("x", [2, 3, 5, 5])],
        [vi("y", [2, 4, 3, 3])],
        [
            init("w", _f32(rng, 4, 3, 3, 3)),
            init("b", _f32(rng, 4)),
            *_bn_params(rng, 4),
            init("s", _f32(rng, 4, 1, 1)),
            init("t", np.array(0.75, np.float32)),  # a scalar shift
        ],
    )


def _shared_weight_two_convs() -> ir.Model:
    rng = _rng(15)
    return make_model(
        [
            node("Conv", ["x", "w"], ["c1"]),
            _bn("c1", "n1", "bn1"),
            node("Conv", ["x", "w"], ["c2"]),
            _bn("c2", "n2", "bn2"),
            node("Add", ["n1", "n2"], ["y"]),
        ],
        [vi("x", [2, 3, 5, 5])],
        [vi("y", [2, 4, 3, 3])],
        [init("w", _f32(rng, 4, 3, 3, 3)), *_bn_params(rng, 4, "bn1"), *_bn_params(rng, 4, "bn2")],
    )


def _conv_bn_without_value_shapes() -> ir.Model:
    rng = _rng(16)
    return make_model(  # as exporters often leave it: no value_info for intermediates
        [node("Conv", ["x", "w", "b"], ["c"]), _bn("c", "y")],
        [vi("x", ["batch", 3, 5, 5])],
        [vi("y", ["batch", 4, 3, 3])],
        [init("w", _f32(rng, 4, 3, 3, 3)), init("b", _f32(rng, 4)), *_bn_params(rng, 4)],
        infer_shapes=False,
    )


CASES: dict[str, Case] = {
    "conv+bn": Case(
        _conv_bn, {"Conv": 1, "Relu": 1}, {"folded:BatchNormalization": 1}, _conv_bn_golden
    ),
    "conv-no-bias+bn": Case(
        _conv_nobias_bn,
        {"Conv": 1},
        {"folded:BatchNormalization": 1},
        _conv_bn_golden,
        attrs_after={"strides": (2, 2)},
    ),
    "depthwise-conv+bn": Case(
        _depthwise_bn,
        {"Conv": 1},
        {"folded:BatchNormalization": 1},
        _conv_bn_golden,
        attrs_after={"group": 4},
    ),
    "convtranspose-group1+bn": Case(
        _convtranspose_bn(1),
        {"ConvTranspose": 1},
        {"folded:BatchNormalization": 1},
        _convtranspose_golden(1),
        producer="ConvTranspose",
    ),
    "convtranspose-group2+bn": Case(
        _convtranspose_bn(2),
        {"ConvTranspose": 1},
        {"folded:BatchNormalization": 1},
        _convtranspose_golden(2),
        producer="ConvTranspose",
        attrs_after={"group": 2},
    ),
    "gemm-transB-alpha-beta-C+bn": Case(
        _gemm_bn,
        {"Gemm": 1},
        {"folded:BatchNormalization": 1},
        _gemm_bn_golden,
        producer="Gemm",
        attrs_after={"transB": 1, "alpha": pytest.approx(0.7), "beta": 1.0},
    ),
    "gemm-no-C+bn": Case(
        _gemm_noc_bn,
        {"Gemm": 1},
        {"folded:BatchNormalization": 1},
        _gemm_noc_golden,
        producer="Gemm",
        attrs_after={"alpha": 1.5, "beta": 1.0},
    ),
    "matmul+bn": Case(
        _matmul_bn,
        {"MatMul": 1, "Add": 1, "Relu": 1},
        {"folded:BatchNormalization": 1},
        producer="MatMul",
    ),
    "conv+mul+add": Case(
        _conv_mul_add, {"Conv": 1}, {"folded:Mul": 1, "folded:Add": 1}, _conv_mul_add_golden
    ),
    "matmul-rank3+mul": Case(
        _matmul3_mul, {"MatMul": 1}, {"folded:Mul": 1}, _matmul3_mul_golden, producer="MatMul"
    ),
    "conv+sub": Case(_conv_sub, {"Conv": 1}, {"folded:Sub": 1}, _conv_sub_golden),
    "conv+bn+mul+sub": Case(
        _conv_bn_mul_sub_chain,
        {"Conv": 1},
        {"folded:BatchNormalization": 1, "folded:Mul": 1, "folded:Sub": 1},
    ),
    "two-convs-sharing-weights+bn": Case(
        _shared_weight_two_convs, {"Conv": 2, "Add": 1}, {"folded:BatchNormalization": 2}
    ),
    "conv+bn-without-value-shapes": Case(
        _conv_bn_without_value_shapes,
        {"Conv": 1},
        {"folded:BatchNormalization": 1},
        _conv_bn_golden,
    ),
}


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_fold(case_name: str) -> None:
    case = CASES[case_name]
    model = case.build()
    before_nodes = {id(n) for n in model.graph}
    output_names = [v.name for v in model.graph.outputs]
    original, p = apply_and_check(model, PASS)  # numerics within tolerance, idempotence

    # structure
    assert dict(op_counts(model)) == case.ops_after
    assert dict(p.stats) == case.stats
    assert [v.name for v in model.graph.outputs] == output_names
    for op in ("BatchNormalization", "Mul", "Sub"):
        if op not in case.ops_after:
            assert op not in op_counts(model)

    # provenance: exactly the nodes the pass created carry it
    created = [n for n in model.graph if id(n) not in before_nodes]
    assert created, "the pass rewrote nothing"
    assert {id(n) for n in created} == {id(n) for n in created_by(model, PASS)}
    assert all(n.metadata_props[PROVENANCE_KEY] == PASS for n in created)

    # the rewritten producer reads new constant weights
    producers = nodes_of(model, case.producer)
    assert producers and all(n in created for n in producers)
    for prod in producers:
        weight = prod.inputs[1]
        assert weight is not None and weight.is_initializer()
        assert weight.name not in original.graph.initializers
        for key, want in case.attrs_after.items():
            assert prod.attributes[key].value == want, key
    if case.golden is not None:
        (prod,) = producers
        for index, want in case.golden(original).items():
            value = prod.inputs[index]
            assert value is not None and value.const_value is not None
            got = value.const_value.numpy()
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_matmul_bn_becomes_matmul_add() -> None:
    model = _matmul_bn()
    original, _ = apply_and_check(model, PASS)
    matmul, add, relu = model.graph
    assert (matmul.op_type, add.op_type, relu.op_type) == ("MatMul", "Add", "Relu")
    assert add.inputs[0] is matmul.outputs[0]
    assert relu.inputs[0] is add.outputs[0]
    scale, shift = _bn_affine(original)
    w = initializer_array(original, "w").astype(np.float64)
    assert matmul.inputs[1] is not None and matmul.inputs[1].const_value is not None
    assert add.inputs[1] is not None and add.inputs[1].const_value is not None
    np.testing.assert_allclose(matmul.inputs[1].const_value.numpy(), w * scale, rtol=1e-5)
    np.testing.assert_allclose(add.inputs[1].const_value.numpy(), shift, rtol=1e-5, atol=1e-6)
    assert add.metadata_props[PROVENANCE_KEY] == PASS


def test_cleanup_drops_the_folded_away_initializers() -> None:
    model = _conv_bn()
    run_pipeline(model, "fold-batchnorm,eliminate-dead-code", verify_each=False)
    (conv,) = nodes_of(model, "Conv")
    assert set(model.graph.initializers) == {v.name for v in conv.inputs[1:] if v is not None}


# ============================================================================ left alone
def _conv_then(
    consumers: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    weights: str = "initializer",
) -> ir.Model:
    """Conv(x, w, b) -> consumers; ``weights`` may make w a graph input."""
    rng = _rng(20)
    initializers = [
        init("b", _f32(rng, 4)),
        *_bn_params(rng, 4),
        init("k", _f32(rng, 1, 1, 3, 1)),  # varies along H
        init("k1", _f32(rng, 1, 4, 1, 1)),  # per channel
    ]
    inputs = [vi("x", [2, 3, 5, 5])]
    if weights == "graph-input":
        inputs.append(vi("w", [4, 3, 3, 3]))
    elif weights == "overridable-initializer":
        inputs.append(vi("w", [4, 3, 3, 3]))
        initializers.append(init("w", _f32(rng, 4, 3, 3, 3)))
    else:
        initializers.append(init("w", _f32(rng, 4, 3, 3, 3)))
    return make_model(
        [node("Conv", ["x", "w", "b"], ["c"]), *consumers], inputs, outputs, initializers
    )


def _mm3(consumer: onnx.NodeProto, extra: list[onnx.TensorProto], out_shape: list[int]) -> ir.Model:
    rng = _rng(21)
    return make_model(
        [node("MatMul", ["x", "w"], ["mm"]), consumer],
        [vi("x", [2, 3, 6])],
        [vi("y", out_shape)],
        [init("w", _f32(rng, 6, 5)), *extra],
    )


NEGATIVE: dict[str, Callable[[], ir.Model]] = {
    "producer-output-has-second-consumer": lambda: _conv_then(
        [_bn("c", "y"), node("Relu", ["c"], ["z"])],
        [vi("y", [2, 4, 3, 3]), vi("z", [2, 4, 3, 3])],
    ),
    "bn-training-mode": lambda: _conv_then(
        [
            node(
                "BatchNormalization",
                ["c", "bn.gamma", "bn.beta", "bn.mean", "bn.var"],
                ["y", "running_mean", "running_var"],
                training_mode=1,
            )
        ],
        [vi("y", [2, 4, 3, 3]), vi("running_mean", [4]), vi("running_var", [4])],
    ),
    "mul-varies-along-non-channel-axis": lambda: _conv_then(
        [node("Mul", ["c", "k"], ["y"])], [vi("y", [2, 4, 3, 3])]
    ),
    "weights-are-a-graph-input": lambda: _conv_then(
        [_bn("c", "y")], [vi("y", [2, 4, 3, 3])], weights="graph-input"
    ),
    "weights-are-an-overridable-initializer": lambda: _conv_then(
        [_bn("c", "y")], [vi("y", [2, 4, 3, 3])], weights="overridable-initializer"
    ),
    "mul-broadcast-adds-a-dimension": lambda: make_model(
        [node("Conv", ["x", "w"], ["c"]), node("Mul", ["c", "s"], ["y"])],
        [vi("x", [2, 3, 5, 5])],
        [vi("y", [1, 2, 4, 3, 3])],
        [init("w", _f32(_rng(22), 4, 3, 3, 3)), init("s", _f32(_rng(23), 1, 1, 4, 1, 1))],
    ),
    "gemm-mul-broadcast-adds-a-dimension": lambda: make_model(
        [node("Gemm", ["x", "w"], ["g"]), node("Mul", ["g", "s"], ["y"])],
        [vi("x", [3, 6])],
        [vi("y", [1, 3, 5])],
        [init("w", _f32(_rng(24), 6, 5)), init("s", _f32(_rng(25), 1, 1, 5))],
    ),
    "conv-output-is-a-graph-output": lambda: _conv_then(
        [_bn("c", "y")], [vi("y", [2, 4, 3, 3]), vi("c", [2, 4, 3, 3])]
    ),
    "matmul-rank3+add-has-no-bias-to-absorb-it": lambda: _mm3(
        node("Add", ["mm", "t"], ["y"]), [init("t", _f32(_rng(26), 5))], [2, 3, 5]
    ),
    "matmul-rank3+sub-has-no-bias-to-absorb-it": lambda: _mm3(
        node("Sub", ["mm", "t"], ["y"]), [init("t", _f32(_rng(27), 5))], [2, 3, 5]
    ),
    "matmul-rank3+bn-normalizes-a-non-column-axis": lambda: make_model(
        [node("MatMul", ["x", "w"], ["mm"]), _bn("mm", "y")],
        [vi("x", [2, 3, 6])],
        [vi("y", [2, 3, 6])],
        [init("w", _f32(_rng(28), 6, 6)), *_bn_params(_rng(29), 3)],
    ),
    "constant-minus-conv": lambda: _conv_then(
        [node("Sub", ["k1", "c"], ["y"])], [vi("y", [2, 4, 3, 3])]
    ),
    "bn-stats-are-a-graph-input": lambda: make_model(
        [node("Conv", ["x", "w"], ["c"]), _bn("c", "y")],
        [vi("x", [2, 3, 5, 5]), vi("bn.mean", [4])],
        [vi("y", [2, 4, 3, 3])],
        [
            init("w", _f32(_rng(30), 4, 3, 3, 3)),
            *[t for t in _bn_params(_rng(31), 4) if t.name != "bn.mean"],
        ],
    ),
    "conv-bias-is-computed": lambda: make_model(
        [node("Relu", ["bias_in"], ["b"]), node("Conv", ["x", "w", "b"], ["c"]), _bn("c", "y")],
        [vi("x", [2, 3, 5, 5]), vi("bias_in", [4])],
        [vi("y", [2, 4, 3, 3])],
        [init("w", _f32(_rng(32), 4, 3, 3, 3)), *_bn_params(_rng(33), 4)],
    ),
    "integer-mul": lambda: make_model(
        [node("MatMul", ["x", "w"], ["mm"]), node("Mul", ["mm", "s"], ["y"])],
        [vi("x", [2, 6], onnx.TensorProto.INT64)],
        [vi("y", [2, 5], onnx.TensorProto.INT64)],
        [init("w", np.ones((6, 5), np.int64)), init("s", np.arange(5, dtype=np.int64))],
    ),
}


@pytest.mark.parametrize("case_name", sorted(NEGATIVE))
def test_left_alone(case_name: str) -> None:
    model = NEGATIVE[case_name]()
    counts = collections.Counter(op_counts(model))
    assert_noop(model, PASS)
    assert op_counts(model) == counts


def test_options_turn_off_each_form() -> None:
    model = _conv_bn_mul_sub_chain()
    result = run_pipeline(model, "fold-batchnorm{batchnorm=false}", verify_each=False)
    assert result.steps[0]["modified"] is False  # BN blocks the Mul behind it
    assert op_counts(model)["BatchNormalization"] == 1

    model = _conv_mul_add()
    result = run_pipeline(model, "fold-batchnorm{mul_add=false}", verify_each=False)
    assert result.steps[0]["modified"] is False
    assert dict(op_counts(model)) == {"Conv": 1, "Mul": 1, "Add": 1}

    model = _conv_bn()
    result = run_pipeline(model, "fold-batchnorm{mul_add=false}", verify_each=False)
    assert result.steps[0]["stats"] == {"folded:BatchNormalization": 1}
    assert "BatchNormalization" not in op_counts(model)


def test_declared_tolerance_is_reassociation() -> None:
    cls = get_pass(PASS)
    assert cls.tolerance.max_rel > 0 and cls.tolerance.max_abs > 0


def test_fold_float16_conv_bn_within_declared_tolerance() -> None:
    rng = _rng(40)
    f16 = onnx.TensorProto.FLOAT16
    model = make_model(
        [node("Conv", ["x", "w", "b"], ["c"]), _bn("c", "y")],
        [vi("x", [2, 3, 5, 5], f16)],
        [vi("y", [2, 4, 3, 3], f16)],
        [
            init("w", _f32(rng, 4, 3, 3, 3).astype(np.float16)),
            init("b", _f32(rng, 4).astype(np.float16)),
            *_bn_params(rng, 4, dtype=np.float16),
        ],
    )
    apply_and_check(model, PASS)
