"""fuse-ort-kernels: exporters' attention, normalization and GELU idioms as ONNX Runtime's
fused kernels, kept where they prove equal and (on the CPU) measure faster.

ONNX Runtime fuses at session load only the patterns of the exporters it was written for
(BERT from the TorchScript exporter). The dynamo exporter's attention (Reshape/Transpose/
MatMul/Softmax chains), its erf GELU and its residual LayerNorms run op by op: on MiniLM at
batch 1 and sequence 32 that is 1.15x left on the table. onnxscript carries rewrite rules for
ORT's ``com.microsoft`` kernels (``onnxscript.rewriter.ort_fusions``); this pass applies them
by **rule set**, in order, each on its own:

* ``rotary``: RotaryEmbedding (and its cos/sin cache), which GroupQueryAttention reads;
* ``attention``: scaled dot-product attention → MultiHeadAttention / GroupQueryAttention,
  with the q/k/v projections and biases packed into ``Attention`` where they allow it; our
  own rules for paddle2onnx's packed projection and, last, for any block proven by its
  function to be multi-head attention (tf2onnx's einsum lowering);
* ``layernorm``: decomposed normalizations → one op: tf2onnx's GlobalAveragePool moments →
  LayerNormalization, RMS normalization → SimplifiedLayerNormalization;
* ``skip-layernorm``: residual Add + LayerNormalization / SimplifiedLayerNormalization →
  SkipLayerNormalization / SkipSimplifiedLayerNormalization;
* ``gelu``: erf and tanh GELU → Gelu / FastGelu, and a bias Add before it → BiasGelu.

Each applied set must **prove** itself: the model must load in ONNX Runtime and reproduce
the original's outputs (DATA's first two feeds, else seeded random ones) within the
reassociation tolerance, or the set is undone and the report says why (on GPT-2 from the
dynamo exporter one rule leaves a rank-3 Gemm ORT refuses). On the CPU a proven set is then
**timed**: the model with it against the model without it, interleaved, with all of ORT's
session optimizations on (what the user will run), and kept only when it is faster by more
than ``margin``. The timing matters: on the TorchScript MiniLM, which ORT already fuses, the
SkipLayerNormalization rules measure 14% slower; on the Whisper encoder 17% slower. On other
targets (CUDA, where these kernels exist and no GPU is here to time them) a proven set is kept.

Before the rules, the graph gets onnxscript's shape optimization (what its fusions need to see
static head counts and sizes); that too is kept only with a set that pays.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from graphopt.passes.quantize import fusion

from graphopt import runtime
from graphopt.accuracy import acceptance
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError, RuntimeFailure
from graphopt.inputs import data
from graphopt.ir import Pristine

RuleSet = Literal["rotary", "attention", "layernorm", "skip-layernorm", "gelu"]
RULE_SETS: tuple[str, ...] = ("rotary", "attention", "layernorm", "skip-layernorm", "gelu")

#: the ops whose presence makes a rule set worth trying (a cheap look before any copy)
_SIGNS: dict[str, frozenset[str]] = {
    "rotary": frozenset({"Sin", "Cos"}),
    "attention": frozenset({"Softmax"}),
    "layernorm": frozenset({"ReduceMean", "GlobalAveragePool"}),
    "skip-layernorm": frozenset(
        {"LayerNormalization", "ReduceMean", "SimplifiedLayerNormalization", "GlobalAveragePool"}
    ),
    "gelu": frozenset({"Erf", "Tanh", "Gelu"}),
}

# fused kernels the rules write in the default domain (ORT registers its normalizations there)
_DEFAULT_DOMAIN_KERNELS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization"})


@dataclasses.dataclass(frozen=True)
class FuseOrtKernelsOptions:
    rules: list[RuleSet] = option(list(RULE_SETS), "rule sets to try, in this order")
    decide: Literal["measure", "always"] = option(
        "measure",
        "measure: keep a set only if it times faster on this CPU (one whose kernels ONNX "
        "Runtime's optimizer already makes is left alone, untimed); always: keep any set "
        "that proves equal",
    )
    margin: float = option(0.02, "keep a set only when the model runs faster by this fraction")
    rounds: int = option(
        5,
        "interleaved timing rounds per set (3 where the ratio is already far from the "
        "margin; twice as many where the median ratio and the median times disagree)",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        unknown = [r for r in self.rules if r not in RULE_SETS]
        if unknown:
            raise ValueError(f"unknown rule set(s) {unknown}; known: {', '.join(RULE_SETS)}")
        if not self.rules:
            raise ValueError(f"rules is empty; name at least one of {', '.join(RULE_SETS)}")


def _fusions(rule_set: str) -> list[tuple[str, Callable[..., int], dict[str, Any]]]:
    """onnxscript's fusion functions of one rule set, in the order its pipeline runs them
    (later ones build on the earlier ones' results: SDPA → MHA → MHA with bias → Attention)."""
    from graphopt.passes.target import inferred_attention, moments_layernorm, packed_attention
    from onnxscript.rewriter.ort_fusions import (
        attention,
        bias_gelu,
        cos_sin_cache,
        erfgelu,
        gelu,
        gqa,
        gqa_packed_qkv,
        mha,
        mha_bias,
        mha_scale,
        rms_normalization,
        rotary_embedding,
        sdpa,
        sdpa_via_mha,
        skip_normalization,
    )

    table: dict[str, list[tuple[str, Callable[..., int], dict[str, Any]]]] = {
        "rotary": [
            ("RotaryEmbedding", rotary_embedding.fuse_rotary_embedding, {}),
            ("cos-sin-cache", cos_sin_cache.fuse_cos_sin_cache, {}),
            ("partial RotaryEmbedding", rotary_embedding.fuse_partial_rotary_embedding, {}),
        ],
        "attention": [
            # first: where q, k, v come from one packed projection, the whole block is one
            # Attention (onnxscript's rules would make it a MultiHeadAttention between splits)
            ("packed-projection Attention", packed_attention.fuse_packed_attention, {}),
            ("scaled dot-product", sdpa.fuse_sdpa, {"apply_shape_inference": True}),
            ("GroupQueryAttention", gqa.fuse_gqa, {}),
            ("packed-qkv GroupQueryAttention", gqa_packed_qkv.fuse_qkv_gqa, {}),
            ("MultiHeadAttention", mha.fuse_mha1, {}),
            ("MultiHeadAttention (transposed)", mha.fuse_mha2, {}),
            ("scale into MultiHeadAttention", mha_scale.fuse_mha_scale, {}),
            ("biases into MultiHeadAttention", mha_bias.fuse_mha_bias, {}),
            ("packed Attention", attention.fuse_attention, {}),
            ("remaining dot-product as MultiHeadAttention", sdpa_via_mha.replace_sdpa_by_mha, {}),
            # last: what no rule spelled out (tf2onnx's einsum lowering), found by boundary
            # and rewritten only where it is proven to compute multi-head attention
            ("Attention proven by function", inferred_attention.fuse_inferred_attention, {}),
        ],
        "layernorm": [
            # decompositions → one normalization op (their own set: the skip fusions below
            # can be slower on the CPU and must not take these down with them)
            ("LayerNormalization from moments", moments_layernorm.fuse_moments_layernorm, {}),
            ("SimplifiedLayerNormalization", rms_normalization.fuse_rms_normalization, {}),
        ],
        "skip-layernorm": [
            ("SkipLayerNormalization", skip_normalization.fuse_skip_layer_normalization, {}),
            (
                "SkipSimplifiedLayerNormalization",
                skip_normalization.fuse_skip_rms_normalization,
                {},
            ),
        ],
        "gelu": [
            ("erf Gelu", erfgelu.fuse_erfgelu, {}),
            ("Gelu/FastGelu", gelu.fuse_gelu, {}),
            ("BiasGelu", bias_gelu.fuse_bias_gelu, {}),
        ],
    }
    return table[rule_set]


def _prepare(model: ir.Model) -> None:
    """What the fusions need to see: inferred shapes, folded constants, static shape
    arithmetic (onnxscript's own preparation for its ORT fusions)."""
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import shape_optimization

    ir.passes.common.ShapeInferencePass()(model)
    onnxscript.optimizer.optimize(model)
    shape_optimization.rules.apply_to_model(model)
    onnxscript.optimizer.optimize(model)


def _settle(model: ir.Model) -> None:
    """Inline the helper functions a set left unconsumed, drop what is dead."""
    if model.functions:
        ir.passes.common.InlinePass()(model)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    ir.passes.common.RemoveUnusedOpsetsPass()(model)


def _pair_rows(
    without: Any,
    with_: Any,
    feed: dict[str, np.ndarray],
    rounds: int,
    threshold: float | None = None,
) -> list[tuple[float, float]]:
    """(seconds without, seconds with) per round, interleaved; ``interleaved_latency``
    swaps which runs first every round (whichever runs second pays for the first's cache
    traffic) and warms both up once. With a ``threshold`` the timing ends after 3 rounds
    where the answer is already clear (see :func:`_clear`)."""
    rows = runtime.interleaved_latency(
        [without, with_],
        feed,
        rounds=rounds,
        iters=5,
        min_round_seconds=0.15,
        clear=_clear(threshold) if threshold is not None else None,
    )
    return [(r[0], r[1]) for r in rows]


def _clear(threshold: float) -> Callable[[list[list[float]]], bool]:
    """Rounds so far decide alone when the median ratio lies beyond the acceptance noise
    band of ``threshold`` and the median times agree with it (MiniLM's GELU at 1.09, its
    attention far below: 3 rounds each instead of 5)."""

    def clear(rows: list[list[float]]) -> bool:
        without_ms, with_ms, ratio = _summary([(r[0], r[1]) for r in rows])
        faster = ratio <= threshold
        return abs(ratio - threshold) > acceptance.NOISE_BAND and faster == (with_ms < without_ms)

    return clear


def _summary(rows: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(ms without, ms with, median per-round time ratio with/without)."""
    return (
        round(1e3 * float(np.median([r[0] for r in rows])), 3),
        round(1e3 * float(np.median([r[1] for r in rows])), 3),
        round(float(np.median([r[1] / r[0] for r in rows])), 4),
    )


def _time_pair(
    without: Any, with_: Any, feed: dict[str, np.ndarray], rounds: int, margin: float
) -> tuple[float, float, float, int]:
    """(ms without, ms with, ratio, rounds timed). Faster means both the median ratio beats
    the margin and the median times agree; when only one of them says so (noise near the
    margin flipped decisions between runs), as many rounds again decide on all rows."""
    rows = _pair_rows(without, with_, feed, rounds, 1.0 - margin)
    without_ms, with_ms, ratio = _summary(rows)
    if (ratio <= 1.0 - margin) != (with_ms < without_ms):
        rows += _pair_rows(without, with_, feed, rounds)
        without_ms, with_ms, ratio = _summary(rows)
    return without_ms, with_ms, ratio, len(rows)


def _ort_kernels(model: ir.Model) -> collections.Counter[str]:
    """Operators in ONNX Runtime's own optimized graph of ``model``, by op type."""
    proto = fusion.optimized_graph(model)
    return collections.Counter(n.op_type for n in proto.graph.node)


def _fused_already(created: dict[str, int], ort_kernels: collections.Counter[str]) -> bool:
    """Whether ONNX Runtime's optimizer already makes at least as many of every kernel the
    set created: then the fused form optimizes to the same graph and timing it measures noise
    (MiniLM's GELU: BiasGelu x6 either way, 5 rounds at ratio 1.00)."""
    return bool(created) and all(ort_kernels[k] >= n for k, n in created.items())


def _flatten_gemm_inputs(model: ir.Model) -> int:
    """Put back the Reshape to 2-D before a Gemm that reads a fused attention's 3-D output.

    onnxscript's MultiHeadAttention rule matches through the dynamo exporter's
    Reshape([B*S, D]) before the output projection's Gemm (GPT-2's Conv1D) and drops it,
    leaving a rank-3 Gemm input that ONNX Runtime refuses; the Reshape is re-inserted."""
    repaired = 0
    for gemm in list(model.graph):
        if gemm.op_type != "Gemm" or gemm.domain not in ("", "ai.onnx"):
            continue
        a = gemm.inputs[0]
        producer = a.producer() if a is not None else None
        if producer is None or producer.domain != "com.microsoft":
            continue
        if producer.op_type not in ("MultiHeadAttention", "Attention", "GroupQueryAttention"):
            continue
        b = ir.convenience.get_const_tensor(gemm.inputs[1]) if gemm.inputs[1] else None
        if b is None or len(b.shape) != 2:
            continue
        k = int(b.shape[1] if gemm.attributes.get_int("transB", 0) else b.shape[0])
        shape = ir.Value(name=f"{gemm.name}_flat_shape", const_value=ir.tensor([-1, k]))
        model.graph.register_initializer(shape)
        flat = ir.node("Reshape", [a, shape], name=f"{gemm.name}_flatten")
        model.graph.insert_before(gemm, flat)
        gemm.replace_input_with(0, flat.outputs[0])
        repaired += 1
    return repaired


def _std_ops(model: ir.Model) -> set[str]:
    return {n.op_type for n in model.graph if n.domain in ("", "ai.onnx", "com.microsoft")}


@register_pass
class FuseOrtKernelsPass(GraphoptPass):
    name = "fuse-ort-kernels"
    Options = FuseOrtKernelsOptions
    tolerance = Tolerance.reassociation()
    summary = "attention/LayerNorm/GELU idioms as ORT's fused kernels, where proven and faster"

    def run(self, model: ir.Model) -> bool:
        opts: FuseOrtKernelsOptions = self.options
        present = _std_ops(model)
        wanted = [r for r in RULE_SETS if r in opts.rules and _SIGNS[r] & present]
        if not wanted:
            return self.decline(
                f"no {'/'.join(opts.rules)} idiom (no "
                + ", ".join(sorted(set().union(*(_SIGNS[r] for r in opts.rules))))
                + " node)"
            )
        try:
            feeds = self._feeds(model)
        except DataError as exc:
            return self.decline(f"cannot prove a fusion without inputs: {exc}")
        original = runtime.run_feeds(runtime.make_session(model, optimize=False), feeds)
        measure = opts.decide == "measure" and self.context.target == "cpu"
        current: ir.Model | None = None  # the best trial so far (None: the model as it is)
        current_sess = runtime.make_session(model, optimize=True) if measure else None
        sets: dict[str, dict[str, Any]] = {}
        prepared: Pristine | None = None  # the model as the rules need it, made once
        ort_kernels: collections.Counter[str] | None = None  # ORT's own fused kernels, by op
        trial: ir.Model | None = None
        sess: Any = None
        for rule_set in wanted:
            # a set not kept lets go of its model and session before the next is made: at
            # MiniLM's 86 MB each copy and each session's packed weights count in peak memory
            trial = sess = None
            if current is None:
                if prepared is None:
                    trial = Pristine(model).copy()
                    _prepare(trial)
                    prepared = Pristine(trial)
                trial = prepared.copy()
            else:
                trial = Pristine(current).copy()
            record, ok = self._apply(rule_set, trial, feeds, original)
            sets[rule_set] = record
            if not ok:
                continue
            if measure:
                if ort_kernels is None:
                    ort_kernels = _ort_kernels(model if current is None else current)
                if _fused_already(record["created"], ort_kernels):
                    record["kept"] = False
                    record["why"] = (
                        "ONNX Runtime fuses these itself (its optimized graph of the model as "
                        "it is holds " + ", ".join(
                            f"{ort_kernels[k]} {k}" for k in sorted(record["created"])
                        ) + ")"
                    )  # fmt: skip
                    continue
                try:
                    sess = runtime.make_session(trial, optimize=True)
                except RuntimeFailure as exc:
                    record["kept"] = False
                    record["why"] = f"ONNX Runtime cannot optimize the fused form: {exc}"
                    continue
                without_ms, with_ms, ratio, timed = _time_pair(
                    current_sess, sess, feeds[0], opts.rounds, opts.margin
                )
                record.update(without_ms=without_ms, with_ms=with_ms, ratio=ratio, rounds=timed)
                if ratio > 1.0 - opts.margin or with_ms >= without_ms:
                    record["kept"] = False
                    record["why"] = (
                        f"not faster here: {with_ms:.3g} ms fused vs {without_ms:.3g} ms "
                        f"(time ratio {ratio:.3f})"
                    )
                    continue
                current_sess = sess
                ort_kernels = None  # the kept form is what ONNX Runtime optimizes next
            record["kept"] = True
            current, prepared = trial, None  # later sets start from the kept one
        trial = sess = current_sess = prepared = None
        self.details["sets"] = sets
        self.details["feed"] = {k: list(np.shape(v)) for k, v in feeds[0].items()}
        if current is None:
            return self.decline(self._why_none(sets))
        model.graph = current.graph
        model.functions.clear()
        model.functions.update(current.functions)
        for rule_set, record in sets.items():
            if record.get("kept"):
                for kernel, n in record["created"].items():
                    self.count(f"created:{kernel}", n)
            else:
                self.count(f"not_kept:{rule_set}")
        return True

    def _feeds(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        samples = self.context.data
        if samples is not None and samples.feeds:
            return list(samples.feeds[:2])
        return data.random_feeds(
            model, count=2, seed=self.context.seed, dims=self.context.dims
        ).feeds

    def _apply(
        self,
        rule_set: str,
        trial: ir.Model,
        feeds: list[dict[str, np.ndarray]],
        original: list[list[np.ndarray]],
    ) -> tuple[dict[str, Any], bool]:
        """Apply one rule set to ``trial`` and prove it; (its record, whether it holds)."""
        before = {id(n) for n in trial.graph}
        fused: dict[str, int] = {}
        for label, fuse, kwargs in _fusions(rule_set):
            n = int(fuse(trial, **kwargs))
            if n:
                fused[label] = n
        record: dict[str, Any] = {"fused": fused}
        if not fused:
            record.update(kept=False, why="no pattern matched")
            return record, False
        repaired = _flatten_gemm_inputs(trial) if rule_set == "attention" else 0
        if repaired:
            record["gemm_inputs_flattened"] = repaired
        _settle(trial)
        created: dict[str, int] = {}
        for node in trial.graph:
            if id(node) not in before and (
                node.domain == "com.microsoft" or node.op_type in _DEFAULT_DOMAIN_KERNELS
            ):
                self.mark(node)
                created[node.op_type] = created.get(node.op_type, 0) + 1
        record["created"] = created
        try:
            got = runtime.run_feeds(runtime.make_session(trial, optimize=False), feeds)
        except RuntimeFailure as exc:
            record.update(kept=False, why=f"ONNX Runtime cannot run the fused form: {exc}")
            return record, False
        for feed_out, want_out in zip(got, original, strict=True):
            for a, b in zip(feed_out, want_out, strict=True):
                ok, metrics = self.tolerance.check(a, b)
                if not ok:
                    record.update(
                        kept=False,
                        why="outputs moved beyond the reassociation tolerance "
                        f"(max_abs {metrics['max_abs']:.3g}, cosine {metrics['cosine']:.6f})",
                    )
                    return record, False
        return record, True

    @staticmethod
    def _why_none(sets: dict[str, dict[str, Any]]) -> str:
        parts = [f"{name}: {rec.get('why', '?')}" for name, rec in sets.items()]
        return "no rule set kept (" + "; ".join(parts) + ")"

    def render_notes(self) -> list[str]:
        sets = self.details.get("sets", {})
        if self.declined or not sets:
            return []
        notes = []
        for name, rec in sets.items():
            kernels = ", ".join(f"{n} {k}" for k, n in rec.get("created", {}).items())
            timing = (
                f" ({rec['with_ms']:.3g} vs {rec['without_ms']:.3g} ms)" if "with_ms" in rec else ""
            )
            if rec.get("kept"):
                notes.append(f"{name}: {kernels}{timing}")
            else:
                notes.append(f"{name} not kept: {rec.get('why', '?')}")
        return notes
