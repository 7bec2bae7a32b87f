"""prune-channels and its channel dependency analysis.

The central check is exactness of the rewrite: removing a set of channels must give the same
outputs as the original model in which those channels are silenced where they are read (the
sinks' matching weight rows zeroed). That holds through BatchNorm, residual Adds, Concat,
depthwise Convs, Pad, pooling, Flatten/Transpose/Reshape into a Gemm, per-channel constants
and an erf-GELU MLP, on random kept sets, and on the demo CNN. Unsafe structures are left
alone with a reason. Then the pass: counts, criteria (second-order drops a duplicated
channel that magnitude keeps), global scope, idempotence, options and errors.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest
from graphopt.passes.sparsify.channel_analysis import _Analyzer, analyze
from graphopt.passes.sparsify.channel_layout import CHANNELS_KEY, Analysis
from graphopt.passes.sparsify.channel_rewrite import apply
from graphopt.passes.sparsify.channel_shapes import symbolic_shapes
from graphopt.passes.sparsify.prune_channels import PruneChannelsPass, layer_macs
from graphopt.passes.sparsify.prune_importance import global_counts, keep_count

from graphopt import ir as gir
from graphopt.cli import demo
from graphopt.core import run_pipeline
from graphopt.core.pass_base import PassContext
from graphopt.core.pipeline import parse
from graphopt.errors import DataError, PipelineError
from graphopt.inputs import data

PASS = "prune-channels"


def _w(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed + sum(shape)).standard_normal(shape) * 0.3).astype(
        np.float32
    )


def _silenced(model: ir.Model, analysis: Analysis, kept: dict[int, np.ndarray]) -> ir.Model:
    """A copy of ``model`` with the removed channels' rows of every sink set to zero."""
    ref = pt.copy_model(model)
    by_name = {n.name: n for n in ref.graph}
    for sink in analysis.sinks:
        if not any(s in kept for s in sink.layout.spaces()):
            continue
        node = by_name[sink.node.name]
        w = node.inputs[1].const_value.numpy().copy()
        drop = np.ones(w.shape[sink.weight_axis], bool)
        drop[sink.layout.kept_indices(kept)] = False
        index = [slice(None)] * w.ndim
        index[sink.weight_axis] = drop
        w[tuple(index)] = 0
        node.inputs[1].const_value = ir.tensor(w, name=node.inputs[1].name)
    return ref


