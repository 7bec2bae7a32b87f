"""quantize-recurrent: LSTM layers as ONNX Runtime's int8 ``com.microsoft.DynamicQuantizeLSTM``.

An LSTM is one matrix product per step against ``R`` (and one for all steps against ``W``);
ONNX Runtime's CPU EP has an integer kernel for it, ``DynamicQuantizeLSTM``: ``W`` and ``R``
stored as symmetric int8 (zero point 0) with one scale per gate row (``[dirs, 4*hidden]``) or
per direction, the input and the hidden state quantized to uint8 at run time by the kernel.
No calibration data is needed, and the layer keeps its inputs, outputs and state, so a
streaming model keeps its signature.

Whether int8 pays depends on the layer's size: a large LSTM is 1.7-5x faster as int8, a small
one (hidden 32-64) slower, because quantizing the state each step costs more than the small
product saves. With ``decide=measure`` (the default) each distinct layer shape is timed here,
float ``LSTM`` against ``DynamicQuantizeLSTM``, interleaved, and the layer is rewritten only
when int8 is faster by more than ``margin``; the report keeps both times. The sequence length
timed is the input's when it is static, else ``probe_seq``.

A batch-first LSTM (``layout=1``, opset 14) is left alone: ONNX Runtime runs neither it nor
a contrib counterpart (its own ``quantize_dynamic`` drops the attribute).

GRU and ONNX RNN layers are left in float with the reason: ONNX Runtime has no integer kernel
for them, and it already computes their input projection for all steps in one GEMM.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
from graphopt.passes.quantize.quantize_dynamic import quantize_symmetric_int8
from onnx import helper, numpy_helper

from graphopt import ir as gir
from graphopt import runtime
from graphopt.core.build import MS_DOMAIN, Namer, add_initializer, drop_if_unused, ensure_ms_opset
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const
from graphopt.ir import not_constant

#: recurrent ops ONNX Runtime has no integer kernel for (left float with ``no_int8_kernel``)
NO_KERNEL = ("GRU", "RNN")
_NO_KERNEL_NOTE = (
    "GRU/RNN stay float: ONNX Runtime has no int8 kernel for them, and it already computes "
    "their input projection for all steps in one GEMM"
)
_RECURRENT = ("LSTM", *NO_KERNEL)


@dataclasses.dataclass(frozen=True)
class QuantizeRecurrentOptions:
    decide: Literal["measure", "always"] = option(
        "measure", "measure: rewrite a layer only where int8 times faster here; always: do not time"
    )
    margin: float = option(0.1, "int8 must be faster than float by more than this fraction")
    probe_seq: int = option(32, "sequence length timed where the model leaves it symbolic")
    rounds: int = option(5, "interleaved timing rounds per layer shape")
    per_channel: bool = option(True, "one weight scale per gate row (else one per direction)")
    exclude: list[str] = option([], "node names kept in float")

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if self.probe_seq < 1:
            raise ValueError(f"probe_seq must be at least 1, got {self.probe_seq}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")


def quantize_gates(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of an ONNX LSTM weight [dirs, 4H, K]: (q [dirs, K, 4H] as the contrib op
    reads it, scale [dirs, 4H] per gate row or [dirs] per direction). Each direction is the
    [K, 4H] matrix quantize-dynamic quantizes per column."""
    parts = [quantize_symmetric_int8(np.ascontiguousarray(d.T), per_channel) for d in w]
    return np.stack([q for q, _ in parts]), np.stack([s for _, s in parts])


