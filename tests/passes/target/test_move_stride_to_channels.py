"""move-stride-to-channels: a strided Conv on few channels becomes a stride-1 Conv on its
input's phases; exact up to summation order, and int8 then uses the aligned kernel."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import pass_testing as pt
import pytest

from graphopt.core.pass_base import PassContext
from graphopt.core.registry import get_pass
from graphopt.inputs import data

PASS = "move-stride-to-channels"


def _conv(
    channels: int,
    shape: list[int],
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    group: int = 1,
) -> ir.Model:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, channels // group, *kernel)) * 0.2).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [
        pt.node("Conv", ["x", "W", "B"], ["c"], strides=strides, pads=pads, group=group),
        pt.node("Relu", ["c"], ["y"]),
    ]
    out = [
        (d + pads[i] + pads[i + len(shape)] - k) // s + 1
        for i, (d, k, s) in enumerate(zip(shape, kernel, strides))
    ]
    return pt.make_model(
        nodes,
        [pt.vi("x", ["n", channels, *shape])],
        [pt.vi("y", ["n", 8, *out])],
        [pt.init("W", w), pt.init("B", b)],
    )


def _check(model: ir.Model, **options: object) -> ir.Node:
    before = pt.copy_model(model)
    result, p = pt.run_pass(model, PASS, **options)
    assert result.modified and p.stats["convs_rephased"] == 1
    feeds = pt.random_feeds(before, count=2, dims={"n": 2})
    pt.assert_same_outputs(before, model, get_pass(PASS).tolerance, feeds)
    again, _ = pt.run_pass(model, PASS, **options)
    assert not again.modified
    return next(n for n in model.graph if n.op_type == "Conv")


def test_waveform_layer_becomes_four_phase_channels() -> None:
    """CREPE's shape: 1 channel, kernel 16 (512 there), stride 4, no padding."""
    conv = _check(_conv(1, [64, 1], [16, 1], [4, 1], [0, 0, 0, 0]), min_macs_per_input=0)
    w = conv.inputs[1].const_value.numpy()
    assert w.shape == (8, 4, 4, 1)
    assert list(conv.attributes["strides"].value) == [1, 1]
    assert list(conv.attributes["pads"].value) == [0] * 4
    ops = [n.op_type for n in conv.inputs[0].producer().graph]
    assert ops[:3] == ["Reshape", "Transpose", "Reshape"]  # no Pad: 64 is what it needs


def test_rgb_stem_with_padding_and_an_odd_kernel() -> None:
    """7x7 stride 2 pads 3 on 3 channels: 12 phase channels, 4x4 (a zero tap row/column)."""
    model = _conv(3, [20, 20], [7, 7], [2, 2], [3, 3, 3, 3])
    skipped, p = pt.run_pass(pt.copy_model(model), PASS)  # small input, few MACs per element
    assert not skipped.modified and p.stats["skipped:input_too_large"] == 1
    conv = _check(model, min_macs_per_input=0)
    assert conv.inputs[1].const_value.numpy().shape == (8, 12, 4, 4)
    assert any(n.op_type == "Pad" for n in model.graph)


@pytest.mark.parametrize(
    ("channels", "kernel", "strides", "group", "why"),
    [
        (4, [3, 3], [2, 2], 1, "aligned already"),
        (3, [3, 3], [1, 1], 1, "no stride"),
        (3, [5, 5], [4, 4], 1, "zero taps too costly"),
        (2, [3, 3], [2, 2], 2, "grouped"),
    ],
)
def test_left_alone(
    channels: int, kernel: list[int], strides: list[int], group: int, why: str
) -> None:
    model = _conv(channels, [16, 16], kernel, strides, [1, 1, 1, 1], group=group)
    original = pt.to_bytes(model)
    result, p = pt.run_pass(model, PASS, min_macs_per_input=0)
    assert not result.modified and pt.to_bytes(model) == original, why
    if why == "zero taps too costly":
        assert p.stats["skipped:growth"] == 1


def test_int8_runs_the_rephased_conv_as_an_integer_kernel() -> None:
    model = _conv(1, [256, 1], [32, 1], [4, 1], [0, 0, 0, 0])
    pt.run_pass(model, PASS, min_macs_per_input=0)
    calib = data.random_feeds(model, count=4, seed=1, dims={"n": 1})
    cls = get_pass("qdq-insert")
    q = cls(cls.Options(target="cpu"), PassContext(data=calib))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert q(model).modified
    assert q.details["fusion_final"]["unfused"] == 0
    assert q.details["fusion_final"]["integer_kernels"].get("QLinearConv") == 1


def test_options_and_preset() -> None:
    from graphopt.core.pipeline import PRESETS

    assert "move-stride-to-channels,qdq-insert" in PRESETS["cpu-int8"]
    for bad in ({"align": 1}, {"max_growth": 0.5}, {"min_macs_per_input": -1}):
        with pytest.raises(ValueError):
            get_pass(PASS).Options(**bad)