def _random_kept(analysis: Analysis, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    kept: dict[int, np.ndarray] = {}
    for group in analysis.groups():
        if analysis.group_unsafe(group):
            continue
        n, unit = analysis.spaces[group[0]].size, analysis.group_unit(group)
        heads = np.sort(rng.choice(n // unit, max(1, (2 * n // unit) // 3), replace=False))
        idx = (heads[:, None] * unit + np.arange(unit)[None, :]).ravel()
        for s in group:
            kept[s] = idx
    return kept


def assert_prune_exact(model: ir.Model, *, dims: dict[str, int] | None = None) -> dict:
    """Prune random kept sets in place; outputs equal the silenced original's."""
    analysis = analyze(model.graph, symbolic_shapes(model))
    kept = _random_kept(analysis)
    assert kept, "nothing prunable"
    reference = _silenced(model, analysis, kept)
    stats = apply(model.graph, analysis, kept)
    feeds = pt.random_feeds(reference, count=2, dims=dims or {"*": 2})
    pt.assert_same_outputs(reference, model, pt.Tolerance.reassociation(), feeds)
    import onnx

    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    return stats


# ----------------------------------------------------------------------- structures
def _chain(*, residual: bool = False, concat: bool = False, depthwise: bool = False) -> ir.Model:
    """Conv-BN-Relu-(depthwise)-Pad-Conv with optional residual Add or channel Concat."""
    c = 8
    nodes = [
        pt.node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        pt.node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"]),
        pt.node("Relu", ["bn"], ["r1"]),
    ]
    inits = [
        pt.init("w1", _w(c, 3, 3, 3)),
        pt.init("b1", _w(c)),
        pt.init("g", np.abs(_w(c)) + 0.5),
        pt.init("be", _w(c, seed=1)),
        pt.init("mu", _w(c, seed=2)),
        pt.init("var", np.abs(_w(c, seed=3)) + 0.5),
        pt.init("scale", _w(1, c, 1, 1, seed=4)),
        pt.init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
    ]
    last = "r1"
    if depthwise:
        nodes.append(pt.node("Conv", ["r1", "wd", "bd"], ["dw"], group=c, pads=[1, 1, 1, 1]))
        inits += [pt.init("wd", _w(c, 1, 3, 3, seed=5)), pt.init("bd", _w(c, seed=6))]
        last = "dw"
    nodes.append(pt.node("Mul", [last, "scale"], ["sc"]))
    nodes.append(pt.node("Pad", ["sc", "pads"], ["pd"]))
    nodes.append(pt.node("Conv", ["pd", "w2"], ["c2"]))
    inits.append(pt.init("w2", _w(c, c, 3, 3, seed=7)))
    last = "c2"
    if residual:
        nodes.append(pt.node("Add", ["c2", "r1"], ["res"]))
        last = "res"
    if concat:
        nodes.append(pt.node("Conv", ["x", "w3"], ["c3"], pads=[1, 1, 1, 1]))
        nodes.append(pt.node("Concat", [last, "c3"], ["cat"], axis=1))
        inits.append(pt.init("w3", _w(4, 3, 3, 3, seed=8)))
        last = "cat"
    cin = c + (4 if concat else 0)
    nodes += [
        pt.node("MaxPool", [last], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        pt.node("Conv", ["mp", "w4"], ["out"]),
    ]
    inits.append(pt.init("w4", _w(5, cin, 1, 1, seed=9)))
    return pt.make_model(nodes, [pt.vi("x", [2, 3, 6, 6])], [pt.vi("out", [2, 5, 3, 3])], inits)


def test_chain_groups_sinks_and_parameters() -> None:
    model = _chain()
    a = analyze(model.graph)
    groups = {tuple(a.spaces[s].producer.name for s in g): a.group_unsafe(g) for g in a.groups()}
    assert groups == {
        ("c1_node",): None,
        ("c2_node",): None,
        ("out_node",): "'out' is a graph output",
    }
    assert sorted(s.node.name for s in a.sinks) == ["c2_node", "out_node"]
    # BN's four parameters and the per-channel Mul constant are sliced with the first group
    assert sorted((sl.node.op_type, sl.index) for sl in a.slices) == [
        ("BatchNormalization", 1),
        ("BatchNormalization", 2),
        ("BatchNormalization", 3),
        ("BatchNormalization", 4),
        ("Mul", 1),
    ]


@pytest.mark.parametrize(
    "kind", ["chain", "residual", "concat", "depthwise", "residual+concat+depthwise"]
)
def test_rewrite_is_exact(kind: str) -> None:
    flags = {k: k in kind for k in ("residual", "concat", "depthwise")}
    model = _chain(**flags)
    stats = assert_prune_exact(model)
    assert stats["channels_removed"] > 0
    if flags["residual"]:
        a = analyze(pt.copy_model(_chain(**flags)).graph)
        tied = [g for g in a.groups() if len(g) > 1]
        assert [sorted(a.spaces[s].producer.name for s in g) for g in tied] == [
            ["c1_node", "c2_node"]
        ]
    if flags["depthwise"]:
        dw = next(n for n in model.graph if n.name == "dw_node")
        assert dw.attributes["group"].value == dw.inputs[1].const_value.shape[0] < 8


def _head(transposed: bool) -> ir.Model:
    """Conv -> (Transpose) -> Flatten/Reshape -> Gemm (CREPE's and the demo's heads)."""
    nodes = [pt.node("Conv", ["x", "w1", "b1"], ["c1"]), pt.node("Relu", ["c1"], ["r"])]
    if transposed:
        nodes += [
            pt.node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
            pt.node("Reshape", ["t", "shape"], ["f"]),
        ]
    else:
        nodes.append(pt.node("Flatten", ["r"], ["f"], axis=1))
    nodes.append(pt.node("Gemm", ["f", "wg", "bg"], ["y"], transB=1))
    return pt.make_model(
        nodes,
        [pt.vi("x", [2, 2, 4, 3])],
        [pt.vi("y", [2, 7])],
        [
            pt.init("w1", _w(6, 2, 1, 1)),
            pt.init("b1", _w(6)),
            pt.init("shape", np.array([-1, 72], np.int64)),
            pt.init("wg", _w(7, 72)),
            pt.init("bg", _w(7)),
        ],
    )


@pytest.mark.parametrize("transposed", [False, True], ids=["flatten", "transpose-reshape"])
def test_flattened_channels_into_gemm(transposed: bool) -> None:
    model = _head(transposed)
    a = analyze(model.graph)
    (sink,) = [s for s in a.sinks if s.node.op_type == "Gemm"]
    # [2, 6, 4, 3]: Flatten gives 12 values per channel; Transpose(0,2,1,3) + Reshape gives
    # 4 repeats of (6 channels x 3 values)
    assert (sink.layout.outer, sink.layout.inner) == ((4, 3) if transposed else (1, 12))
    stats = assert_prune_exact(model)
    if transposed:
        assert stats["reshapes_fixed"] == 1


def _mlp(hidden_out: bool = False) -> ir.Model:
    """MatMul + bias -> erf GELU -> MatMul + bias, on [batch, seq, 8]."""
    nodes = [
        pt.node("MatMul", ["x", "w1"], ["m1"]),
        pt.node("Add", ["m1", "b1"], ["h"]),
        pt.node("Div", ["h", "sqrt2"], ["hd"]),
        pt.node("Erf", ["hd"], ["e"]),
        pt.node("Add", ["e", "one"], ["e1"]),
        pt.node("Mul", ["h", "e1"], ["g"]),
        pt.node("Mul", ["g", "half"], ["gelu"]),
        pt.node("MatMul", ["gelu", "w2"], ["m2"]),
        pt.node("Add", ["m2", "b2"], ["y"]),
    ]
    outputs = [pt.vi("y", ["batch", 5, 8])]
    if hidden_out:
        outputs.append(pt.vi("gelu", ["batch", 5, 16]))
    return pt.make_model(
        nodes,
        [pt.vi("x", ["batch", 5, 8])],
        outputs,
        [
            pt.init("w1", _w(8, 16)),
            pt.init("b1", _w(16)),
            pt.init("sqrt2", np.array(1.4142135, np.float32)),
            pt.init("one", np.array(1.0, np.float32)),
            pt.init("half", np.array(0.5, np.float32)),
            pt.init("w2", _w(16, 8)),
            pt.init("b2", _w(8)),
        ],
    )


def test_mlp_neurons_through_gelu() -> None:
    model = _mlp()
    a = analyze(model.graph)
    safe = [g for g in a.groups() if a.group_unsafe(g) is None]
    assert [a.spaces[g[0]].producer.name for g in safe] == ["m1_node"]
    assert_prune_exact(model, dims={"batch": 3})


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("output", "graph output"),
        ("layernorm", "normalizes over the channel axis"),
        ("softmax", "normalizes over the channel axis"),
        ("split-reshape", "splits the channel axis"),
        ("shape", "op not understood"),
        ("add-input", "is not a per-channel constant"),
        ("grouped", "grouped convolution"),
    ],
)
def test_unsafe_structures_are_left_alone(case: str, reason: str) -> None:
    inits = [pt.init("w1", _w(4, 8)), pt.init("w2", _w(8, 3))]
    nodes = [pt.node("MatMul", ["x", "w1"], ["h"])]
    outputs = [pt.vi("y", [2, 3])]
    x_shape = [2, 4]
    if case == "output":
        nodes.append(pt.node("MatMul", ["h", "w2"], ["y"]))
        outputs.append(pt.vi("h", [2, 8]))
    elif case == "layernorm":
        nodes += [
            pt.node("LayerNormalization", ["h", "g"], ["n"], axis=-1),
            pt.node("MatMul", ["n", "w2"], ["y"]),
        ]
        inits.append(pt.init("g", np.ones(8, np.float32)))
    elif case == "softmax":
        nodes += [pt.node("Softmax", ["h"], ["n"], axis=1), pt.node("MatMul", ["n", "w2"], ["y"])]
    elif case == "split-reshape":
        nodes += [
            pt.node("Reshape", ["h", "s"], ["n"]),
            pt.node("ReduceSum", ["n", "ax"], ["r"], keepdims=0),
            pt.node("MatMul", ["r", "w3"], ["y"]),
        ]
        inits += [  # 8 channels into three axes: not a [heads, head_dim] split
            pt.init("s", np.array([2, 2, 2, 2], np.int64)),
            pt.init("ax", np.array([2, 3], np.int64)),
            pt.init("w3", _w(2, 3)),
        ]
    elif case == "shape":
        nodes += [
            pt.node("Shape", ["h"], ["sh"]),
            pt.node("Cast", ["sh"], ["shf"], to=1),
            pt.node("ReduceSum", ["shf"], ["tot"], keepdims=1),
            pt.node("MatMul", ["h", "w2"], ["m"]),
            pt.node("Add", ["m", "tot"], ["y"]),
        ]
    elif case == "add-input":
        nodes += [pt.node("Add", ["h", "z"], ["n"]), pt.node("MatMul", ["n", "w2"], ["y"])]
    elif case == "grouped":
        x_shape = [2, 4, 5]
        inits = [pt.init("w1", _w(8, 4, 1)), pt.init("wg", _w(8, 4, 1)), pt.init("w2", _w(3, 8, 5))]
        nodes = [
            pt.node("Conv", ["x", "w1"], ["h"]),
            pt.node("Conv", ["h", "wg"], ["g"], group=2),
            pt.node("Conv", ["g", "w2"], ["y3"]),
            pt.node("Flatten", ["y3"], ["y"]),
        ]
    inputs = [pt.vi("x", x_shape)]
    if case == "add-input":
        inputs.append(pt.vi("z", [2, 8]))
    model = pt.make_model(nodes, inputs, outputs, inits)
    before = pt.to_bytes(model)
    a = analyze(model.graph)
    first = next(g for g in a.groups() if a.spaces[g[0]].producer.name == "h_node")
    assert reason in (a.group_unsafe(first) or "")
    result, p = pt.run_pass(model, PASS, ratio=0.5, round_to=1, min_channels=1)
    groups = {tuple(e["producers"]): e for e in p.details["groups"]}
    assert reason in groups[("h_node",)]["left_alone"]
    if case not in ("grouped",):  # the other producers there have nothing to prune safely
        assert not result.modified and pt.to_bytes(model) == before


def test_concat_with_a_graph_input_keeps_that_segment() -> None:
    model = pt.make_model(
        [
            pt.node("Conv", ["x", "w1"], ["a"]),
            pt.node("Concat", ["a", "x"], ["cat"], axis=1),
            pt.node("Conv", ["cat", "w2"], ["y"]),
        ],
        [pt.vi("x", [1, 3, 4, 4])],
        [pt.vi("y", [1, 2, 4, 4])],
        [pt.init("w1", _w(6, 3, 1, 1)), pt.init("w2", _w(2, 9, 1, 1))],
    )
    a = analyze(model.graph)
    sink = next(s for s in a.sinks if s.node.name == "y_node")
    assert [n for _, n in sink.layout.segments] == [6, 3]
    producers = [g for g in a.groups() if a.spaces[g[0]].producer.name == "a_node"]
    assert a.group_unsafe(producers[0]) is None  # the Conv's own channels still go
    assert_prune_exact(model)


def test_demo_model_rewrite_is_exact() -> None:
    model = gir.load_model(demo.demo_files()[0])
    run_pipeline(model, "cleanup", verify_each=False)
    stats = assert_prune_exact(model, dims={"batch": 3})
    assert stats["layers_pruned"] == 4 and stats["sinks_resized"] == 4


# ----------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    ("original", "ratio", "round_to", "want"),
    [(64, 0.3, 8, 48), (64, 0.3, 1, 45), (16, 0.3, 8, 8), (12, 0.5, 8, 8), (7, 0.9, 8, 7),
     (2048, 0.3, 8, 1432), (10, 0.95, 1, 8)],
)  # fmt: skip
def test_keep_count(original: int, ratio: float, round_to: int, want: int) -> None:
    assert keep_count(original, ratio, round_to, min_channels=8) == want


def test_global_counts_follow_scores_with_caps() -> None:
    low = np.linspace(0.1, 0.5, 32)  # a group that matters little
    high = np.linspace(1.5, 2.5, 32)
    counts = global_counts([low, high], [32, 32], 0.4, max_ratio=0.75, round_to=1, min_channels=4)
    assert counts == [8, 30]  # 24 (the cap) from the weak group, the other 2 from the strong
    assert sum(32 - c for c in counts) == round(0.4 * 64)


# ----------------------------------------------------------------------- the pass
def _demo_samples(model: ir.Model, n: int = 200) -> tuple[data.Samples, data.Samples, np.ndarray]:
    with np.load(demo.demo_files()[1]) as npz:
        x, y = npz["input"], npz["label"]
    calib = data.from_arrays(model, {"input": x[:n]}, source="calib", batch=50)
    test = data.from_arrays(model, {"input": x[n:]}, source="test", batch=50)
    return calib, test, y[n:]


def test_pass_on_demo_counts_macs_and_records_kept_channels() -> None:
    model = gir.load_model(demo.demo_files()[0])
    run_pipeline(model, "cleanup", verify_each=False)
    macs = layer_macs(model)
    original = pt.copy_model(model)
    _, p = pt.apply_and_check(model, PASS, feeds=pt.random_feeds(model, dims={"batch": 4}))
    assert p.details["macs"] == {"before": macs, "after": layer_macs(model)}
    assert p.details["macs"]["after"] < 0.6 * macs
    convs = {n.name: n for n in model.graph if n.op_type == "Conv"}
    rec = json.loads(convs["/3/Conv"].metadata_props[CHANNELS_KEY])
    assert rec["original"] == 32 and len(rec["kept"]) == 24  # 32 * 0.7 rounded to 8s
    # the kept filters are the original ones, restricted to the kept input channels
    kept0 = json.loads(convs["/0/Conv"].metadata_props[CHANNELS_KEY])["kept"]
    w0 = next(n for n in original.graph if n.name == "/3/Conv").inputs[1].const_value.numpy()
    w = convs["/3/Conv"].inputs[1].const_value.numpy()
    np.testing.assert_array_equal(w, w0[rec["kept"]][:, kept0])
    entry = next(e for e in p.details["groups"] if e["producers"] == ["/15/Gemm"])
    assert "graph output" in entry["left_alone"]


def test_second_order_drops_a_duplicated_channel_magnitude_keeps() -> None:
    """Channels 0 and 1 compute the same map: removing one costs nothing once the sink
    compensates, and second-order sees it; magnitude ranks both as the strongest."""
    w1 = _w(6, 8, 1, 1)  # 8 inputs: apart from the duplicate, the channels are independent
    w1[0] *= 4
    w1[1] = w1[0]
    model = pt.make_model(
        [pt.node("Conv", ["x", "w1"], ["h"]), pt.node("Conv", ["h", "w2"], ["y"])],
        [pt.vi("x", [4, 8, 5, 5])],
        [pt.vi("y", [4, 2, 5, 5])],
        [pt.init("w1", w1), pt.init("w2", _w(2, 6, 1, 1))],
    )
    feeds = pt.random_feeds(model, count=3)
    samples = data.Samples(feeds, "random")

    def kept_after(criterion: str) -> list[int]:
        m = pt.copy_model(model)
        cls = PruneChannelsPass
        p = cls(cls.Options(ratio=0.2, round_to=1, min_channels=1, criterion=criterion),
                PassContext(data=samples))  # fmt: skip
        p(m)
        h = next(n for n in m.graph if n.name == "h_node")
        return json.loads(h.metadata_props[CHANNELS_KEY])["kept"]

    assert {0, 1} <= set(kept_after("magnitude"))
    assert not {0, 1} <= set(kept_after("second-order"))


@pytest.mark.parametrize("criterion", ["activation", "second-order", "entropy"])
def test_data_criteria(criterion: str) -> None:
    model = gir.load_model(demo.demo_files()[0])
    run_pipeline(model, "cleanup", verify_each=False)
    calib, _, _ = _demo_samples(model)
    cls = PruneChannelsPass
    with pytest.raises(DataError, match="needs calibration data"):
        cls(cls.Options(criterion=criterion))(pt.copy_model(model))
    p = cls(cls.Options(criterion=criterion), PassContext(data=calib))
    assert p(model).modified and p.stats["groups_pruned"] == 4
    again = cls(cls.Options(criterion=criterion), PassContext(data=calib))
    assert not again(model).modified and not again.stats


def test_global_scope_is_idempotent_and_removes_the_ratio() -> None:
    model = gir.load_model(demo.demo_files()[0])
    run_pipeline(model, "cleanup", verify_each=False)
    total = sum(
        analyze(model.graph).spaces[g[0]].size
        for g in analyze(model.graph).groups()
        if analyze(model.graph).group_unsafe(g) is None
    )
    _, p = pt.run_pass(model, PASS, scope="global", ratio=0.4, round_to=1)
    removed = p.stats["channels_removed"]
    assert removed == round(0.4 * total)
    pt.assert_idempotent(model, PASS, scope="global", ratio=0.4, round_to=1)


def test_exclude_and_options() -> None:
    model = gir.load_model(demo.demo_files()[0])
    run_pipeline(model, "cleanup", verify_each=False)
    _, p = pt.run_pass(model, PASS, exclude=["/0/Conv", "/3/Conv", "/7/Conv", "/12/Gemm"])
    assert not p.stats
    assert sum(e.get("left_alone") == "excluded" for e in p.details["groups"]) == 4
    for bad, msg in [
        ("ratio=1.5", "ratio must be in"),
        ("criterion=gradient", "expected one of"),
        ("scope=global,ratio=0.95", "above max_ratio"),
        ("round_to=0", "round_to must be"),
    ]:
        with pytest.raises(PipelineError, match=msg):
            parse(f"prune-channels{{{bad}}}")


# ----------------------------------------------------------------------- attention heads
def _bert(layers: int = 2) -> ir.Model:
    """A BERT-style encoder (hidden 64, 4 heads of 16, FFN 128, sequence 16)."""
    return pt.tiny_bert(layers)


def test_attention_heads_are_one_group_that_goes_in_whole_heads() -> None:
    model = _bert()
    a = analyze(model.graph)
    groups = {tuple(a.spaces[s].producer.name for s in g): g for g in a.groups()}
    qkv = groups[("l0.q.matmul", "l0.k.matmul", "l0.v.matmul")]
    assert a.group_unsafe(qkv) is None and a.group_unit(qkv) == 16
    assert a.group_unit(groups[("l0.ffn1.matmul",)]) == 1
    assert a.group_unsafe(groups[("l0.attn_out.matmul",)])  # the residual stream
    assert_prune_exact(model, dims={"batch": 2})  # random whole heads; QK^T and PV tie them


def test_head_pruning_rewrites_the_reshapes() -> None:
    model = _bert()
    original = pt.copy_model(model)
    _, p = pt.run_pass(model, PASS, ratio=0.5)
    split = [
        n for n in model.graph if n.op_type == "Reshape" and n.outputs[0].name.endswith("q.heads")
    ]
    assert [list(n.inputs[1].const_value.numpy()) for n in split] == [[0, -1, 2, 16]] * 2
    merged = [n for n in model.graph if n.name.endswith("context.merged")]
    assert [list(n.inputs[1].const_value.numpy()) for n in merged] == [[0, -1, 32]] * 2
    for name in ("l0.q.matmul", "l1.v.matmul"):
        node = next(n for n in model.graph if n.name == name)
        kept = json.loads(node.metadata_props[CHANNELS_KEY])["kept"]
        heads = np.asarray(kept).reshape(2, 16)  # two whole heads of 16 channels
        np.testing.assert_array_equal(heads, heads[:, :1] + np.arange(16))
        assert set(heads[:, 0] % 16) == {0}
    entry = next(e for e in p.details["groups"] if e["producers"][0] == "l0.q.matmul")
    assert entry["kept"] == 32
    feeds = [{"input_ids": np.arange(32, dtype=np.int64).reshape(2, 16) + 1000,
              "attention_mask": np.ones((2, 16), np.int64)}]  # fmt: skip
    _, want = pt.run_model(original, feeds)
    _, got = pt.run_model(model, feeds)
    assert got[0][0].shape == want[0][0].shape
    pt.assert_idempotent(model, PASS, ratio=0.5)


def test_shared_computed_head_shapes_get_a_concat_each() -> None:
    """Two branches split into heads by one Concat-built [B, S, 4, 16] (as CSE leaves
    PyTorch exports); one keeps 3 heads, the other 1: each gets its own target."""
    nodes = [
        pt.node("Shape", ["x"], ["shape"]),
        pt.node("Slice", ["shape", "zero", "two"], ["bs"]),
        pt.node("Concat", ["bs", "heads", "dim"], ["split"], axis=0),
        pt.node("Concat", ["bs", "width"], ["merge"], axis=0),
    ]
    inits = [
        pt.init("zero", np.array([0], np.int64)),
        pt.init("two", np.array([2], np.int64)),
        pt.init("heads", np.array([4], np.int64)),
        pt.init("dim", np.array([16], np.int64)),
        pt.init("width", np.array([64], np.int64)),
    ]
    for b in ("a", "b"):
        nodes += [
            pt.node("MatMul", ["x", f"w{b}"], [f"h{b}"]),
            pt.node("Reshape", [f"h{b}", "split"], [f"s{b}"]),
            pt.node("Relu", [f"s{b}"], [f"r{b}"]),
            pt.node("Reshape", [f"r{b}", "merge"], [f"m{b}"]),
            pt.node("MatMul", [f"m{b}", f"v{b}"], [f"o{b}"]),
        ]
        inits += [pt.init(f"w{b}", _w(8, 64, seed=ord(b))), pt.init(f"v{b}", _w(64, 8, seed=3))]
    nodes.append(pt.node("Add", ["oa", "ob"], ["y"]))
    model = pt.make_model(nodes, [pt.vi("x", ["B", "S", 8])], [pt.vi("y", ["B", "S", 8])], inits)
    a = analyze(model.graph, symbolic_shapes(model))
    group = {a.spaces[g[0]].producer.name: g for g in a.groups()}
    assert a.group_unit(group["ha_node"]) == a.group_unit(group["hb_node"]) == 16
    heads = {"ha_node": [0, 1, 3], "hb_node": [2]}
    kept = {
        s: (np.asarray(heads[name])[:, None] * 16 + np.arange(16)).ravel()
        for name, g in group.items()
        if name in heads
        for s in g
    }
    reference = _silenced(model, a, kept)
    stats = apply(model.graph, a, kept)
    assert stats["reshapes_fixed"] == 4
    feeds = pt.random_feeds(reference, count=2, dims={"B": 2, "S": 3})
    pt.assert_same_outputs(reference, model, pt.Tolerance.reassociation(), feeds)
    targets = {n.name: n.inputs[1].producer().inputs for n in model.graph if n.op_type == "Reshape"}
    assert targets["sa_node"][1].const_value.numpy().tolist() == [3]
    assert targets["sb_node"][1].const_value.numpy().tolist() == [1]
    assert targets["ma_node"][1].const_value.numpy().tolist() == [48]
    assert targets["mb_node"][1].const_value.numpy().tolist() == [16]


def test_heads_can_be_left_alone() -> None:
    model = _bert(layers=1)
    _, p = pt.run_pass(model, PASS, ratio=0.5, heads=False)
    by_first = {e["producers"][0]: e for e in p.details["groups"]}
    assert by_first["l0.q.matmul"]["left_alone"] == "attention heads (heads=false)"
    assert by_first["l0.ffn1.matmul"]["kept"] == 64
    split = next(n for n in model.graph if n.outputs[0].name == "l0.q.heads")
    assert split.inputs[1].const_value.numpy().tolist() == [0, -1, 4, 16]


def test_the_pass_proves_its_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    """An analysis that wrongly lets channels through a Softmax over them is caught: the
    pruned model no longer equals the original with the removed channels silenced."""
    model = pt.make_model(
        [
            pt.node("MatMul", ["x", "w1"], ["h"]),
            pt.node("Softmax", ["h"], ["s"], axis=-1),
            pt.node("MatMul", ["s", "w2"], ["y"]),
        ],
        [pt.vi("x", [2, 4])],
        [pt.vi("y", [2, 3])],
        [pt.init("w1", _w(4, 16)), pt.init("w2", _w(16, 3))],
    )
    _, p = pt.run_pass(pt.copy_model(model), PASS, ratio=0.5, round_to=1, min_channels=1)
    assert not p.stats  # left alone: the Softmax normalizes over the channels

    def wrong(self, node, ins) -> None:  # type: ignore[no-untyped-def]
        self.set(node.outputs[0], ins[0][2])

    monkeypatch.setattr(_Analyzer, "op_Softmax", wrong)
    unproven = pt.copy_model(model)
    result, p = pt.run_pass(unproven, PASS, ratio=0.5, round_to=1, min_channels=1)
    assert not result.modified and "could be proven exact" in p.declined
    why = p.details["groups"][0]["left_alone"]
    assert "does not compute what the original computes" in why
    assert pt.to_bytes(unproven) == pt.to_bytes(model)  # given back as it was
    _, p = pt.run_pass(model, PASS, ratio=0.5, round_to=1, min_channels=1, check=False)
    assert p.stats["channels_removed"] == 8 and "check" not in p.details


# ----------------------------------------------------------------------- Split
def _c2f() -> ir.Model:
    """A YOLOv8-style block: Conv -> Split in halves -> one half through a Conv -> Concat of
    both halves and that Conv -> Conv."""
    return pt.make_model(
        [
            pt.node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            pt.node("Relu", ["c1"], ["r1"]),
            pt.node("Split", ["r1", "halves"], ["a", "b"], axis=1),
            pt.node("Conv", ["b", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            pt.node("Relu", ["c2"], ["r2"]),
            pt.node("Concat", ["a", "b", "r2"], ["cat"], axis=1),
            pt.node("Conv", ["cat", "w3"], ["y"]),
        ],
        [pt.vi("x", [2, 3, 6, 6])],
        [pt.vi("y", [2, 5, 6, 6])],
        [
            pt.init("w1", _w(16, 3, 3, 3)),
            pt.init("b1", _w(16)),
            pt.init("halves", np.array([8, 8], np.int64)),
            pt.init("w2", _w(8, 8, 3, 3, seed=1)),
            pt.init("w3", _w(5, 24, 1, 1, seed=2)),
        ],
    )


def test_split_parts_are_pruned_on_their_own() -> None:
    model = _c2f()
    a = analyze(model.graph)
    labels = {a.spaces[g[0]].label: a.group_unsafe(g) for g in a.groups()}
    assert labels == {
        "c1_node[0:8]": None,
        "c1_node[8:16]": None,
        "c2_node": None,
        "y_node": "'y' is a graph output",
    }
    stats = assert_prune_exact(model)
    assert stats["splits_resized"] == 1 and stats["layers_pruned"] == 2  # c1 (both parts), c2
    split = next(n for n in model.graph if n.op_type == "Split")
    assert split.inputs[1].const_value.numpy().tolist() == [5, 5]


def test_split_pass_is_idempotent_and_refuses_tied_channels() -> None:
    model = _c2f()
    _, p = pt.run_pass(model, PASS, ratio=0.5, round_to=1, min_channels=1)
    assert p.stats["splits_resized"] == 1
    split = next(n for n in model.graph if n.op_type == "Split")
    assert split.inputs[1].const_value.numpy().tolist() == [4, 4]
    pt.assert_idempotent(model, PASS, ratio=0.5, round_to=1, min_channels=1)
    # a split of channels tied to another producer (residual Add) is left alone
    model = pt.make_model(
        [
            pt.node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            pt.node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
            pt.node("Add", ["c1", "c0"], ["s"]),
            pt.node("Split", ["s", "halves"], ["a", "b"], axis=1),
            pt.node("Concat", ["b", "a"], ["cat"], axis=1),
            pt.node("Conv", ["cat", "w3"], ["y"]),
        ],
        [pt.vi("x", [2, 3, 6, 6])],
        [pt.vi("y", [2, 5, 6, 6])],
        [
            pt.init("w1", _w(16, 3, 3, 3)),
            pt.init("w0", _w(16, 3, 3, 3, seed=4)),
            pt.init("halves", np.array([8, 8], np.int64)),
            pt.init("w3", _w(5, 16, 1, 1, seed=2)),
        ],
    )
    a = analyze(model.graph)
    tied_group = next(g for g in a.groups() if a.spaces[g[0]].producer.name == "c1_node")
    assert "tied" in (a.group_unsafe(tied_group) or "")


# ----------------------------------------------------------------------- PP-OCR's DB detector
def _db_head(logit_bias: float = 0.0) -> ir.Model:
    """A PP-OCR DB detector in small: a stride-2 Conv with Paddle's HardSwish (Clip, Div,
    Mul), an SE block (GlobalAveragePool, Conv, Relu, Conv, HardSigmoid, Mul), a 1/2-scale
    branch upsampled by Resize (constant scales), Concat with the full-scale branch, Conv,
    BatchNormalization, Relu, a ConvTranspose head and a Sigmoid map. ``logit_bias`` far
    below zero saturates the map on every input (as the pruned detector does on a page)."""
    nodes = [
        pt.node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        pt.node("Add", ["c1", "three"], ["hs_a"]),
        pt.node("Clip", ["hs_a", "zero", "six"], ["hs_c"]),
        pt.node("Div", ["hs_c", "six"], ["hs_d"]),
        pt.node("Mul", ["c1", "hs_d"], ["hs"]),
        pt.node("GlobalAveragePool", ["hs"], ["se_p"]),
        pt.node("Conv", ["se_p", "wse1", "bse1"], ["se_1"]),
        pt.node("Relu", ["se_1"], ["se_r"]),
        pt.node("Conv", ["se_r", "wse2", "bse2"], ["se_2"]),
        pt.node("HardSigmoid", ["se_2"], ["se_g"], alpha=0.2, beta=0.5),
        pt.node("Mul", ["hs", "se_g"], ["se"]),
        pt.node("Conv", ["se", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        pt.node("Relu", ["c2"], ["r2"]),
        pt.node("Resize", ["r2", "", "up"], ["u2"], mode="nearest"),
        pt.node("Conv", ["se", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        pt.node("Concat", ["u2", "c3"], ["cat"], axis=1),
        pt.node("Conv", ["cat", "w4"], ["c4"], pads=[1, 1, 1, 1]),
        pt.node("BatchNormalization", ["c4", "g", "be", "mu", "var"], ["bn"]),
        pt.node("Relu", ["bn"], ["r4"]),
        pt.node("ConvTranspose", ["r4", "wt", "bt"], ["ct"], strides=[2, 2]),
        pt.node("Add", ["ct", "bias"], ["logits"]),
        pt.node("Sigmoid", ["logits"], ["y"]),
    ]
    inits = [
        pt.init("w1", _w(16, 3, 3, 3)),
        pt.init("b1", _w(16)),
        pt.init("three", np.array(3.0, np.float32)),
        pt.init("zero", np.array(0.0, np.float32)),
        pt.init("six", np.array(6.0, np.float32)),
        pt.init("wse1", _w(4, 16, 1, 1, seed=1)),
        pt.init("bse1", _w(4, seed=1)),
        pt.init("wse2", _w(16, 4, 1, 1, seed=2)),
        pt.init("bse2", _w(16, seed=2)),
        pt.init("w2", _w(16, 16, 3, 3, seed=3)),
        pt.init("up", np.array([1, 1, 2, 2], np.float32)),
        pt.init("w3", _w(8, 16, 3, 3, seed=4)),
        pt.init("w4", _w(16, 24, 3, 3, seed=5)),
        pt.init("g", np.abs(_w(16, seed=6)) + 0.5),
        pt.init("be", _w(16, seed=7)),
        pt.init("mu", _w(16, seed=8)),
        pt.init("var", np.abs(_w(16, seed=9)) + 0.5),
        pt.init("wt", _w(16, 1, 2, 2, seed=10)),
        pt.init("bt", _w(1, seed=10)),
        pt.init("bias", np.array(logit_bias, np.float32)),
    ]
    return pt.make_model(nodes, [pt.vi("x", [1, 3, 8, 8])], [pt.vi("y", [1, 1, 16, 16])], inits)


def test_db_detector_structures_are_pruned_exactly() -> None:
    model = _db_head()
    a = analyze(model.graph)
    groups = {tuple(a.spaces[s].label for s in g): a.group_unsafe(g) for g in a.groups()}
    assert groups == {  # the SE gate ties its expanding Conv to the gated one
        ("c1_node", "se_2_node"): None,
        ("se_1_node",): None,
        ("c2_node",): None,
        ("c3_node",): None,
        ("c4_node",): None,
    }
    assert [s.node.op_type for s in a.sinks if s.node.name == "ct_node"] == ["ConvTranspose"]
    stats = assert_prune_exact(model)
    assert stats["layers_pruned"] == 6 and stats["sinks_resized"] == 6


def _wrong_softmax(self, node, ins) -> None:  # type: ignore[no-untyped-def]
    """An analysis with a hole: a Softmax over the channels passed as if channel-wise."""
    self.set(node.outputs[0], ins[0][2])


def test_a_saturated_output_does_not_hide_a_wrong_rewrite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proof compares the layers that read the removed channels, not only the outputs:
    a sigmoid map saturated on every input (the PP-OCR detector's after pruning) is the
    same whatever the layers before it compute. The proof used to compare the outputs only,
    so on this model it passed a wrong rewrite; a right one passes, with the layers it
    compared in the report."""

    def softmax_head(logit_bias: float) -> ir.Model:
        model = _db_head(logit_bias)
        se = next(n for n in model.graph if n.outputs[0].name == "se")
        soft = ir.node("Softmax", [se.outputs[0]], attributes={"axis": 1}, name="soft_node")
        soft.outputs[0].name, soft.outputs[0].shape = "soft", se.outputs[0].shape
        soft.outputs[0].dtype = se.outputs[0].dtype
        model.graph.insert_after(se, soft)
        c2 = next(n for n in model.graph if n.name == "c2_node")
        c2.replace_input_with(0, soft.outputs[0])
        return model

    options = {"ratio": 0.5, "round_to": 1, "min_channels": 1}
    result, p = pt.run_pass(softmax_head(-60.0), PASS, **options)
    assert result.modified and p.details["check"]["layers_compared"] == 3
    assert p.details["check"]["layers_max_rel"] < 1e-5
    monkeypatch.setattr(_Analyzer, "op_Softmax", _wrong_softmax)
    model = softmax_head(-60.0)
    feeds = pt.random_feeds(model, count=2)
    assert np.abs(pt.run_model(model, feeds)[1][0][0]).max() < 1e-12  # saturated
    result, p = pt.run_pass(model, PASS, **options)  # the wrong group stays whole
    whys = [e["left_alone"] for e in p.details["groups"] if "left_alone" in e]
    assert any("could not be proven exact" in w and "output of Conv 'c2_node'" in w for w in whys)


@pytest.mark.parametrize(
    ("roi", "reason"),
    [([0, 0, 0, 0, 1, 1, 1, 1], None), ([0, 0.25, 0, 0, 1, 0.75, 1, 1], "crops the channel")],
)
def test_resize_crop_keeps_channels_only_with_the_whole_channel_roi(
    roi: list[float], reason: str | None
) -> None:
    """tf_crop_and_resize crops (and interpolates) every axis its roi covers, the channel
    axis too, by the ONNX spec (ONNX Runtime ignores the roi where the scale is 1)."""
    model = pt.make_model(
        [
            pt.node("Conv", ["x", "w1"], ["c1"]),
            pt.node(
                "Resize",
                ["c1", "roi", "sc"],
                ["r"],
                mode="linear",
                coordinate_transformation_mode="tf_crop_and_resize",
            ),
            pt.node("Conv", ["r", "w2"], ["y"]),
        ],
        [pt.vi("x", [1, 3, 4, 4])],
        [pt.vi("y", [1, 2, 8, 8])],
        [
            pt.init("w1", _w(8, 3, 1, 1)),
            pt.init("w2", _w(2, 8, 1, 1)),
            pt.init("roi", np.array(roi, np.float32)),
            pt.init("sc", np.array([1, 1, 2, 2], np.float32)),
        ],
    )
    a = analyze(model.graph)
    first = next(g for g in a.groups() if a.spaces[g[0]].producer.name == "c1_node")
    if reason is None:
        assert a.group_unsafe(first) is None
        assert_prune_exact(model)
    else:
        assert reason in (a.group_unsafe(first) or "")


def test_resize_with_axes_reads_the_channel_scale_by_axis() -> None:
    """Opset 18's ``axes``: scales [2, 2] over the spatial axes leave the channels alone;
    scales given for axes (1, 2) resize the channel axis."""
    from onnx import helper

    def model_with(axes: list[int]) -> ir.Model:
        proto = pt.make_proto(
            [
                pt.node("Conv", ["x", "w1"], ["c1"]),
                pt.node("Resize", ["c1", "", "sc"], ["r"], axes=axes),
                pt.node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0),
            ],
            [pt.vi("x", [1, 3, 4, 4])],
            [pt.vi("y", [1, None])],
            [pt.init("w1", _w(8, 3, 1, 1)), pt.init("sc", np.array([2, 2], np.float32))],
            infer_shapes=False,
        )
        proto.opset_import[0].CopyFrom(helper.make_opsetid("", 18))
        return ir.serde.deserialize_model(proto)

    a = analyze(model_with([2, 3]).graph)
    (c1,) = [g for g in a.groups() if a.spaces[g[0]].producer.name == "c1_node"]
    assert "graph output" in (a.group_unsafe(c1) or "")  # followed to the output
    a = analyze(model_with([1, 2]).graph)
    (c1,) = [g for g in a.groups() if a.spaces[g[0]].producer.name == "c1_node"]
    assert "resizes the channel axis" in (a.group_unsafe(c1) or "")


@pytest.mark.parametrize("length", [None, 1], ids=["batch-and-length", "batch-only"])
def test_paddle_minus_one_dims_are_unknowns(length: int | None) -> None:
    """Paddle exports write unknown dims as -1. ``[-1, 8, 1] -> [-1, 8]`` keeps the channels
    (the other dims multiply to 8 on both sides, so the two -1s are equal); in
    ``[-1, 8, -1] -> [-1, 8]`` the output's -1 is batch times length and the channels no
    longer sit on axis 1: two -1s are not one number."""
    conv_out = [-1, 8, -1 if length is None else length]
    model = pt.make_model(
        [
            pt.node("Conv", ["x", "w1"], ["c"]),
            pt.node("Concat", ["minus_one", "eight"], ["target"], axis=0),
            pt.node("Reshape", ["c", "target"], ["r"]),
            pt.node("MatMul", ["r", "w2"], ["y"]),
        ],
        [pt.vi("x", [*conv_out[:1], 3, *conv_out[2:]])],
        [pt.vi("y", [-1, 3])],
        [
            pt.init("w1", _w(8, 3, 1)),
            pt.init("minus_one", np.array([-1], np.int64)),
            pt.init("eight", np.array([8], np.int64)),
            pt.init("w2", _w(8, 3)),
        ],
        [pt.vi("c", conv_out), pt.vi("r", [-1, 8])],
        infer_shapes=False,
    )
    a = analyze(model.graph)
    (c,) = [g for g in a.groups() if a.spaces[g[0]].producer.name == "c_node"]
    if length is None:
        assert "cannot follow the channel axis" in (a.group_unsafe(c) or "")
    else:
        assert a.group_unsafe(c) is None
        assert_prune_exact(model, dims={"*": 3})


def test_symbolic_shape_inference_leaves_nothing_in_the_current_folder(
    tmp_path, monkeypatch
) -> None:
    """ORT's infer_shapes saves sym_shape_infer_temp.onnx into the current folder when its
    inference is incomplete; that must not land in the user's folder."""
    from onnxruntime.tools import symbolic_shape_infer

    def incomplete(proto, **kwargs):
        open("sym_shape_infer_temp.onnx", "wb").close()  # what ORT does, then raises
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", incomplete)
    monkeypatch.chdir(tmp_path)
    model = pt.make_model(
        [pt.node("Relu", ["x"], ["y"])], [pt.vi("x", [1, 4])], [pt.vi("y", [1, 4])]
    )
    assert symbolic_shapes(model) is None
    assert list(tmp_path.iterdir()) == []


def test_a_group_whose_rewrite_cannot_be_proven_stays_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel tie the analysis misses (an end-to-end detector head once did) makes the
    proof fail: that was "this is a graphopt bug", exit 70. Now the groups whose rewrite cannot
    be proven are found on copies, left alone with the reason, and the rest is pruned."""
    import graphopt.passes.sparsify.prune_channels as pc

    real = pc.check_rewrite

    def misses_a_tie(model: ir.Model, *args: object, **kwargs: object) -> dict:
        conv = next(n for n in model.graph if n.name == "/3/Conv")
        if conv.inputs[1].const_value.shape[0] < 32:
            raise RuntimeError("the pruned model does not compute what the original computes")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(pc, "check_rewrite", misses_a_tie)
    model = gir.load_model(demo.demo_files()[0])
    run_pipeline(model, "cleanup", verify_each=False)
    _, p = pt.apply_and_check(model, PASS, feeds=pt.random_feeds(model, dims={"batch": 4}))
    convs = {n.name: n for n in model.graph if n.op_type == "Conv"}
    assert convs["/3/Conv"].inputs[1].const_value.shape[0] == 32  # left whole
    assert convs["/0/Conv"].inputs[1].const_value.shape[0] < 32  # the rest is pruned
    entry = next(e for e in p.details["groups"] if "/3/Conv" in e["producers"])
    assert entry["left_alone"].startswith("its rewrite could not be proven exact")
    assert p.stats["groups_unproven"] == 1 and p.stats["groups_pruned"] >= 1
    assert p.details["check"]["max_abs"] <= 1e-4  # what was pruned is proven
    assert any("channel groups left alone" in n for n in p.render_notes())
