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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
from graphopt.passes.quantize._emit import Namer, add_initializer
from graphopt.passes.sparsify.channels import CHANNELS_KEY

from graphopt import ir as gir
from graphopt.calib.collect import stream_tensors
from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.errors import DataError
from graphopt.ir import attr_value, const_array

#: Node metadata: hash of the weights this pass wrote (a second run finds nothing to do).
RECONSTRUCT_KEY = "pkg.graphopt.reconstructed"
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


# ------------------------------------------------------------------------------ layers


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    x_cur: str  # input name in the current model
    x_ref: str  # input name in the original model
    y_ref: str  # output (after a MatMul's bias Add) name in the original model
    y_cur: str  # the same output in the current model
    out_kept: np.ndarray | None  # original output channels this layer still computes
    w: np.ndarray  # current weight as [O, K] (Conv: K = C/group * taps)
    b: np.ndarray | None  # current bias [O]
    w_ref: np.ndarray  # original weight as [O_ref, K_ref]
    b_ref: np.ndarray | None
    method: str = "output"
    mask: np.ndarray | None = None  # [O, K] True where a weight may be non-zero
    bias_add: ir.Node | None = None  # MatMul's bias Add
    stage: int = 0
    # accumulators
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    rows: dict[int, Any] = dataclasses.field(default_factory=dict)  # feed -> sampled positions
    targets: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # feed -> rows
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.node.name or self.node.op_type

    @property
    def group(self) -> int:
        if self.node.op_type != "Conv":
            return 1
        return int(attr_value(self.node, "group", 1))  # type: ignore[arg-type]


