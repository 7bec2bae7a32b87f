"""quantize-attention: ORT's fused ``Attention`` as its int8 kernel, ``com.microsoft.QAttention``.

``fuse-ort-kernels`` packs each layer's q/k/v projections into one ``com.microsoft.Attention``
(weight [D, 3D]); ``qdq-insert`` quantizes the MatMuls around it but not the projection
inside it, a quarter of a BERT layer's products. ``QAttention`` runs that projection as
u8 x s8 (the weight symmetric int8, one scale per column; the input quantized per tensor at
run time by ``DynamicQuantizeLinear``, or read as it is where it already comes from a
per-tensor ``DequantizeLinear``) and the rest of attention as ``Attention`` does.

``QAttention`` takes a ``mask_index``, not the additive ``attention_bias`` that exporters'
masks become (TorchScript's ``(1 - m) * min``, dynamo's ``And``/``Where`` chain), so the pass
**proves** that a bias is a padding mask before it uses one: it runs the graph on probe feeds
that pad the sequence in several patterns and checks, value for value, that the bias equals
``c`` where one integer graph input ``M`` [batch, sequence] is 0 and 0 elsewhere, for every
head and query position. ``Cast(M, int32)`` then becomes the mask, with ``mask_filter_value``
``c``. Any other bias (causal, relative position) leaves its layers float, with the reason.

With ``decide=measure`` (the default) the model with every convertible layer as
``QAttention`` is timed against the model as it is on this CPU, and kept only where it is
faster by ``margin`` (MiniLM with int8 MatMuls around it: 0.84x).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize.attention_masks import NotAMask, PaddingMask, Probe, prove
from graphopt.passes.quantize.quantize_dynamic import quantize_symmetric_int8

from graphopt import runtime
from graphopt.accuracy import acceptance
from graphopt.core.build import MS_DOMAIN, Namer, add_initializer, drop_if_unused, ensure_ms_opset
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError, RuntimeFailure
from graphopt.inputs import data
from graphopt.ir import Pristine
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const

#: Attention attributes QAttention has too (copied over); any other set attribute is a reason
_SHARED_ATTRS = ("num_heads", "scale", "unidirectional", "mask_filter_value")


@dataclasses.dataclass(frozen=True)
class QuantizeAttentionOptions:
    decide: Literal["measure", "always"] = option(
        "measure", "measure: keep QAttention only where it times faster here; always: do not time"
    )
    margin: float = option(0.03, "QAttention must be faster than float by more than this fraction")
    per_channel: bool = option(True, "one weight scale per output column (else per tensor)")
    smooth: float = option(
        0.7,
        "SmoothQuant alpha for the projection's input (0: off): per-channel outliers move into "
        "the weight's rows; needs DATA",
    )
    exclude: list[str] = option([], "Attention node names kept in float")

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if not 0.0 <= self.smooth <= 1.0:
            raise ValueError(f"smooth must be in [0, 1], got {self.smooth}")


@register_pass
class QuantizeAttentionPass(GraphoptPass):
    name = "quantize-attention"
    Options = QuantizeAttentionOptions
    # Lossy like quantize-dynamic: int8 weights and run-time uint8 inputs move outputs by a
    # few steps; a wrong mask, layout or scale turns the outputs' direction, int8 does not.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.99)
    summary = "com.microsoft Attention as its int8 kernel QAttention (padding masks proven)"
    constant_weights = True

    def run(self, model: ir.Model) -> bool:
        nodes = [n for n in model.graph if n.domain == MS_DOMAIN and n.op_type == "Attention"]
        if not nodes:
            return self.decline(
                "no com.microsoft Attention node (fuse-ort-kernels makes them from "
                "exporters' attention; run it first)"
            )
        layers = [n for n in nodes if self._convertible(n)]
        read = {v.name for n in layers for v in (n.inputs[0], _bias(n)) if v is not None}
        probe = Probe(model, read)  # one session for the masks and the smoothing
        masks = self._prove_masks(model, layers, probe)
        layers = [n for n in layers if self._mask_ok(n, masks)]
        if not layers:
            return self.decline(f"no Attention QAttention can run ({self.skip_counts()})")
        smooth = self._smoothing(model, layers, probe)
        del probe  # its session (and arena) goes before the timing sessions come
        trial = Pristine(model).copy()
        self._rewrite(trial, {n.name for n in layers}, masks, smooth)
        if self.options.decide == "measure" and not self._pays(model, trial):
            return self.decline(
                f"QAttention is not faster here: {self.details['timing']['int8_ms']:.3g} ms "
                f"vs {self.details['timing']['float_ms']:.3g} ms float "
                f"(ratio {self.details['timing']['ratio']:.3f})"
            )
        model.graph = trial.graph
        ensure_ms_opset(model)
        return True

    def render_notes(self) -> list[str]:
        notes = []
        for value, mask in self.details.get("masks", {}).items():
            if mask.get("source") == "":
                notes.append(f"mask: '{value}' is all zeros (from shapes only): no mask")
            elif "source" in mask:
                notes.append(
                    f"mask: '{value}' is a padding mask of '{mask['source']}' "
                    f"(fill {mask['fill']:.3g}, proven on {mask['probes']} probe feeds)"
                )
        timing = self.details.get("timing")
        if timing and not self.declined:
            notes.append(
                f"QAttention {timing['int8_ms']:.3g} ms vs Attention {timing['float_ms']:.3g} ms"
            )
        return notes + self.left_alone_notes("left in float")

    # ----------------------------------------------------------------- matching
    def _convertible(self, node: ir.Node) -> bool:
        """Whether ``node``'s own inputs and attributes have a QAttention form (the mask is
        proven separately)."""
        ins = list(node.inputs) + [None] * (7 - len(node.inputs))
        if node.name in self.options.exclude:
            self.leave(node, "excluded")
            return False
        w, b = _packed(ins[1]), _packed(ins[2]) if ins[2] is not None else None
        if w is None or w.dtype != np.float32 or w.ndim != 2 or w.shape[1] % 3:
            self.leave(node, "weight_not_constant_packed_qkv")
            return False
        if ins[2] is not None and (b is None or b.shape != (w.shape[1],)):
            self.leave(node, "bias_not_constant")
            return False
        if (
            ins[4] is not None
            or ins[6] is not None
            or any(o.uses() or o.is_graph_output() for o in node.outputs[1:])
        ):
            self.leave(node, "past_state")
            return False
        sizes = _attr(node, "qkv_hidden_sizes", None)
        if sizes is not None and len(set(sizes)) != 1:
            self.leave(node, "unequal_qkv_sizes")
            return False
        extra = {a for a in node.attributes if a not in (*_SHARED_ATTRS, "qkv_hidden_sizes")}
        if extra:
            self.leave(node, f"attribute_{sorted(extra)[0]}")
            return False
        x = ins[0]
        if x is None or (x.dtype is not None and x.dtype != ir.DataType.FLOAT):
            self.leave(node, "input_not_float32")
            return False
        return True

    def _mask_ok(self, node: ir.Node, masks: dict[str, PaddingMask | str]) -> bool:
        bias = _bias(node)
        if bias is None:
            return True
        if node.inputs[3] is not None:
            self.leave(node, "mask_index_and_attention_bias")
            return False
        proven = masks.get(bias.name or "")
        if not isinstance(proven, PaddingMask):
            self.leave(node, "attention_bias_not_a_padding_mask")
            return False
        return True

    # ----------------------------------------------------------------- masks
    def _prove_masks(
        self, model: ir.Model, layers: list[ir.Node], probe: Probe
    ) -> dict[str, PaddingMask | str]:
        """Each distinct attention_bias of ``layers``: the padding mask it is (or why not)."""
        biases = {b.name: b for n in layers if (b := _bias(n)) is not None and b.name}
        found: dict[str, PaddingMask | str] = {}
        record: dict[str, dict[str, Any]] = {}
        for name, value in biases.items():
            try:
                mask, probes = prove(model, value, self._feed(model), probe.run)
            except (DataError, RuntimeFailure, NotAMask) as exc:
                found[name] = str(exc)
                record[name] = {"not_a_padding_mask": str(exc)}
                continue
            found[name] = mask
            record[name] = {"source": mask.source, "fill": mask.fill, "probes": probes}
        if record:
            self.details["masks"] = record
        return found

    def _feed(self, model: ir.Model) -> dict[str, np.ndarray]:
        samples = self.context.data
        if samples is not None and samples.feeds:
            return dict(samples.feeds[0])
        return data.random_feeds(
            model, count=1, seed=self.context.seed, dims=self.context.dims
        ).feeds[0]

    # ----------------------------------------------------------------- rewriting
    def _smoothing(
        self, model: ir.Model, layers: list[ir.Node], probe: Probe
    ) -> dict[str, np.ndarray]:
        """Attention name -> per-input-channel SmoothQuant scale s (x / s, W * s), from the
        input's per-channel max |x| over DATA's feeds and the weight rows' max |w|.

        Why: a transformer's LayerNorm output has a few channels 10-100x larger than the rest,
        and one per-tensor uint8 scale for all of them costs the others their precision
        (MiniLM: worst embedding cosine 0.990 without, see docs/quantization.md)."""
        alpha = self.options.smooth
        samples = self.context.data
        if alpha == 0.0 or samples is None or not samples.feeds:
            return {}
        names = {n.inputs[0].name for n in layers}
        wanted = sorted(names & probe.computed)  # graph inputs are in the feeds
        amax: dict[str, np.ndarray] = {}
        for feed in samples.feeds[:8]:
            values = dict(zip(wanted, probe.run(wanted, feed), strict=True))
            values.update({k: v for k, v in feed.items() if k in names})
            for name, x in values.items():
                a = np.abs(np.asarray(x, np.float32)).reshape(-1, np.shape(x)[-1]).max(axis=0)
                amax[name] = np.maximum(amax.get(name, a), a)
        scales = {}
        for node in layers:
            x, w = node.inputs[0], _packed(node.inputs[1])
            if x.name not in amax or w is None:
                continue
            wmax = np.abs(w).max(axis=1)
            s = np.power(np.maximum(amax[x.name], 1e-5), alpha) / np.power(
                np.maximum(wmax, 1e-5), 1.0 - alpha
            )
            scales[node.name] = np.clip(s, 1e-2, 1e2).astype(np.float32)
        if scales:
            self.details["smoothed"] = len(scales)
        return scales

    def _rewrite(
        self,
        model: ir.Model,
        names: set[str],
        masks: dict[str, PaddingMask | str],
        smooth: dict[str, np.ndarray],
    ) -> None:
        graph = model.graph
        namer = Namer.for_model(model)
        inputs = {v.name: v for v in graph.inputs}
        quantized_inputs: dict[ir.Value, tuple[ir.Value, ir.Value, ir.Value]] = {}
        mask_index: dict[str, ir.Value] = {}
        for node in [n for n in graph if n.name in names]:
            x, w, b = (
                node.inputs[0],
                node.inputs[1],
                node.inputs[2] if len(node.inputs) > 2 else None,
            )
            assert x is not None and w is not None
            wa = _packed(w)
            assert wa is not None
            if b is not None and _const(b) is None:  # a packed Concat: one constant now
                b = add_initializer(graph, namer(f"{node.name}_qkv_bias"), _packed(b))
            if node.name in smooth:  # x / s into the projection, W * s: the same product
                s = smooth[node.name]
                wa = (wa.astype(np.float64) * s[:, None]).astype(np.float32)
                inv = add_initializer(graph, namer(f"{node.name}_smooth_inv"), 1.0 / s)
                mul = self.mark(ir.Node("", "Mul", [x, inv], name=namer(f"{node.name}_smooth")))
                mul.outputs[0].name = namer(f"{x.name or 'x'}_smoothed")
                mul.outputs[0].dtype, mul.outputs[0].shape = ir.DataType.FLOAT, x.shape
                graph.insert_before(node, [mul])
                x = mul.outputs[0]
                self.count("smoothed")
            q, scale = quantize_symmetric_int8(wa, self.options.per_channel)
            base = w.name or "qkv_weight"
            qw = add_initializer(graph, namer(f"{base}_quantized"), q)
            sw = add_initializer(graph, namer(f"{base}_scale"), scale)
            if b is None:
                b = add_initializer(graph, namer(f"{base}_bias"), np.zeros(q.shape[1], np.float32))
            if x not in quantized_inputs:
                quantized_inputs[x] = self._quantized_input(graph, node, x, namer)
            xq, xs, xz = quantized_inputs[x]
            attrs = [a for k, a in node.attributes.items() if k in _SHARED_ATTRS]
            mask: ir.Value | None = node.inputs[3] if len(node.inputs) > 3 else None
            bias = _bias(node)
            proven = masks[bias.name or ""] if bias is not None else None
            assert proven is None or isinstance(proven, PaddingMask)  # others were left float
            if proven is not None and proven.source == "":  # zeros from shapes: no mask
                self.count("zero_bias_dropped")
            elif proven is not None:
                if proven.source not in mask_index:
                    cast = self.mark(
                        ir.Node("", "Cast", [inputs[proven.source]],
                                attributes=[ir.AttrInt64("to", ir.DataType.INT32)],
                                name=namer(f"{proven.source}_int32"))
                    )  # fmt: skip
                    cast.outputs[0].name = namer(f"{proven.source}_mask_index")
                    cast.outputs[0].dtype = ir.DataType.INT32
                    graph.insert_before(next(iter(graph)), [cast])
                    mask_index[proven.source] = cast.outputs[0]
                mask = mask_index[proven.source]
                attrs = [a for a in attrs if a.name != "mask_filter_value"]
                attrs.append(ir.AttrFloat32("mask_filter_value", proven.fill))
            new = self.mark(
                ir.Node(MS_DOMAIN, "QAttention", [xq, qw, b, xs, sw, mask, xz],
                        attributes=attrs, name=namer(f"{node.name}_int8"))
            )  # fmt: skip
            new.outputs[0].dtype = ir.DataType.FLOAT
            new.outputs[0].shape = node.outputs[0].shape
            graph.insert_before(node, [new])
            ir.convenience.replace_all_uses_with(node.outputs[0], new.outputs[0])
            old = node.outputs[0]
            if old.is_graph_output():  # the output keeps its name, now on QAttention's
                name = old.name
                old.name = namer(f"{name}_float")
                new.outputs[0].name = name
                for i in [i for i, o in enumerate(graph.outputs) if o is old]:
                    graph.outputs[i] = new.outputs[0]
            else:
                new.outputs[0].name = namer(f"{old.name or 'attention'}_int8")
            graph.remove(node, safe=True)
            drop_if_unused(graph, w)
            self.count("quantized:Attention")
        # the exporter's mask chain now feeds nothing: it goes, with what only it read
        ir.passes.common.RemoveUnusedNodesPass()(model)

    def _quantized_input(
        self, graph: ir.Graph, node: ir.Node, x: ir.Value, namer: Namer
    ) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(uint8 x, its scale, its zero point): a per-tensor DequantizeLinear's own inputs
        where ``x`` is one (static, no extra op), else DynamicQuantizeLinear(x)."""
        dq = x.producer()
        if dq is not None and dq.op_type == "DequantizeLinear" and len(dq.inputs) == 3:
            q, s, z = dq.inputs
            sa, za = _const(s), _const(z)
            if sa is not None and za is not None and sa.size == 1 and za.dtype == np.uint8:
                self.count("input_static")
                return q, s, z  # type: ignore[return-value]
        dql = self.mark(
            ir.Node("", "DynamicQuantizeLinear", [x], num_outputs=3,
                    name=namer(f"{x.name or 'x'}_quantize"))
        )  # fmt: skip
        for out, suffix, dtype in zip(
            dql.outputs,
            ("quantized", "scale", "zero_point"),
            (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8),
            strict=True,
        ):
            out.name, out.dtype = namer(f"{x.name or 'x'}_{suffix}"), dtype
        dql.outputs[0].shape = x.shape
        graph.insert_before(node, [dql])
        self.count("input_dynamic")
        return dql.outputs[0], dql.outputs[1], dql.outputs[2]

    # ----------------------------------------------------------------- timing
    def _pays(self, model: ir.Model, trial: ir.Model) -> bool:
        feed = self._feed(model)
        base = runtime.make_session(model, optimize=True)
        threshold = 1.0 - self.options.margin
        timing = acceptance.compare_latency(base, [runtime.make_session(trial)], feed, threshold)
        timing = acceptance.settle(
            timing,
            threshold,
            lambda: acceptance.compare_latency(
                runtime.make_session(model), [runtime.make_session(trial)], feed
            ),
        )
        self.details["timing"] = {
            "float_ms": timing.base_ms,
            "int8_ms": timing.ms[0],
            "ratio": timing.ratios[0],
            "retimed": timing.retimed,
        }
        return acceptance.fastest_that_pays(timing, threshold) is not None


def _bias(node: ir.Node) -> ir.Value | None:
    """An Attention's ``attention_bias`` input (None where it has none)."""
    return node.inputs[5] if len(node.inputs) > 5 else None


def _packed(value: ir.Value | None, depth: int = 4) -> np.ndarray | None:
    """The constant value of ``value``, also where it is a Concat/Transpose of constants:
    fuse-ort-kernels packs the dynamo exporter's q/k/v weights that way (ORT folds it when
    a session loads)."""
    array = _const(value)
    if array is not None or value is None or depth == 0:
        return array
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type not in ("Concat", "Transpose", "Identity"):
        return None
    parts = [_packed(v, depth - 1) for v in node.inputs]
    if not parts or any(p is None for p in parts):
        return None
    if node.op_type == "Concat":
        return np.concatenate(parts, axis=int(_attr(node, "axis", 0)))  # type: ignore[arg-type]
    if node.op_type == "Transpose":
        perm = _attr(node, "perm", None)
        return np.transpose(parts[0], None if perm is None else list(perm))  # type: ignore[arg-type]
    return parts[0]
