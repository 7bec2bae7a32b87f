"""avoid-slow-fusions: keep ONNX Runtime from fusions whose kernel is slower on this CPU.

ONNX Runtime fuses subgraphs when it loads a model; a graph can only steer that by its form.
One fusion is measurably a loss on some CPUs: ``Add`` (the residual, optionally with a bias
``Add``) followed by ``LayerNormalization`` becomes ``com.microsoft.SkipLayerNormalization``.
With ORT 1.31 on an AMD EPYC (2 threads, [1, 128, 768]) that kernel takes 350 us where the
unfused Add + LayerNormalization take 80 us; BERT-base has 24 of them, about 8% of its int8
latency. The pass writes such a residual ``Add`` as ``Sum``: the same float addition,
bit-identical, that no ORT fusion pattern matches.

Whether to block is measured, not assumed: for each distinct shape, two two-node models
(Add + LayerNormalization, which ORT fuses, and Sum + LayerNormalization, which it does not)
are timed interleaved on this machine with all graph optimizations on, and the fusion is
blocked only when the unfused form is faster by more than ``margin``. ``decide=block`` or
``allow`` skips the timing. The ``Sum`` nodes carry this pass's provenance, so running it
again on another CPU where the fused kernel wins turns them back into ``Add``.

Only the CPU target is steered; other targets (CUDA, where the fused kernel is the fast one)
are left as they are.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from graphopt import runtime
from graphopt.core.pass_base import PROVENANCE_KEY, GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import const_array as _const

_DEFAULT_SEQ = 128  # a probe length for sequence dims the model leaves symbolic


@dataclasses.dataclass(frozen=True)
class AvoidSlowFusionsOptions:
    decide: Literal["measure", "block", "allow"] = option(
        "measure", "measure: time fused vs unfused on this CPU; block/allow: do not time"
    )
    margin: float = option(
        0.1, "block only when the unfused form is faster by more than this fraction"
    )
    rounds: int = option(5, "interleaved timing rounds per probe")

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")


@dataclasses.dataclass(frozen=True)
class Probe:
    """Timing of one fusion at one shape: fused and unfused microseconds per run."""

    shape: tuple[int, ...]
    fused_us: float
    unfused_us: float  # fused time x the median of per-round unfused/fused ratios


def _probe_model(shape: tuple[int, ...], add_op: str) -> bytes:
    h = shape[-1]
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(add_op, ["x", "r"], ["s"]),
        helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, h).astype(np.float32), "g"),
        numpy_helper.from_array(rng.uniform(-0.1, 0.1, h).astype(np.float32), "b"),
    ]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        f"probe-{add_op}",
        [helper.make_tensor_value_info(n, f, list(shape)) for n in ("x", "r")],
        [helper.make_tensor_value_info("y", f, list(shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@functools.lru_cache(maxsize=64)
def probe_skip_layernorm(shape: tuple[int, ...], rounds: int = 5) -> Probe:
    """Time Add+LayerNormalization (ORT fuses it) against Sum+LayerNormalization here."""
    rt = runtime.ort()
    so = runtime.session_options(optimize=True)
    sessions = [
        rt.InferenceSession(_probe_model(shape, op), so, providers=["CPUExecutionProvider"])
        for op in ("Add", "Sum")
    ]
    rng = np.random.default_rng(1)
    feed = {n: rng.standard_normal(shape).astype(np.float32) for n in ("x", "r")}
    rows = runtime.interleaved_latency(sessions, feed, rounds=rounds, min_round_seconds=0.02)
    fused = float(np.median([r[0] for r in rows]))
    ratio = float(np.median([r[1] / r[0] for r in rows]))
    return Probe(shape, 1e6 * fused, 1e6 * fused * ratio)


def _probe_shape(x: ir.Value, hidden: int) -> tuple[int, ...] | None:
    """The LayerNormalization input's shape with symbolic dims made concrete, or None.

    ORT fuses only 3-D inputs; an unknown rank is probed as [1, 128, hidden].
    """
    if x.shape is None:
        return (1, _DEFAULT_SEQ, hidden)
    dims = list(x.shape)
    if len(dims) != 3:
        return None
    concrete = [
        d if isinstance(d, int) else (1 if i == 0 else _DEFAULT_SEQ) for i, d in enumerate(dims)
    ]
    if not isinstance(dims[-1], int):
        concrete[-1] = hidden
    return tuple(concrete)


@register_pass
class AvoidSlowFusionsPass(GraphoptPass):
    name = "avoid-slow-fusions"
    Options = AvoidSlowFusionsOptions
    tolerance = Tolerance.exact()  # Sum(a, b) and Add(a, b) are the same float addition
    summary = "write residual Adds before LayerNorm as Sum where ORT's fused kernel is slower"

    def run(self, model: ir.Model) -> bool:
        if self.context.target != "cpu":
            self.details["skipped"] = f"target {self.context.target}: only the CPU is steered"
            return False
        graph = model.graph
        probes: dict[tuple[int, ...], dict[str, Any]] = {}
        changed = False
        for ln in list(graph):
            add = self._residual_add(ln)
            if add is None:
                continue
            gamma = _const(ln.inputs[1]) if len(ln.inputs) > 1 else None
            hidden = int(gamma.size) if gamma is not None else 0
            shape = _probe_shape(ln.inputs[0], hidden)  # type: ignore[arg-type]
            if shape is None or hidden <= 0 or shape[-1] != hidden:
                self.count("skipped:shape")
                continue
            block = self._decide(shape, probes)
            want = "Sum" if block else "Add"
            if add.op_type != want:
                add.op_type = want
                if block:
                    self.mark(add)
                else:
                    add.metadata_props.pop(PROVENANCE_KEY, None)
                changed = True
            self.count("skip-layernorm:blocked" if block else "skip-layernorm:allowed")
        if probes:
            self.details["skip-layernorm"] = list(probes.values())
        return changed

    def _residual_add(self, ln: ir.Node) -> ir.Node | None:
        """The Add (or our Sum) ORT would fuse into ``ln`` as SkipLayerNormalization."""
        if ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx"):
            return None
        x = ln.inputs[0] if ln.inputs else None
        if x is None or x.dtype != ir.DataType.FLOAT:
            return None
        add = x.producer()
        if add is None or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
            return None
        ours = add.op_type == "Sum" and add.metadata_props.get(PROVENANCE_KEY) == self.name
        if add.op_type != "Add" and not ours:
            return None
        if len(x.uses()) != 1 or x.is_graph_output():
            return None  # ORT fuses only an Add read by the LayerNormalization alone
        if any(v is None or _const(v) is not None for v in add.inputs):
            return None  # a bias Add (constant operand) is not a residual
        return add

    def _decide(
        self, shape: tuple[int, ...], probes: dict[tuple[int, ...], dict[str, Any]]
    ) -> bool:
        opts = self.options
        if opts.decide != "measure":
            return opts.decide == "block"
        if shape not in probes:
            p = probe_skip_layernorm(shape, opts.rounds)
            # decide from the numbers the report shows, so a reader can check the decision
            fused, unfused = round(p.fused_us, 2), round(p.unfused_us, 2)
            probes[shape] = {
                "shape": list(shape),
                "fused_us": fused,
                "unfused_us": unfused,
                "blocked": unfused < (1.0 - opts.margin) * fused,
            }
        return bool(probes[shape]["blocked"])