def _as_rows(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """The weight as [outputs, inputs] (a Gemm's alpha folded in)."""
    op = node.op_type
    if op == "Conv":
        return w.reshape(w.shape[0], -1).astype(np.float64)
    if op == "Gemm":
        alpha = float(attr_value(node, "alpha", 1.0))  # type: ignore[arg-type]
        m = w if attr_value(node, "transB", 0) else w.T
        return m.astype(np.float64) * alpha
    return w.T.astype(np.float64)


def _from_rows(node: ir.Node, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    op = node.op_type
    if op == "Conv":
        return rows.reshape(shape).astype(np.float32)
    if op == "Gemm":
        alpha = float(attr_value(node, "alpha", 1.0))  # type: ignore[arg-type]
        m = rows / alpha
        return (m if attr_value(node, "transB", 0) else m.T).astype(np.float32)
    return rows.T.astype(np.float32)


def _weight_hash(w: np.ndarray, b: np.ndarray | None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(w, np.float32).tobytes())
    if b is not None:
        h.update(np.ascontiguousarray(b, np.float32).tobytes())
    return h.hexdigest()[:16]


def _dq_of(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear of constants that computes ``value``, if that is what it is."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    if any(v is not None and const_array(v) is None for v in node.inputs):
        return None
    return node


def _read(value: ir.Value | None) -> np.ndarray | None:
    """A constant's data, or a DequantizeLinear of constants evaluated in float64."""
    a = const_array(value)
    if a is not None:
        return a
    dq = _dq_of(value)
    if dq is None:
        return None
    q = const_array(dq.inputs[0]).astype(np.float64)  # type: ignore[union-attr]
    scale = const_array(dq.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
    zp = const_array(dq.inputs[2]) if len(dq.inputs) > 2 else None
    zp = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
    if scale.ndim == 1 and scale.size > 1 and q.ndim > 1:  # per axis
        shape = [1] * q.ndim
        shape[int(attr_value(dq, "axis", 1)) % q.ndim] = scale.size  # type: ignore[call-overload]
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def _bias_of(node: ir.Node, bias_add: ir.Node | None, n: int) -> np.ndarray | None:
    """The layer's bias as a float64 [n] (Gemm: times beta), None where it has none."""
    if node.op_type in ("Conv", "Gemm"):
        c = _read(node.inputs[2]) if len(node.inputs) > 2 else None
        if c is None:
            return None
        beta = float(attr_value(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0  # type: ignore[arg-type]
        return np.broadcast_to(c.astype(np.float64).ravel(), (n,)) * beta
    if bias_add is None:
        return None
    value = next(v for v in bias_add.inputs if v is not node.outputs[0])
    c = _read(value)
    return None if c is None else c.astype(np.float64).ravel()


def _bias_add(node: ir.Node, n: int) -> tuple[ir.Node, int] | None:
    """A MatMul's only consumer when it is ``Add(y, constant [n])``: (Add node, bias index)."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    add, idx = uses[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = 1 - idx
    c = _read(add.inputs[other])
    if c is None or c.size != n or c.shape[-1] != n:
        return None
    return add, other


# ------------------------------------------------------------------------------ patches


def _conv_geometry(node: ir.Node, x_shape: tuple[int, ...], kernel: tuple[int, ...]) -> tuple:
    nd = len(kernel)
    strides = list(attr_value(node, "strides", None) or [1] * nd)  # type: ignore[arg-type]
    dil = list(attr_value(node, "dilations", None) or [1] * nd)  # type: ignore[arg-type]
    auto = attr_value(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    spatial = x_shape[2:]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
    elif auto == "VALID":
        pads_b, pads_e = [0] * nd, [0] * nd
    else:
        pads = list(attr_value(node, "pads", None) or [0] * (2 * nd))  # type: ignore[arg-type]
        pads_b, pads_e = pads[:nd], pads[nd:]
    return strides, dil, pads_b, pads_e


def conv_patches(
    node: ir.Node, x: np.ndarray, kernel: tuple[int, ...], where: tuple[np.ndarray, ...]
) -> np.ndarray:
    """im2col rows [len(where[0]), C * prod(kernel)] at output positions ``where`` (n, p1, ...)."""
    strides, dil, pb, pe = _conv_geometry(node, x.shape, kernel)
    nd = len(kernel)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pb[i], pe[i]) for i in range(nd)])
    window = tuple((kernel[i] - 1) * dil[i] + 1 for i in range(nd))
    view = np.lib.stride_tricks.sliding_window_view(xp, window, axis=tuple(range(2, 2 + nd)))
    n_idx = where[0]
    pos = tuple(where[1 + i] * strides[i] for i in range(nd))
    patches = view[(n_idx, slice(None), *pos)]  # [r, C, *window]
    taps = tuple(slice(None, None, dil[i]) for i in range(nd))
    patches = patches[(slice(None), slice(None), *taps)]
    return patches.reshape(patches.shape[0], -1)


# ------------------------------------------------------------------------------ solvers


def masked_solve(
    theta: np.ndarray, hessian: np.ndarray, mask: np.ndarray, *, tol: float = 1e-7
) -> np.ndarray:
    """The best weights on a fixed support: min tr((T - theta)^T H (T - theta)), T = 0 off mask.

    ``theta`` is [features, outputs] (the unconstrained least-squares solution), ``mask`` says
    where each output's weights may be non-zero. Each output is its own least-squares problem
    on its support; they share ``H``, so all are solved together by conjugate gradients on
    the masked subspace, preconditioned by ``diag(H)``, from the plain masked ``theta``. (The
    sequential OBS recursion of SparseGPT is cheaper but compensates through weights that are
    zeroed later; on correlated inputs it came out worse than no compensation at all.)
    """
    m = mask.astype(np.float64)
    t = theta * m
    r = (hessian @ (theta - t)) * m  # minus the gradient, restricted to the support
    pre = 1.0 / np.maximum(np.diag(hessian), 1e-30)[:, None]
    z = pre * r
    p = z.copy()
    rz = (r * z).sum(axis=0)
    norm0 = np.sqrt((r * r).sum(axis=0)) + 1e-30
    for _ in range(min(theta.shape[0], 500)):  # exact in K steps, in theory
        hp = (hessian @ p) * m
        alpha = rz / np.maximum((p * hp).sum(axis=0), 1e-300)
        t += alpha * p
        r -= alpha * hp
        if np.all(np.sqrt((r * r).sum(axis=0)) <= tol * norm0):
            break
        z = pre * r
        rz_new = (r * z).sum(axis=0)
        p = z + (rz_new / np.maximum(rz, 1e-300)) * p
        rz = rz_new
    return t * m


def _ridge(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, damping: float) -> tuple:
    diag = np.diag(gram)
    lam = damping * float(diag[:-1].mean() if diag.size > 1 else diag.mean())
    lam = lam if lam > 0 else 1e-8
    h = gram + lam * np.eye(gram.shape[0])
    return np.linalg.solve(h, cross + lam * prior), h


# ------------------------------------------------------------------------------ the pass


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
        self._undo: list[Callable[[], None]] = []
        self._assign_stages(model, layers)
        outputs = [v.name for v in model.graph.outputs]
        ref_out = self._collect_targets(reference, layers, outputs)
        before = _rel_error(ref_out, self._outputs(model, outputs))
        for stage in sorted({lay.stage for lay in layers}):
            batch = [lay for lay in layers if lay.stage == stage and lay.skipped is None]
            if batch:
                self._fit_stage(model, batch)
        after = _rel_error(ref_out, self._outputs(model, outputs))
        self.details["relative_error"] = {"before": before, "after": after}
        fitted = [lay for lay in layers if lay.skipped is None]
        if fitted and after > before:
            for undo in reversed(self._undo):
                undo()
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
    def _layers(self, model: ir.Model, reference: ir.Model) -> list[_Layer]:
        o = self.options
        ref_nodes = {n.name: n for n in reference.graph if n.name}
        out: list[_Layer] = []
        for node in model.graph:
            if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
                continue
            label = node.name or node.op_type
            w_val = node.inputs[1] if len(node.inputs) > 1 else None
            w = const_array(w_val)
            quantized = w is None and _dq_of(w_val) is not None
            if quantized:
                w = _read(w_val)
            elif w is None or w.dtype != np.float32:
                continue
            if node.inputs[0] is None:
                continue
            ref = ref_nodes.get(node.name) if node.name else None
            if ref is None or ref.op_type != node.op_type:
                self.details["skipped"][label] = "no layer of that name in the original"
                continue
            w_ref = const_array(ref.inputs[1])
            if w_ref is None or w_ref.ndim != w.ndim:
                self.details["skipped"][label] = "the original weight is not a constant"
                continue
            if node.op_type == "MatMul" and w.ndim != 2:
                continue
            if node.op_type == "Gemm" and (
                attr_value(node, "transA", 0) or float(attr_value(node, "beta", 1.0)) == 0.0  # type: ignore[arg-type]
            ):
                self.details["skipped"][label] = "Gemm with transA or beta=0"
                continue
            lay = self._layer(node, ref, w, w_ref, quantized)
            if lay is None:
                continue
            ref_rows = lay.w_ref if lay.out_kept is None else lay.w_ref[lay.out_kept]
            same = lay.w.shape == ref_rows.shape and np.array_equal(lay.w, ref_rows)
            if same and o.layers == "changed":  # only output channels went: inputs as before
                continue
            if node.metadata_props.get(RECONSTRUCT_KEY) == _weight_hash(lay.w, lay.b):
                continue  # refit by an earlier run, unchanged since
            out.append(lay)
        return out

    def _layer(
        self, node: ir.Node, ref: ir.Node, w: np.ndarray, w_ref: np.ndarray, quantized: bool
    ) -> _Layer | None:
        o = self.options
        label = node.name or node.op_type
        rows = _as_rows(node, w)
        rows_ref = _as_rows(ref, w_ref)
        y_ref = ref.outputs[0].name
        bias_add = ref_add = None
        if node.op_type == "MatMul":
            found = _bias_add(node, rows.shape[0])
            if found is not None:
                uses = ref.outputs[0].uses()
                ref_add = next((u for u, _ in uses if u.name == found[0].name), None)
                if ref_add is not None:
                    bias_add = found[0]
                    y_ref = ref_add.outputs[0].name
        elif len(node.inputs) > 2 and node.inputs[2] is not None:
            c = _read(node.inputs[2])
            if c is None or c.size not in (1, rows.shape[0]):
                self.details["skipped"][label] = "bias is not a constant vector"
                return None
        b = _bias_of(node, bias_add, rows.shape[0])
        b_ref = _bias_of(ref, ref_add, rows_ref.shape[0])
        kept = None
        rec = node.metadata_props.get(CHANNELS_KEY)
        if rec:
            kept = np.asarray(json.loads(rec)["kept"], np.int64)
        n_out = rows.shape[0]
        if (kept is None and rows_ref.shape[0] != n_out) or (
            kept is not None and len(kept) != n_out
        ):
            self.details["skipped"][label] = "output channels do not match the original"
            return None
        if quantized and b is None:
            self.details["skipped"][label] = "quantized weights and no bias to correct"
            return None
        lay = _Layer(
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
                self.details["skipped"][label] = (
                    f"{features} inputs per output (> max_features) and a "
                    + ("sparse" if zeros >= _SPARSE_SHARE else "grouped")
                    + " weight"
                )
                return None
            method = "output"
        lay.method = method
        if method == "output" and zeros >= _SPARSE_SHARE:
            lay.mask = rows != 0
        return lay

    # ----------------------------------------------------------------- order
    def _assign_stages(self, model: ir.Model, layers: list[_Layer]) -> None:
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
        self, reference: ir.Model, layers: list[_Layer], outputs: list[str]
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
                if lay.method in ("output", "bias"):
                    y = got[lay.y_ref]
                    where = _sample_positions(self._out_positions(lay, y), per_feed[k], rng)
                    lay.rows[f] = where
                    lay.targets[f] = self._gather_output(lay, y, where)
                else:
                    x = got[lay.x_ref]
                    where = _sample_positions(self._in_positions(lay, x), per_feed[k], rng)
                    lay.rows[f] = where
                    lay.targets[f] = self._gather_features(lay, x, where)
            ref_out.append({n: got[n] for n in outputs})
        return ref_out

    @staticmethod
    def _out_positions(lay: _Layer, y: np.ndarray) -> tuple[int, ...]:
        if lay.node.op_type == "Conv":
            return (y.shape[0], *y.shape[2:])
        return (int(np.prod(y.shape[:-1])),)

    @staticmethod
    def _in_positions(lay: _Layer, x: np.ndarray) -> tuple[int, ...]:
        if lay.node.op_type == "Conv":
            return (x.shape[0], *x.shape[2:])
        return (int(np.prod(x.shape[:-1])),)

    def _gather_output(
        self, lay: _Layer, y: np.ndarray, where: tuple[np.ndarray, ...]
    ) -> np.ndarray:
        if lay.node.op_type == "Conv":
            rows = y[(where[0], slice(None), *where[1:])]  # [r, O_ref]
        else:
            rows = y.reshape(-1, y.shape[-1])[where[0]]
        if lay.out_kept is not None:
            rows = rows[:, lay.out_kept]
        return rows.astype(np.float32)

    @staticmethod
    def _gather_current(lay: _Layer, y: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        if lay.node.op_type == "Conv":
            return y[(where[0], slice(None), *where[1:])].astype(np.float64)
        return y.reshape(-1, y.shape[-1])[where[0]].astype(np.float64)

    @staticmethod
    def _gather_features(lay: _Layer, x: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        if lay.node.op_type == "Conv":
            return x[(where[0], slice(None), *where[1:])].astype(np.float32)
        return x.reshape(-1, x.shape[-1])[where[0]].astype(np.float32)

    def _inputs(self, lay: _Layer, x: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
        """Current input rows: im2col patches (output space, Conv) or features."""
        if lay.method == "output" and lay.node.op_type == "Conv":
            w_shape = lay.node.inputs[1].shape  # type: ignore[union-attr]
            kernel = tuple(int(d) for d in list(w_shape)[2:])  # type: ignore[arg-type]
            return conv_patches(lay.node, x, kernel, where)
        if lay.node.op_type == "Conv":
            return x[(where[0], slice(None), *where[1:])]
        return x.reshape(-1, x.shape[-1])[where[0]]

    # ----------------------------------------------------------------- fitting
    def _fit_stage(self, model: ir.Model, batch: list[_Layer]) -> None:
        samples = self.context.data
        names = [lay.y_cur if lay.method == "bias" else lay.x_cur for lay in batch]
        for f, got in enumerate(
            stream_tensors(
                model, samples, names, label="reconstruct: fitting", optimize=True, only=True
            )
        ):
            for lay in batch:
                y = lay.targets.pop(f).astype(np.float64)
                if lay.method == "bias":  # the mean error per output channel
                    now = self._gather_current(lay, got[lay.y_cur], lay.rows[f])
                    err = (y - now).sum(axis=0)
                    lay.cross = err if lay.cross is None else lay.cross + err
                    lay.gram = np.array(y.shape[0] + (0 if lay.gram is None else lay.gram))
                    continue
                x = self._inputs(lay, got[lay.x_cur], lay.rows[f]).astype(np.float64)
                g = lay.group if lay.method == "output" else 1
                r = x.shape[0]
                xg = x.reshape(r, g, -1)
                ones = np.ones((r, g, 1))
                z = np.concatenate([xg, ones], axis=2).transpose(1, 0, 2)  # [g, r, k+1]
                yg = y.reshape(r, g, -1).transpose(1, 0, 2) if lay.method == "output" else y[None]
                gram = z.transpose(0, 2, 1) @ z
                cross = z.transpose(0, 2, 1) @ yg
                lay.gram = gram if lay.gram is None else lay.gram + gram
                lay.cross = cross if lay.cross is None else lay.cross + cross
        for lay in batch:
            try:
                w, b = self._solve(lay)
            except np.linalg.LinAlgError as exc:
                lay.skipped = f"least squares failed: {exc}"
                continue
            lay.gram = lay.cross = None
            self._write(model, lay, w, b)

    def _solve(self, lay: _Layer) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        assert lay.gram is not None and lay.cross is not None
        n_out = lay.w.shape[0]
        b0 = lay.b if lay.b is not None else np.zeros(n_out)
        if lay.method == "bias":
            return lay.w, b0 + lay.cross / max(int(lay.gram), 1)
        if lay.method == "output":
            g = lay.gram.shape[0]
            og = n_out // g
            w_new = np.empty_like(lay.w)
            b_new = np.empty(n_out)
            for k in range(g):
                outs = slice(k * og, (k + 1) * og)
                prior = np.concatenate([lay.w[outs].T, b0[outs][None, :]], axis=0)
                theta, h = _ridge(lay.gram[k], lay.cross[k], prior, o.damping)
                if lay.mask is not None:
                    keep = np.concatenate([lay.mask[outs].T, np.ones((1, og), bool)], axis=0)
                    theta = masked_solve(theta, h, keep)
                w_new[outs] = theta[:-1].T
                b_new[outs] = theta[-1]
            return w_new, b_new
        # input space: original input channels regressed on the current ones
        c_cur = lay.gram.shape[1] - 1
        a, _ = _ridge(lay.gram[0], lay.cross[0], np.zeros_like(lay.cross[0]), o.damping)
        keep = slice(None) if lay.out_kept is None else lay.out_kept
        w_ref = lay.w_ref[keep]
        b_ref = lay.b_ref[keep] if lay.b_ref is not None else np.zeros(w_ref.shape[0])
        c_ref = a.shape[1]
        w3 = w_ref.reshape(w_ref.shape[0], c_ref, -1)  # [O, C_ref, taps]
        w_new = np.einsum("cd,odt->oct", a[:c_cur], w3).reshape(w_ref.shape[0], -1)
        return w_new, b_ref + np.einsum("d,odt->o", a[c_cur], w3)

    def _write(self, model: ir.Model, lay: _Layer, w_rows: np.ndarray, b: np.ndarray) -> None:
        graph = model.graph
        namer = Namer(graph)
        node = lay.node
        if lay.method != "bias":  # quantized weights stay as they are
            w_val = node.inputs[1]
            assert w_val is not None and w_val.const_value is not None
            shape = tuple(w_val.const_value.shape)
            arr = _from_rows(node, w_rows, shape)
            if lay.mask is not None:
                keep = _from_rows(node, lay.mask.astype(np.float64), shape) != 0
                arr = np.where(keep, arr, np.float32(0))
            self._set_const(graph, namer, node, 1, arr)
            lay.w = _as_rows(node, arr)
        if node.op_type in ("Conv", "Gemm"):
            if node.op_type == "Gemm":
                b = b / float(attr_value(node, "beta", 1.0))  # type: ignore[arg-type]
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                self._set_param(graph, namer, node, 2, b)
            else:
                self._add_bias(graph, namer, node, b.astype(np.float32))
        elif lay.bias_add is not None:
            add = lay.bias_add
            idx = next(i for i, v in enumerate(add.inputs) if v is not node.outputs[0])
            self._set_param(graph, namer, add, idx, b)
        lay.b = _bias_of(node, lay.bias_add, lay.w.shape[0])  # as stored (rounded)
        old = node.metadata_props.get(RECONSTRUCT_KEY)
        node.metadata_props[RECONSTRUCT_KEY] = _weight_hash(lay.w, lay.b)

        def undo_meta() -> None:
            if old is None:
                node.metadata_props.pop(RECONSTRUCT_KEY, None)
            else:
                node.metadata_props[RECONSTRUCT_KEY] = old

        self._undo.append(undo_meta)

    def _set_param(
        self, graph: ir.Graph, namer: Namer, node: ir.Node, index: int, values: np.ndarray
    ) -> None:
        """Store float ``values`` in input ``index``: a float constant, or the integers behind
        a DequantizeLinear (requantized with its scale and zero point, e.g. an int32 bias)."""
        v = node.inputs[index]
        assert v is not None
        dq = _dq_of(v) if v.const_value is None else None
        if dq is None:
            shape = tuple(v.const_value.shape)  # type: ignore[union-attr]
            arr = np.asarray(values, np.float32)
            self._set_const(
                graph, namer, node, index, arr.reshape(shape) if arr.size == np.prod(shape) else arr
            )
            return
        q_val = dq.inputs[0]
        q = const_array(q_val)
        scale = const_array(dq.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
        zp = const_array(dq.inputs[2]) if len(dq.inputs) > 2 else None
        zp = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
        assert q is not None
        info = np.iinfo(q.dtype)
        new = np.clip(np.round(values.reshape(q.shape) / scale + zp), info.min, info.max)
        self._set_const(graph, namer, dq, 0, new.astype(q.dtype))

    def _set_const(
        self, graph: ir.Graph, namer: Namer, node: ir.Node, index: int, arr: np.ndarray
    ) -> None:
        """Replace input ``index`` (a constant) of ``node`` by ``arr``, copying if shared."""
        v = node.inputs[index]
        assert v is not None
        readers = {id(u) for u, _ in v.uses()}
        if len(readers) > 1 or v.is_graph_output() or v.name not in graph.initializers:
            new = add_initializer(graph, namer(f"{v.name}_refit"), arr)
            node.replace_input_with(index, new)

            def undo_copy() -> None:
                node.replace_input_with(index, v)
                graph.initializers.pop(new.name)

            self._undo.append(undo_copy)
            return
        old_tensor, old_shape = v.const_value, v.shape
        v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
        v.shape = ir.Shape(arr.shape)

        def undo_value() -> None:
            v.const_value, v.shape = old_tensor, old_shape

        self._undo.append(undo_value)

    def _add_bias(self, graph: ir.Graph, namer: Namer, node: ir.Node, b32: np.ndarray) -> None:
        """Give a Conv/Gemm without a bias one (Gemm: C with beta=1)."""
        w_name = node.inputs[1].name  # type: ignore[union-attr]
        bias = add_initializer(graph, namer(f"{w_name}_bias"), b32)
        n_inputs = len(node.inputs)
        old_beta = node.attributes.get("beta")
        node.resize_inputs(3)
        node.replace_input_with(2, bias)
        if node.op_type == "Gemm":
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

        def undo_bias() -> None:
            node.replace_input_with(2, None)
            node.resize_inputs(n_inputs)
            graph.initializers.pop(bias.name)
            if node.op_type == "Gemm":
                if old_beta is None:
                    node.attributes.pop("beta", None)
                else:
                    node.attributes["beta"] = old_beta

        self._undo.append(undo_bias)

    def _report(self, layers: list[_Layer]) -> None:
        for lay in layers:
            if lay.skipped is not None:
                self.details["skipped"][lay.name] = lay.skipped
            else:
                self.details["layers"][lay.name] = {
                    "method": lay.method,
                    "stage": lay.stage,
                    "sparse": lay.mask is not None,
                }


def _sample_positions(
    shape: tuple[int, ...], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    total = int(np.prod(shape))
    flat = np.arange(total) if total <= count else np.sort(rng.choice(total, count, replace=False))
    return np.unravel_index(flat, shape)


def _rel_error(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> float:
    num = den = 0.0
    for r, g in zip(ref, got):
        for name, want in r.items():
            num += float(np.square(np.asarray(g[name], np.float64) - want).sum())
            den += float(np.square(want).sum())
    return num / den if den > 0 else 0.0
