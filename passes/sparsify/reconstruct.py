"""reconstruct: refit the changed layers so that they reproduce the original model's outputs.

After ``prune-channels`` (or ``sparsify``), a layer sees fewer or different inputs than it was
trained on. Knowledge still sits in the original model: on calibration DATA, each changed
Conv/Gemm/MatMul is refit, layer by layer, by least squares so that its outputs match the
*original* layer's outputs (the model before the pipeline's first lossy pass, or the file
given in ``reference``), with no training and no framework. Layers are matched to the original
by node name; a pruned layer's kept output channels come from ``prune-channels``' record.

Two fits, chosen per layer (``method=auto``):

* **output space** (``method=output``): minimise ``||[X 1] [W; b] - Y_orig||^2 +
  lambda ||[W; b] - [W0; b0]||^2`` over the layer's current inputs ``X`` (Conv: im2col patches
  at sampled output positions) and the original layer's outputs ``Y_orig``; ``lambda`` is
  ``damping`` times the mean diagonal of ``X^T X`` and pulls towards the current weights where
  DATA does not pin them down. A weight with zeros (``sparsify``) keeps its zeros: each
  output is refit on its own support (preconditioned conjugate gradients on the masked
  subspace, all outputs at once);
* **input space** (``method=input``, or ``auto`` when a layer has more than ``max_features``
  inputs per output, e.g. CREPE's 1024x64 convolution): each *original* input channel is
  regressed on the current input channels (``X_orig ~ [X 1] A``), and the original weights
  are folded through ``A``: exact where removed channels are linear in the kept ones, and
  cheap (a channels x channels system) whatever the kernel size.

After quantization (``qdq-insert``), a layer whose weight is a DequantizeLinear of integers
keeps its integer weights; its bias absorbs the layer's mean error against the original
(**bias correction**), and an int32 bias is requantized with its own scale, so ONNX Runtime
still fuses the group into an integer kernel.

With ``sequential=true`` the layers are fit in dependency order, each on inputs produced by
the already refit layers before it (so later layers also absorb what earlier fits left);
layers that do not depend on each other share one calibration run. The pass then compares
the model's outputs with the original's on DATA and keeps the refit only if it moved them
closer (the report gives the relative error before and after).

The layer view is in :mod:`.reconstruct_layers`, the least squares in :mod:`.reconstruct_fit`
and the undoable weight writes in :mod:`.reconstruct_write`; this module matches the layers
to the original and runs the fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
from graphopt.passes.sparsify.channel_layout import CHANNELS_KEY
from graphopt.passes.sparsify.reconstruct_fit import accumulate, rel_error, sample_targets, solve
from graphopt.passes.sparsify.reconstruct_layers import (
    RECONSTRUCT_KEY,
    Layer,
    as_rows,
    bias_of,
    dq_of,
    find_bias_add,
    read_value,
    weight_hash,
)
from graphopt.passes.sparsify.reconstruct_write import Edits

from graphopt import ir as gir
from graphopt.calib.collect import stream_tensors
from graphopt.core.ops import WEIGHTED
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError
from graphopt.ir import attr_value, const_array

#: a weight with at least this share of exact zeros keeps its zero pattern
_SPARSE_SHARE = 0.05


@dataclasses.dataclass(frozen=True)
class ReconstructOptions:
    layers: Literal["changed", "all"] = option(
        "changed", "changed: layers whose weights differ from the original; all: every match"
    )
    method: Literal["auto", "output", "input"] = option(
        "auto",
        "output-space least squares, input-space channel regression, or auto by size"
        " (quantized layers: bias correction)",
    )
    max_features: int = option(8192, "auto: layers with more inputs per output use input space")
    max_rows: int = option(8192, "sampled rows (output positions) per layer")
    damping: float = option(0.01, "ridge towards the current weights, relative to mean(X^T X)")
    sequential: bool = option(True, "fit layers in order, each on the refit layers' outputs")
    reference: str = option(
        "", "original model file (default: the pipeline's model before its first lossy pass)"
    )

    def __post_init__(self) -> None:
        if self.layers not in ("changed", "all"):
            raise ValueError(f"layers must be changed or all, got {self.layers!r}")
        if self.method not in ("auto", "output", "input"):
            raise ValueError(f"method must be auto, output or input, got {self.method!r}")
        if self.max_features < 1 or self.max_rows < 1:
            raise ValueError("max_features and max_rows must be >= 1")
        if not (isinstance(self.damping, (int, float)) and self.damping >= 0):
            raise ValueError(f"damping must be >= 0, got {self.damping}")


@register_pass
class ReconstructPass(GraphoptPass):
    name = "reconstruct"
    Options = ReconstructOptions
    # Reconstruction moves the outputs back towards the original model, i.e. away from its
    # input (e.g. CREPE pruned at 0.5: cosine 0.23 to the original before, 0.99 after, so
    # about 0.23 to its own input). verify-each compares with that input, so it holds the
    # pass to a model that runs with the same outputs; the pass checks itself against the
    # original on DATA and reverts the refit unless the outputs got closer to it.
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=-1.0)
    needs = frozenset({"data"})
    constant_weights = True
    summary = "refit changed layers by least squares to the original model's outputs"

    def run(self, model: ir.Model) -> bool:
        samples = self.context.data
        if samples is None or len(samples.feeds) == 0:
            raise DataError("reconstruct needs calibration data (DATA)")
        reference = self._reference()
        self.details = {"layers": {}, "skipped": {}}
        if reference is None:
            self.details["note"] = "no lossy pass before reconstruct and no reference given"
            return self.decline(
                "nothing to fit back to: no lossy pass ran before it (put it after "
                "prune-channels, sparsify or qdq-insert)"
            )
        layers = self._layers(model, reference)
        if not layers:
            return self.decline(
                "no Conv/Gemm/MatMul layer differs from the original model's"
                + (f" ({n} left alone)" if (n := len(self.details["skipped"])) else "")
            )
        edits = Edits(model.graph)  # this run's changes, each with its undo
        self._assign_stages(model, layers)
        outputs = [v.name for v in model.graph.outputs]
        ref_out = self._collect_targets(reference, layers, outputs)
        before = rel_error(ref_out, self._outputs(model, outputs))
        for stage in sorted({lay.stage for lay in layers}):
            batch = [lay for lay in layers if lay.stage == stage and lay.skipped is None]
            if batch:
                self._fit_stage(model, batch, edits)
        after = rel_error(ref_out, self._outputs(model, outputs))
        self.details["relative_error"] = {"before": before, "after": after}
        fitted = [lay for lay in layers if lay.skipped is None]
        if fitted and after > before:
            edits.revert()
            self.details["note"] = "the refit moved the outputs away from the original: reverted"
            for lay in fitted:
                lay.skipped = "reverted"
            fitted = []
        self._report(layers)
        self.count("layers_refit", len(fitted))
        if fitted:
            return True
        if "note" in self.details:
            return self.decline(self.details["note"])
        return self.decline(
            f"none of the {len(layers)} changed layers could be refit (see skipped)"
        )

    def _outputs(self, model: ir.Model, names: list[str]) -> list[dict[str, np.ndarray]]:
        fetched = stream_tensors(
            model, self.context.data, names, label="reconstruct: checking", optimize=True
        )
        return list(fetched)

    # ----------------------------------------------------------------- reference
    def _reference(self) -> ir.Model | None:
        path = self.options.reference
        if path:
            return gir.load_model(Path(path))
        snap = self.context.reference
        if snap is None:
            return None
        if snap.data is not None:
            return ir.serde.deserialize_model(onnx.load_from_string(snap.data))
        return ir.load(str(snap.path))

    # ----------------------------------------------------------------- matching
    def _layers(self, model: ir.Model, reference: ir.Model) -> list[Layer]:
        o = self.options
        ref_nodes = {n.name: n for n in reference.graph if n.name}
        out: list[Layer] = []
        for node in model.graph:
            if node.op_type not in WEIGHTED or node.domain not in ("", "ai.onnx"):
                continue
            label = node.name or node.op_type
            w_val = node.inputs[1] if len(node.inputs) > 1 else None
            w = const_array(w_val)
            quantized = w is None and dq_of(w_val) is not None
            if quantized:
                w = read_value(w_val)
            elif w is None or w.dtype != np.float32:
                continue
            if node.inputs[0] is None:
                continue
            ref = ref_nodes.get(node.name) if node.name else None
            if ref is None or ref.op_type != node.op_type:
                self._skip(label, "no layer of that name in the original")
                continue
            w_ref = const_array(ref.inputs[1])
            if w_ref is None or w_ref.ndim != w.ndim:
                self._skip(label, "the original weight is not a constant")
                continue
            if node.op_type == "MatMul" and w.ndim != 2:
                continue
            if node.op_type == "Gemm" and (
                attr_value(node, "transA", 0) or float(attr_value(node, "beta", 1.0)) == 0.0  # type: ignore[arg-type]
            ):
                self._skip(label, "Gemm with transA or beta=0")
                continue
            lay = self._layer(node, ref, w, w_ref, quantized)
            if lay is None:
                continue
            ref_rows = lay.w_ref if lay.out_kept is None else lay.w_ref[lay.out_kept]
            same = lay.w.shape == ref_rows.shape and np.array_equal(lay.w, ref_rows)
            if same and o.layers == "changed":  # only output channels went: inputs as before
                continue
            if node.metadata_props.get(RECONSTRUCT_KEY) == weight_hash(lay.w, lay.b):
                continue  # refit by an earlier run, unchanged since
            out.append(lay)
        return out

    def _layer(
        self, node: ir.Node, ref: ir.Node, w: np.ndarray, w_ref: np.ndarray, quantized: bool
    ) -> Layer | None:
        o = self.options
        label = node.name or node.op_type
        rows = as_rows(node, w)
        rows_ref = as_rows(ref, w_ref)
        y_ref = ref.outputs[0].name
        bias_add = ref_add = None
        if node.op_type == "MatMul":
            found = find_bias_add(node, rows.shape[0])
            if found is not None:
                uses = ref.outputs[0].uses()
                ref_add = next((u for u, _ in uses if u.name == found[0].name), None)
                if ref_add is not None:
                    bias_add = found[0]
                    y_ref = ref_add.outputs[0].name
        elif len(node.inputs) > 2 and node.inputs[2] is not None:
            c = read_value(node.inputs[2])
            if c is None or c.size not in (1, rows.shape[0]):
                self._skip(label, "bias is not a constant vector")
                return None
        b = bias_of(node, bias_add, rows.shape[0])
        b_ref = bias_of(ref, ref_add, rows_ref.shape[0])
        kept = None
        rec = node.metadata_props.get(CHANNELS_KEY)
        if rec:
            kept = np.asarray(json.loads(rec)["kept"], np.int64)
        n_out = rows.shape[0]
        if (kept is None and rows_ref.shape[0] != n_out) or (
            kept is not None and len(kept) != n_out
        ):
            self._skip(label, "output channels do not match the original")
            return None
        if quantized and b is None:
            self._skip(label, "quantized weights and no bias to correct")
            return None
        lay = Layer(
            node=node,
            x_cur=node.inputs[0].name,  # type: ignore[union-attr]
            x_ref=ref.inputs[0].name,  # type: ignore[union-attr]
            y_ref=y_ref,
            y_cur=(bias_add or node).outputs[0].name,
            out_kept=kept,
            w=rows,
            b=b,
            w_ref=rows_ref,
            b_ref=b_ref,
            bias_add=bias_add,
        )
        if quantized:  # integer weights stay: correct the bias (the mean error per output)
            lay.method = "bias"
            return lay
        zeros = float((rows == 0).mean())
        features = rows.shape[1] + 1
        method = o.method
        if method == "auto":
            method = "output" if features <= o.max_features else "input"
        if method == "input" and (zeros >= _SPARSE_SHARE or lay.group != 1):
            if features > o.max_features and o.method == "auto":
                self._skip(
                    label,
                    f"{features} inputs per output (> max_features) and a "
                    + ("sparse" if zeros >= _SPARSE_SHARE else "grouped")
                    + " weight",
                )
                return None
            method = "output"
        lay.method = method
        if method == "output" and zeros >= _SPARSE_SHARE:
            lay.mask = rows != 0
        return lay

    # ----------------------------------------------------------------- order
    def _assign_stages(self, model: ir.Model, layers: list[Layer]) -> None:
        """Stage = 1 + the deepest stage among the fitted layers upstream (0 if none)."""
        if not self.options.sequential:
            return
        by_node = {id(lay.node): lay for lay in layers}
        level: dict[ir.Value, int] = {}
        for node in model.graph:
            upstream = max((level.get(v, -1) for v in node.inputs if v is not None), default=-1)
            lay = by_node.get(id(node))
            if lay is not None:
                lay.stage = upstream + 1
                mine = lay.stage
                if lay.bias_add is not None:
                    for v in lay.bias_add.outputs:
                        level[v] = max(level.get(v, -1), mine)
            else:
                mine = upstream
            for v in node.outputs:
                level[v] = max(level.get(v, -1), mine)

    # ----------------------------------------------------------------- targets
    def _collect_targets(
        self, reference: ir.Model, layers: list[Layer], outputs: list[str]
    ) -> list[dict[str, np.ndarray]]:
        """One run of the original model: sample each layer's rows and keep its targets.

        Returns the original model's outputs per feed (for the before/after check).
        """
        samples = self.context.data
        n_feeds = len(samples.feeds)
        names = [lay.y_ref for lay in layers]
        names += [lay.x_ref for lay in layers if lay.method == "input"] + outputs
        ref_out = []
        rng = np.random.default_rng(self.context.seed)
        per_feed = [max(1, math.ceil(self.options.max_rows / n_feeds)) for _ in layers]
        for f, got in enumerate(
            stream_tensors(reference, samples, names, label="reconstruct: original", optimize=True)
        ):
            for k, lay in enumerate(layers):
                lay.rows[f], lay.targets[f] = sample_targets(lay, got, per_feed[k], rng)
            ref_out.append({n: got[n] for n in outputs})
        return ref_out

    # ----------------------------------------------------------------- fitting
    def _fit_stage(self, model: ir.Model, batch: list[Layer], edits: Edits) -> None:
        samples = self.context.data
        names = [lay.y_cur if lay.method == "bias" else lay.x_cur for lay in batch]
        for f, got in enumerate(
            stream_tensors(
                model, samples, names, label="reconstruct: fitting", optimize=True, only=True
            )
        ):
            for lay in batch:
                accumulate(lay, got, f)
        for lay in batch:
            try:
                w, b = self._solve(lay)
            except np.linalg.LinAlgError as exc:
                lay.skipped = f"least squares failed: {exc}"
                continue
            lay.gram = lay.cross = None
            edits.write(lay, w, b)

    def _solve(self, lay: Layer) -> tuple[np.ndarray, np.ndarray]:
        return solve(lay, self.options.damping)

    # ----------------------------------------------------------------- report
    def _skip(self, label: str, reason: str) -> None:
        """Leave layer ``label`` as it is, saying why (report and findings)."""
        self.details["skipped"][label] = reason
        self.findings.leave(label, reason)

    def _report(self, layers: list[Layer]) -> None:
        for lay in layers:
            if lay.skipped is not None:
                self._skip(lay.name, lay.skipped)
            else:
                self.details["layers"][lay.name] = {
                    "method": lay.method,
                    "stage": lay.stage,
                    "sparse": lay.mask is not None,
                }

    def render_notes(self) -> list[str]:
        """How much closer to the original the outputs came, and the layers left alone."""
        err = self.details.get("relative_error")
        if self.declined or err is None:
            return []
        notes = [
            f"relative error to the original model on DATA {err['before']:.3g} → "
            f"{err['after']:.3g} ({len(self.details['layers'])} layers refit)",
            self.findings.left_alone_note("left alone", "layers"),
        ]
        return [n for n in notes if n]
