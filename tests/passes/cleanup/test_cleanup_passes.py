"""Golden, numerical and idempotence tests of the cleanup passes (the contract every pass
keeps is checked in test_pass_contract.py).

Each pass gets a small model that gives it work (structure, stats and provenance are checked,
outputs are compared with ONNX Runtime within the pass's tolerance, and a second run must
report ``modified=False``) and models where it has nothing to do (graph left unchanged).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper
from pass_testing import (
    apply_and_check,
    assert_noop,
    assert_same_outputs,
    constant,
    copy_model,
    created_by,
    init,
    initializer_array,
    make_model,
    node,
    nodes_of,
    op_counts,
    op_sequence,
    random_feeds,
    run_pass,
    vi,
)

from graphopt import ir as gir
from graphopt.cli.demo import demo_files
from graphopt.core import Tolerance, run_pipeline
from graphopt.core.pass_base import PROVENANCE_KEY
from graphopt.inputs.data import random_feeds as samples_for

RNG_SEED = 1234


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# =============================================================================== lift-constants
def _constants_model() -> ir.Model:
    rng = _rng()
    return make_model(
        [
            constant("c", _f32(rng, 4, 5)),  # 20 elements
            constant("s", np.array(2.5, np.float32)),  # a scalar
            helper.make_node("Constant", [], ["sh"], value_ints=[5, 4], name="sh_node"),
            node("Add", ["x", "c"], ["a"]),
            node("Mul", ["a", "s"], ["m"]),
            node("Reshape", ["m", "sh"], ["y"]),
        ],
        [vi("x", [4, 5])],
        [vi("y", [5, 4])],
    )


def test_lift_constants_golden() -> None:
    model = _constants_model()
    c_value = next(n for n in model.graph if n.outputs[0].name == "c").attributes["value"]
    expected_c = c_value.as_tensor().numpy().copy()
    _, p = apply_and_check(model, "lift-constants")
    assert "Constant" not in op_counts(model)
    assert op_sequence(model) == ["Add", "Mul", "Reshape"]
    assert set(model.graph.initializers) == {"c", "s", "sh"}
    np.testing.assert_array_equal(initializer_array(model, "c"), expected_c)
    np.testing.assert_array_equal(initializer_array(model, "s"), np.array(2.5, np.float32))
    np.testing.assert_array_equal(initializer_array(model, "sh"), np.array([5, 4], np.int64))
    # consumers read the initializers now
    add, mul, reshape = model.graph
    assert add.inputs[1] is model.graph.initializers["c"]
    assert mul.inputs[1] is model.graph.initializers["s"]
    assert reshape.inputs[1] is model.graph.initializers["sh"]
    assert p.stats == {"nodes_removed": 3, "removed:Constant": 3, "initializers_added": 3}
    assert not created_by(model, "lift-constants")  # it creates initializers, not nodes


@pytest.mark.parametrize(
    ("pipeline", "kept", "lifted"),
    [
        # lift_all=false lifts only 'value' Constants, the value_ints one stays a node
        ("lift-constants{lift_all=false}", {"sh"}, {"c", "s"}),
        # size_limit lifts only tensors with at least that many elements
        ("lift-constants{lift_all=false,size_limit=20}", {"s", "sh"}, {"c"}),
        ("lift-constants{size_limit=2}", {"s"}, {"c", "sh"}),
    ],
)
def test_lift_constants_options(pipeline: str, kept: set[str], lifted: set[str]) -> None:
    model = _constants_model()
    original = copy_model(model)
    result = run_pipeline(model, pipeline, verify_each=False)
    step = result.steps[0]
    assert step["modified"] is True
    assert step["stats"]["removed:Constant"] == len(lifted)
    assert {n.outputs[0].name for n in nodes_of(model, "Constant")} == kept
    assert set(model.graph.initializers) == lifted
    assert_same_outputs(original, model, Tolerance.exact())
    again = run_pipeline(model, pipeline, verify_each=False)
    assert again.steps[0]["modified"] is False


def test_lift_constants_noop() -> None:
    rng = _rng()
    # no Constant nodes at all
    assert_noop(
        make_model(
            [node("Add", ["x", "w"], ["y"])],
            [vi("x", [3])],
            [vi("y", [3])],
            [init("w", _f32(rng, 3))],
        ),
        "lift-constants",
    )
    # a Constant that is itself a graph output cannot become an initializer
    assert_noop(
        make_model(
            [constant("k", _f32(rng, 3)), node("Relu", ["x"], ["y"])],
            [vi("x", [3])],
            [vi("y", [3]), vi("k", [3])],
        ),
        "lift-constants",
    )


# =============================================================================== fold-constants
def _foldable_model() -> ir.Model:
    rng = _rng()
    return make_model(
        [
            node("Shape", ["x"], ["sh"]),
            node("Gather", ["sh", "idx0"], ["d0"], axis=0),
            node("Unsqueeze", ["d0", "ax0"], ["d0u"]),
            node("Concat", ["d0u", "minus1"], ["newshape"], axis=0),
            node("Reshape", ["x", "newshape"], ["r"]),
            node("Add", ["k1", "k2"], ["k"]),
            node("Add", ["r", "k"], ["y"]),
        ],
        [vi("x", [2, 3, 4])],
        [vi("y", [2, 12])],
        [
            init("idx0", np.array(0, np.int64)),
            init("ax0", np.array([0], np.int64)),
            init("minus1", np.array([-1], np.int64)),
            init("k1", _f32(rng, 12)),
            init("k2", _f32(rng, 12)),
        ],
    )


def test_fold_constants_golden() -> None:
    model = _foldable_model()
    k_sum = initializer_array(model, "k1") + initializer_array(model, "k2")
    _, p = apply_and_check(model, "fold-constants")
    counts = op_counts(model)
    for op in ("Shape", "Gather", "Unsqueeze", "Concat"):
        assert op not in counts, f"{op} was not folded"
    assert counts["Reshape"] == 1
    assert counts["Add"] == 1  # the constant Add is gone, the live one stays
    (reshape,) = nodes_of(model, "Reshape")
    shape_input = reshape.inputs[1]
    assert shape_input is not None and shape_input.const_value is not None
    assert shape_input.is_initializer()
    np.testing.assert_array_equal(shape_input.const_value.numpy(), [2, -1])
    (add,) = nodes_of(model, "Add")
    folded = add.inputs[1]
    assert folded is not None and folded.is_initializer() and folded.const_value is not None
    np.testing.assert_allclose(folded.const_value.numpy(), k_sum, rtol=1e-6)
    assert p.stats["removed:Shape"] == 1
    assert p.stats["removed:Gather"] == 1
    assert p.stats["removed:Unsqueeze"] == 1
    assert p.stats["removed:Concat"] == 1
    assert p.stats["removed:Add"] == 1
    assert p.stats["nodes_removed"] >= 5


def test_fold_constants_then_dead_code_leaves_only_live_ops() -> None:
    model = _foldable_model()
    original = copy_model(model)
    run_pipeline(model, "fold-constants,eliminate-dead-code", verify_each=False)
    assert op_sequence(model) == ["Reshape", "Add"]
    assert len(model.graph.initializers) == 2
    assert_same_outputs(original, model, Tolerance.reassociation())


def test_fold_constants_noop() -> None:
    rng = _rng()
    assert_noop(
        make_model(
            [node("MatMul", ["x", "w"], ["m"]), node("Relu", ["m"], ["y"])],
            [vi("x", ["batch", 3])],
            [vi("y", ["batch", 4])],
            [init("w", _f32(rng, 3, 4))],
        ),
        "fold-constants",
    )


# =========================================================================== eliminate-dead-code
def test_eliminate_dead_code_golden() -> None:
    rng = _rng()
    model = make_model(
        [
            node("Relu", ["x"], ["y"]),
            node("Sigmoid", ["x"], ["dead1"]),
            node("Neg", ["dead1"], ["dead2"]),
            node("Add", ["x", "w_dead"], ["dead3"]),
        ],
        [vi("x", [2, 3]), vi("w_input", [3])],  # an initializer that is also an input
        [vi("y", [2, 3])],
        [
            init("w_dead", _f32(rng, 2, 3)),
            init("w_unused", _f32(rng, 3)),
            init("w_input", _f32(rng, 3)),
        ],
    )
    _, p = apply_and_check(model, "eliminate-dead-code")
    assert op_sequence(model) == ["Relu"]
    # graph inputs are part of the interface: their initializers stay
    assert set(model.graph.initializers) == {"w_input"}
    assert [v.name for v in model.graph.inputs] == ["x", "w_input"]
    assert p.stats == {
        "nodes_removed": 3,
        "removed:Sigmoid": 1,
        "removed:Neg": 1,
        "removed:Add": 1,
        "initializers_removed": 2,
    }


def test_eliminate_dead_code_noop() -> None:
    rng = _rng()
    assert_noop(
        make_model(
            [node("Add", ["x", "w"], ["a"]), node("Relu", ["a"], ["y"]), node("Neg", ["a"], ["z"])],
            [vi("x", [3])],
            [vi("y", [3]), vi("z", [3])],
            [init("w", _f32(rng, 3))],
        ),
        "eliminate-dead-code",
    )


def _if_on_a_constant() -> ir.Model:
    """y = If(true, then: MatMul(x, w_then), else: MatMul(x, w_else)); the then branch also
    holds an initializer nothing reads (Silero VAD's shape, in small)."""
    from onnx import TensorProto, numpy_helper

    rng = _rng()
    arr = {k: _f32(rng, 4, 4) for k in ("w_then", "w_else", "w_stray")}

    def branch(name: str, weight: str, inits: tuple[str, ...] = ()) -> object:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"{name}_y"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [2, 4])],
            [numpy_helper.from_array(arr[k], k) for k in inits],
        )

    graph = helper.make_graph(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("then", "w_then", ("w_stray",)),
                else_branch=branch("else", "w_else"),
            )
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(arr["w_then"], "w_then"),
            numpy_helper.from_array(arr["w_else"], "w_else"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.serde.deserialize_model(proto)


def test_eliminate_dead_code_drops_initializers_no_live_node_reads() -> None:
    """A branch's unread initializer goes, and so does the weight of the branch the constant
    folder dropped (its nodes still list the weight as an input, but are not in the model)."""
    model = _if_on_a_constant()
    _, p = apply_and_check(model, "eliminate-dead-code")
    assert p.stats["initializers_removed"] == 1  # w_stray, inside the then branch
    assert "w_else" in model.graph.initializers  # the If still reads it
    run_pass(model, "fold-constants")  # inlines the then branch, drops the else branch
    assert op_sequence(model) == ["MatMul"]
    assert "w_else" in model.graph.initializers  # read by an orphan node only
    reference = copy_model(model)
    _, p = run_pass(model, "eliminate-dead-code")
    assert set(model.graph.initializers) == {"w_then"}
    assert_same_outputs(reference, model, Tolerance.exact())


# =============================================================== eliminate-common-subexpressions
def test_eliminate_common_subexpressions_golden() -> None:
    rng = _rng()
    model = make_model(
        [
            node("Relu", ["x"], ["r1"]),
            node("Relu", ["x"], ["r2"]),
            node("Add", ["r1", "w"], ["a1"]),
            node("Add", ["r2", "w"], ["a2"]),
            node("Mul", ["a1", "a2"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [init("w", _f32(rng, 2, 3))],
    )
    _, p = apply_and_check(model, "eliminate-common-subexpressions")
    assert op_sequence(model) == ["Relu", "Add", "Mul"]
    (mul,) = nodes_of(model, "Mul")
    assert mul.inputs[0] is mul.inputs[1]  # both operands are the one remaining Add
    assert p.stats == {"nodes_removed": 2, "removed:Relu": 1, "removed:Add": 1}


def test_eliminate_common_subexpressions_keeps_both_graph_outputs() -> None:
    model = make_model(
        [node("Relu", ["x"], ["y1"]), node("Relu", ["x"], ["y2"])],
        [vi("x", [2, 3])],
        [vi("y1", [2, 3]), vi("y2", [2, 3])],
    )
    apply_and_check(model, "eliminate-common-subexpressions")
    assert op_counts(model)["Relu"] == 1
    assert [v.name for v in model.graph.outputs] == ["y1", "y2"]


def test_eliminate_common_subexpressions_noop() -> None:
    assert_noop(
        make_model(
            [
                node("Relu", ["x"], ["r"]),
                node("Sigmoid", ["x"], ["s"]),
                node("Softmax", ["r"], ["a"], axis=0),
                node("Softmax", ["r"], ["b"], axis=1),  # same op, different attribute
                node("Sum", ["s", "a", "b"], ["y"]),
            ],
            [vi("x", [2, 3])],
            [vi("y", [2, 3])],
        ),
        "eliminate-common-subexpressions",
    )


# ============================================================================ eliminate-identity
def test_eliminate_identity_golden() -> None:
    model = make_model(
        [
            node("Identity", ["x"], ["i1"]),
            node("Identity", ["i1"], ["i2"]),
            node("Relu", ["i2"], ["r"]),
            node("Identity", ["r"], ["y"]),  # feeds a graph output
            node("Identity", ["x"], ["z"]),  # graph input straight to graph output: kept
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3]), vi("z", [2, 3])],
    )
    _, p = apply_and_check(model, "eliminate-identity")
    assert op_counts(model) == {"Relu": 1, "Identity": 1}
    relu, identity = model.graph
    assert relu.inputs[0] is model.graph.inputs[0]
    assert relu.outputs[0].name == "y" and relu.outputs[0] is model.graph.outputs[0]
    assert identity.inputs[0] is model.graph.inputs[0]
    assert identity.outputs[0] is model.graph.outputs[1]
    assert [v.name for v in model.graph.outputs] == ["y", "z"]
    assert p.stats == {"nodes_removed": 3, "removed:Identity": 3}


def test_eliminate_identity_noop() -> None:
    rng = _rng()
    assert_noop(
        make_model(
            [node("Identity", ["x"], ["y"]), node("Identity", ["w"], ["z"])],
            [vi("x", [2])],
            [vi("y", [2]), vi("z", [2])],
            [init("w", _f32(rng, 2))],
        ),
        "eliminate-identity",
    )


def _identity_between_outputs() -> ir.Model:
    return make_model(
        [node("Relu", ["x"], ["r"]), node("Identity", ["r"], ["y"])],
        [vi("x", [2, 3])],
        [vi("r", [2, 3]), vi("y", [2, 3])],
    )


def test_eliminate_identity_between_two_graph_outputs_keeps_both() -> None:
    model = _identity_between_outputs()
    original = copy_model(model)
    run_pass(model, "eliminate-identity")
    assert [v.name for v in model.graph.outputs] == ["r", "y"]
    assert_same_outputs(original, model, Tolerance.exact())


def test_cleanup_keeps_duplicate_graph_outputs() -> None:
    model = make_model(
        [node("Relu", ["x"], ["y1"]), node("Relu", ["x"], ["y2"])],
        [vi("x", [2, 3])],
        [vi("y1", [2, 3]), vi("y2", [2, 3])],
    )
    original = copy_model(model)
    run_pipeline(model, "cleanup", verify_each=False)
    assert [v.name for v in model.graph.outputs] == ["y1", "y2"]
    assert_same_outputs(original, model, Tolerance.exact())


# ====================================================================== deduplicate-initializers
def test_deduplicate_initializers_golden() -> None:
    rng = _rng()
    a = _f32(rng, 4)
    model = make_model(
        [
            node("Add", ["x", "w1"], ["p"]),
            node("Mul", ["p", "w2"], ["q"]),
            node("Sub", ["q", "w3"], ["y"]),
        ],
        [vi("x", [2, 4])],
        [vi("y", [2, 4])],
        [init("w1", a), init("w2", a.copy()), init("w3", a + 1)],
    )
    _, p = apply_and_check(model, "deduplicate-initializers")
    assert set(model.graph.initializers) == {"w1", "w3"}
    add, mul, sub = model.graph
    assert add.inputs[1] is mul.inputs[1] is model.graph.initializers["w1"]
    assert sub.inputs[1] is model.graph.initializers["w3"]
    np.testing.assert_array_equal(initializer_array(model, "w1"), a)
    assert p.stats == {"initializers_removed": 1}
    assert op_sequence(model) == ["Add", "Mul", "Sub"]


def _dedup_noop_models() -> dict[str, Callable[[], ir.Model]]:
    zeros = np.zeros(4, np.float32)
    return {
        "different-values": lambda: make_model(
            [node("Add", ["x", "w1"], ["a"]), node("Add", ["a", "w2"], ["y"])],
            [vi("x", [4])],
            [vi("y", [4])],
            [init("w1", zeros), init("w2", zeros + 1)],
        ),
        "same-bytes-different-dtype": lambda: make_model(
            [
                node("Add", ["x", "w1"], ["a"]),
                node("Cast", ["w2"], ["c"], to=1),
                node("Add", ["a", "c"], ["y"]),
            ],
            [vi("x", [4])],
            [vi("y", [4])],
            [init("w1", zeros), init("w2", np.zeros(4, np.int32))],
        ),
        "same-bytes-different-shape": lambda: make_model(
            [node("Add", ["x", "w1"], ["a"]), node("Add", ["a", "w2"], ["y"])],
            [vi("x", [2, 2])],
            [vi("y", [2, 2])],
            [init("w1", np.zeros((2, 2), np.float32)), init("w2", np.zeros((1, 2), np.float32))],
        ),
        "equal-but-one-is-an-input": lambda: make_model(
            [node("Add", ["x", "w1"], ["a"]), node("Mul", ["a", "w2"], ["y"])],
            [vi("x", [4]), vi("w1", [4])],
            [vi("y", [4])],
            [init("w1", zeros), init("w2", zeros.copy())],
        ),
    }


@pytest.mark.parametrize("case", sorted(_dedup_noop_models()))
def test_deduplicate_initializers_noop(case: str) -> None:
    assert_noop(_dedup_noop_models()[case](), "deduplicate-initializers")


# ================================================================================= infer-shapes
def _shapeless_model() -> ir.Model:
    rng = _rng()
    return make_model(
        [
            node("Relu", ["x"], ["r"]),
            node("MatMul", ["r", "w"], ["m"]),
            node("Transpose", ["m"], ["y"], perm=[1, 0]),
        ],
        [vi("x", ["batch", 3])],
        [vi("y", None)],  # typed output without a shape
        [init("w", _f32(rng, 3, 5))],
        infer_shapes=False,
    )


def test_infer_shapes_golden() -> None:
    model = _shapeless_model()
    relu, matmul, transpose = model.graph
    assert relu.outputs[0].shape is None and matmul.outputs[0].shape is None
    apply_and_check(model, "infer-shapes", feeds=random_feeds(model, dims={"batch": 3}))
    assert relu.outputs[0].dtype == ir.DataType.FLOAT
    assert str(relu.outputs[0].shape) == "[batch,3]"
    assert str(matmul.outputs[0].shape) == "[batch,5]"
    assert str(transpose.outputs[0].shape) == "[5,batch]"
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert op_sequence(model) == ["Relu", "MatMul", "Transpose"]


def test_infer_shapes_strict_option() -> None:
    model = _shapeless_model()
    result = run_pipeline(model, "infer-shapes{strict=true,data_prop=false}", verify_each=False)
    assert result.steps[0]["modified"] is True
    assert str(model.graph.outputs[0].shape) == "[5,batch]"


def test_infer_shapes_noop() -> None:
    model = make_model(  # already fully inferred by make_model
        [node("Relu", ["x"], ["r"]), node("Neg", ["r"], ["y"])],
        [vi("x", ["batch", 3])],
        [vi("y", ["batch", 3])],
    )
    assert_noop(model, "infer-shapes")


# =========================================================================== sort-topologically
def test_sort_topologically_golden() -> None:
    rng = _rng()
    model = make_model(
        [
            node("Add", ["b", "c"], ["y"]),
            node("Neg", ["a"], ["c"]),
            node("Sigmoid", ["a"], ["b"]),
            node("Mul", ["x", "w"], ["a"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [init("w", _f32(rng, 3))],
        infer_shapes=False,
    )
    _, p = apply_and_check(model, "sort-topologically")
    order = op_sequence(model)
    assert order[0] == "Mul" and order[-1] == "Add"
    assert sorted(order[1:3]) == ["Neg", "Sigmoid"]
    seen: set[str] = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for n in model.graph:
        assert all(v is None or v.name in seen for v in n.inputs), f"{n.op_type} before inputs"
        seen |= {v.name for v in n.outputs}
    assert dict(p.stats) == {}  # nothing added or removed


def test_sort_topologically_noop() -> None:
    assert_noop(
        make_model(
            [node("Relu", ["x"], ["a"]), node("Neg", ["a"], ["b"]), node("Add", ["a", "b"], ["y"])],
            [vi("x", [2])],
            [vi("y", [2])],
        ),
        "sort-topologically",
    )


# ============================================================ provenance of adapter-created nodes
@pytest.mark.parametrize(
    ("pass_name", "build", "new_op"),
    [
        (
            "eliminate-common-subexpressions",
            lambda: make_model(
                [node("Relu", ["x"], ["y1"]), node("Relu", ["x"], ["y2"])],
                [vi("x", [2, 3])],
                [vi("y1", [2, 3]), vi("y2", [2, 3])],
            ),
            "Identity",
        ),
        ("fold-constants", _foldable_model, "Constant"),
    ],
)
def test_adapter_marks_created_nodes(
    pass_name: str, build: Callable[[], ir.Model], new_op: str
) -> None:
    model = build()
    before = {id(n) for n in model.graph}
    result, p = run_pass(model, pass_name)
    assert result.modified and p.stats["nodes_added"] >= 1
    created = [n for n in model.graph if id(n) not in before]
    assert [n.op_type for n in created] == [new_op]
    assert all(n.metadata_props.get(PROVENANCE_KEY) == pass_name for n in created)


@pytest.fixture(scope="module")
def demo_feeds() -> list[dict[str, np.ndarray]]:
    model = gir.load_model(demo_files()[0])
    return samples_for(model, count=2, seed=7, dims={"batch": 4}).feeds


def test_cleanup_preset_on_demo_model(demo_feeds: list[dict[str, np.ndarray]]) -> None:
    model = gir.load_model(demo_files()[0])
    original = copy_model(model)
    assert op_counts(original)["BatchNormalization"] == 4
    result = run_pipeline(model, "cleanup", verify_each=False)
    counts = op_counts(model)
    assert "BatchNormalization" not in counts
    assert counts == {"Conv": 3, "Relu": 4, "MaxPool": 1, "Flatten": 1, "Gemm": 2}
    folded = sum(r["stats"].get("folded:BatchNormalization", 0) for r in result.steps)
    assert folded == 4
    # the three Convs and the first Gemm were rebuilt by fold-batchnorm
    assert len(created_by(model, "fold-batchnorm")) == 4
    used = {v.name for n in model.graph for v in n.inputs if v is not None}
    assert set(model.graph.initializers) <= used  # the old weights and BN stats are gone
    assert_same_outputs(
        original, model, Tolerance(max_abs=1e-4, max_rel=0.0, min_cosine=0.9999), demo_feeds
    )
    # and a second cleanup finds nothing left to do
    again = run_pipeline(model, "cleanup", verify_each=False)
    assert not any(r["modified"] for r in again.steps)


def test_cleanup_preset_with_verify_each() -> None:
    model = gir.load_model(demo_files()[0])
    samples = samples_for(model, count=2, seed=3, dims={"batch": 2})
    result = run_pipeline(model, "cleanup", samples=samples, verify_each=True)
    assert result.report["verify"]["enabled"] is True
    for record in result.steps:
        if record["modified"]:
            assert record["verify"]["passed"], record


def test_dead_code_keeps_trailing_empty_inputs() -> None:
    """Pad(x, pads, "") keeps its empty input: dropping it turns on ORT's Pad-into-Conv
    fusion, which made CREPE 1.6x slower (see passes/cleanup/eliminate_dead_code.py)."""
    import onnx
    from onnx import TensorProto

    g = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads", ""], ["p"], mode="constant"),
            helper.make_node("Relu", ["x"], ["unused"]),
            helper.make_node("Conv", ["p", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
        [
            helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1]),
            helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [0.1] * 9),
        ],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    result = run_pipeline(model, "eliminate-dead-code", verify_each=False)
    assert result.steps[0]["modified"]
    out = ir.to_proto(result.model)
    pad = next(n for n in out.graph.node if n.op_type == "Pad")
    assert list(pad.input) == ["x", "pads", ""]
    assert [n.op_type for n in out.graph.node] == ["Pad", "Conv"]
    onnx.checker.check_model(out)


def _runs(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from graphopt import runtime

    return runtime.run_feeds(runtime.make_session(model, optimize=False), [feeds])[0]


def test_infer_shapes_keeps_sequence_types() -> None:
    """onnx_ir 1.1 merged a sequence's element dtype as a tensor type; ORT then refused it."""
    from onnx import TensorProto

    g = helper.make_graph(
        [
            helper.make_node("SequenceConstruct", ["x", "x"], ["s"]),
            helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    )
    result = run_pipeline(model, "infer-shapes", verify_each=False)
    assert result.steps[0]["modified"]
    seq = next(n for n in result.model.graph if n.op_type == "SequenceConstruct").outputs[0]
    assert isinstance(seq.type, ir.SequenceType)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_runs(result.model, {"x": x})[0], np.concatenate([x, x]))


def test_identity_returning_an_outer_value_from_a_branch_is_kept() -> None:
    """An If branch may not return an outer-scope value directly (ORT refuses the model)."""
    from onnx import TensorProto

    then = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2])],
    )
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
            helper.make_node("Add", ["y", "r"], ["z"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    )
    run_pipeline(model, "cleanup", verify_each=False)
    assert any(n.op_type == "Identity" for n in gir.iter_nodes(model))
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(_runs(model, {"x": x, "c": np.array(True)})[0], [0.0, 4.0])
    np.testing.assert_array_equal(_runs(model, {"x": x, "c": np.array(False)})[0], [0.0, 0.0])