# ----------------------------------------------------------------------------- timing
def _probe_models(
    seq: int, batch: int, size: int, hidden: int, dirs: int, per_channel: bool
) -> tuple[bytes, bytes]:
    """A float LSTM and its DynamicQuantizeLSTM at one shape (random weights: time only)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((dirs, 4 * hidden, size)) * 0.1).astype(np.float32)
    r = (rng.standard_normal((dirs, 4 * hidden, hidden)) * 0.1).astype(np.float32)
    b = np.zeros((dirs, 8 * hidden), np.float32)
    direction = "bidirectional" if dirs == 2 else "forward"
    f = onnx.TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, [seq, batch, size])
    y = [helper.make_tensor_value_info(n, f, None) for n in ("y", "yh", "yc")]
    (qw, sw), (qr, sr) = quantize_gates(w, per_channel), quantize_gates(r, per_channel)
    plain = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r", "b"], ["y", "yh", "yc"],
                          hidden_size=hidden, direction=direction)],
        "float", [x], y,
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (r, "r"), (b, "b"))],
    )  # fmt: skip
    arrays = {"qw": qw, "qr": qr, "b": b, "sw": sw, "sr": sr}
    arrays |= {"zw": np.zeros_like(sw, np.int8), "zr": np.zeros_like(sr, np.int8)}
    quant = helper.make_graph(
        [helper.make_node("DynamicQuantizeLSTM",
                          ["x", "qw", "qr", "b", "", "", "", "", "sw", "zw", "sr", "zr"],
                          ["y", "yh", "yc"], domain=MS_DOMAIN,
                          hidden_size=hidden, direction=direction)],
        "int8", [x], y, [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )  # fmt: skip
    ops = [helper.make_opsetid("", 14), helper.make_opsetid(MS_DOMAIN, 1)]
    return tuple(  # type: ignore[return-value]
        helper.make_model(g, opset_imports=ops, ir_version=8).SerializeToString()
        for g in (plain, quant)
    )


@functools.lru_cache(maxsize=64)
def probe_lstm(
    seq: int, batch: int, size: int, hidden: int, dirs: int, per_channel: bool, rounds: int = 5
) -> tuple[float, float]:
    """(float us, int8 us) per run of one LSTM layer of this shape on this CPU; the int8 time
    is the float one times the median of per-round ratios (rounds interleaved)."""
    rt = runtime.ort()
    so = runtime.session_options(optimize=True)
    sessions = [
        rt.InferenceSession(m, so, providers=["CPUExecutionProvider"])
        for m in _probe_models(seq, batch, size, hidden, dirs, per_channel)
    ]
    feed = {"x": np.random.default_rng(1).standard_normal((seq, batch, size)).astype(np.float32)}
    rows = runtime.interleaved_latency(sessions, feed, rounds=rounds, min_round_seconds=0.02)
    fp = float(np.median([r[0] for r in rows]))
    ratio = float(np.median([r[1] / r[0] for r in rows]))
    return 1e6 * fp, 1e6 * fp * ratio


# ----------------------------------------------------------------------------- the pass
@dataclasses.dataclass
class _Layer:
    """One LSTM the pass can rewrite: its float weights and the shape to time it at."""

    node: ir.Node
    w: np.ndarray  # [dirs, 4H, size]
    r: np.ndarray  # [dirs, 4H, H]

    @property
    def dims(self) -> tuple[int, int, int]:
        return self.w.shape[0], self.w.shape[2], self.r.shape[2]  # dirs, size, hidden


@register_pass
class QuantizeRecurrentPass(GraphoptPass):
    name = "quantize-recurrent"
    Options = QuantizeRecurrentOptions
    # Lossy like quantize-dynamic: int8 weights and a state quantized each step move outputs
    # by a few steps; what must hold is their direction (a wrong gate order, transpose or
    # layout gives cosines far below 0.99; int8 on trained layers lands at 0.999+).
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.99)
    summary = "int8 LSTM layers as com.microsoft.DynamicQuantizeLSTM where they time faster"
    constant_weights = True

    def run(self, model: ir.Model) -> bool:
        if self.context.target != "cpu":
            return self.decline(
                f"target {self.context.target}: DynamicQuantizeLSTM is a CPU kernel of ONNX "
                "Runtime (use target=cpu)"
            )
        namer = Namer.for_model(model)
        timings: list[dict[str, Any]] = []
        changed = False
        # If/Loop/Scan bodies too: the kernel needs no calibration, only constant weights
        for graph in list(gir.iter_graphs(model)):
            for node in list(graph):
                layer = self._match(node)
                if layer is None:
                    continue
                timing = self._timing(layer)
                if timing is not None:
                    timings.append(timing)
                    if not timing["int8"]:
                        self.leave(node, "int8_not_faster")
                        continue
                self._rewrite(graph, layer, namer)
                if graph is not model.graph:
                    self.count("quantized_in_subgraphs")
                changed = True
        if timings:
            self.details["timings"] = timings
        if changed:
            ensure_ms_opset(model)
            return True
        if timings:  # LSTMs were found and timed: none pays here
            return self.decline(
                "no LSTM times faster as int8 on this CPU by the margin "
                f"(skipped: {self.skip_counts()}); the report's timings show each layer"
            )
        skipped = self.skip_counts()
        reason = "no LSTM with float32 constant weights" + (
            f" (skipped: {skipped})" if skipped else ""
        )
        if "weight_is_graph_input" in skipped or "weight_is_constant_node" in skipped:
            reason += f"; {gir.CLEANUP_FIRST}"
        return self.decline(reason)

    def render_notes(self) -> list[str]:
        notes = [
            f"{t['node']}: {'int8' if t['int8'] else 'float'} (LSTM {t['float_us']:.0f} us, "
            f"DynamicQuantizeLSTM {t['int8_us']:.0f} us at seq {t['shape'][0]}, "
            f"hidden {t['shape'][3]})"
            for t in self.details.get("timings", [])
        ]
        if self.stats.get("skipped:no_int8_kernel"):
            notes.append(_NO_KERNEL_NOTE)
        return notes + self.left_alone_notes("left in float")

    # ----------------------------------------------------------------- matching
    def _match(self, node: ir.Node) -> _Layer | None:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _RECURRENT:
            return None
        if node.op_type in NO_KERNEL:
            self.leave(node, "no_int8_kernel")
            return None
        if node.name and node.name in self.options.exclude:
            self.leave(node, "excluded")
            return None
        if _attr(node, "layout", 0):
            self.leave(node, "batch_first_layout")  # ONNX Runtime has no kernel for it
            return None
        x = node.inputs[0]
        if x is None or (x.dtype is not None and x.dtype != ir.DataType.FLOAT):
            self.leave(node, "activation_dtype")
            return None
        arrays = []
        for v in node.inputs[1:3]:
            a = _const(v)
            if v is None or a is None or not v.is_initializer():  # outer scope's too
                self.leave(node, "weight_not_constant" if v is None else not_constant(v))
                return None
            if a.dtype != np.float32 or a.ndim != 3:
                self.leave(node, "weight_dtype")
                return None
            arrays.append(a)
        for v in node.inputs[3:]:  # B, P: the kernel reads them as float, constant or not
            if v is not None and v.dtype is not None and v.dtype not in (
                ir.DataType.FLOAT, ir.DataType.INT32
            ):  # fmt: skip
                self.leave(node, "activation_dtype")
                return None
        return _Layer(node, arrays[0], arrays[1])

    def _timing(self, layer: _Layer) -> dict[str, Any] | None:
        opts = self.options
        if opts.decide == "always":
            return None
        dirs, size, hidden = layer.dims
        x = layer.node.inputs[0]
        dims = list(x.shape) if x is not None and x.shape is not None else []
        seq = dims[0] if len(dims) == 3 and isinstance(dims[0], int) and dims[0] else None
        batch = dims[1] if len(dims) == 3 and isinstance(dims[1], int) else 1
        seq = seq or opts.probe_seq
        fp, q = probe_lstm(seq, max(1, batch), size, hidden, dirs, opts.per_channel, opts.rounds)
        fp, q = round(fp, 1), round(q, 1)  # decide from the numbers the report shows
        return {
            "node": layer.node.name or "LSTM",
            "shape": [seq, max(1, batch), size, hidden, dirs],
            "float_us": fp,
            "int8_us": q,
            "int8": q < (1.0 - opts.margin) * fp,
        }

    # ----------------------------------------------------------------- rewriting
    def _rewrite(self, graph: ir.Graph, layer: _Layer, namer: Namer) -> None:
        node = layer.node
        base = node.name or "LSTM"
        ins = list(node.inputs) + [None] * (8 - len(node.inputs))
        qw, sw = quantize_gates(layer.w, self.options.per_channel)
        qr, sr = quantize_gates(layer.r, self.options.per_channel)
        weights = [
            add_initializer(graph, namer(f"{base}_{what}"), arr)
            for what, arr in (
                ("W_quantized", qw),
                ("R_quantized", qr),
                ("W_scale", sw),
                ("W_zero_point", np.zeros(sw.shape, np.int8)),
                ("R_scale", sr),
                ("R_zero_point", np.zeros(sr.shape, np.int8)),
            )
        ]
        attrs = [a for name, a in node.attributes.items() if name != "layout"]
        name = namer(f"{base}_DynamicQuantizeLSTM")
        new = ir.Node(MS_DOMAIN, "DynamicQuantizeLSTM",
                      [*ins[:1], *weights[:2], *ins[3:8], *weights[2:]],
                      attributes=attrs, num_outputs=len(node.outputs), name=name)  # fmt: skip
        self.mark(new)
        old_outs, new_outs = [], []
        for old, out in zip(node.outputs, new.outputs, strict=True):
            out.dtype = ir.DataType.FLOAT
            if old.uses() or old.is_graph_output():
                old_outs.append(old)
                new_outs.append(out)
        ir.convenience.replace_nodes_and_values(graph, node, [node], [new], old_outs, new_outs)
        for v in ins[1:3]:
            if v is not None and v.graph is not None:  # the scope that holds the weight
                drop_if_unused(v.graph, v)
        self.count("quantized:LSTM")
