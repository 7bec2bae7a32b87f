"""The least-squares side of ``reconstruct``: sampled rows, im2col patches, the normal
equations each layer accumulates over DATA, and their solution.

Kept apart from the pass so that the math reads, and is tested, on its own; see
:mod:`.reconstruct` for the two fits (output space, input space) and bias correction.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.reconstruct_layers import Layer

from graphopt.ir import attr_value

# ------------------------------------------------------------------------------ rows


def sample_positions(
    shape: tuple[int, ...], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    total = int(np.prod(shape))
    flat = np.arange(total) if total <= count else np.sort(rng.choice(total, count, replace=False))
    return np.unravel_index(flat, shape)


def sample_targets(
    lay: Layer, got: dict[str, np.ndarray], count: int, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Rows sampled from one feed of the original model, and the layer's targets at them:
    the original layer's outputs (output space, bias) or its inputs (input space)."""
    if lay.method in ("output", "bias"):
        y = got[lay.y_ref]
        where = sample_positions(_positions(lay, y), count, rng)
        return where, _gather_output(lay, y, where)
    x = got[lay.x_ref]
    where = sample_positions(_positions(lay, x), count, rng)
    return where, _gather_features(lay, x, where)


def _positions(lay: Layer, a: np.ndarray) -> tuple[int, ...]:
    """The positions rows are sampled from: (batch, *spatial) for a Conv, all rows else."""
    if lay.node.op_type == "Conv":
        return (a.shape[0], *a.shape[2:])
    return (int(np.prod(a.shape[:-1])),)


def _gather_output(lay: Layer, y: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    if lay.node.op_type == "Conv":
        rows = y[(where[0], slice(None), *where[1:])]  # [r, O_ref]
    else:
        rows = y.reshape(-1, y.shape[-1])[where[0]]
    if lay.out_kept is not None:
        rows = rows[:, lay.out_kept]
    return rows.astype(np.float32)


def _gather_current(lay: Layer, y: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    if lay.node.op_type == "Conv":
        return y[(where[0], slice(None), *where[1:])].astype(np.float64)
    return y.reshape(-1, y.shape[-1])[where[0]].astype(np.float64)


def _gather_features(lay: Layer, x: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    if lay.node.op_type == "Conv":
        return x[(where[0], slice(None), *where[1:])].astype(np.float32)
    return x.reshape(-1, x.shape[-1])[where[0]].astype(np.float32)


def _inputs(lay: Layer, x: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    """Current input rows: im2col patches (output space, Conv) or features."""
    if lay.method == "output" and lay.node.op_type == "Conv":
        w_shape = lay.node.inputs[1].shape  # type: ignore[union-attr]
        kernel = tuple(int(d) for d in list(w_shape)[2:])  # type: ignore[arg-type]
        return conv_patches(lay.node, x, kernel, where)
    if lay.node.op_type == "Conv":
        return x[(where[0], slice(None), *where[1:])]
    return x.reshape(-1, x.shape[-1])[where[0]]


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


def accumulate(lay: Layer, got: dict[str, np.ndarray], f: int) -> None:
    """Add feed ``f`` of the current model to the layer's normal equations (``gram``,
    ``cross``; for bias correction, the summed error and the row count)."""
    y = lay.targets.pop(f).astype(np.float64)
    if lay.method == "bias":  # the mean error per output channel
        now = _gather_current(lay, got[lay.y_cur], lay.rows[f])
        err = (y - now).sum(axis=0)
        lay.cross = err if lay.cross is None else lay.cross + err
        lay.gram = np.array(y.shape[0] + (0 if lay.gram is None else lay.gram))
        return
    x = _inputs(lay, got[lay.x_cur], lay.rows[f]).astype(np.float64)
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


def solve(lay: Layer, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """The refit weight rows and bias of one layer from its accumulated equations."""
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
            theta, h = _ridge(lay.gram[k], lay.cross[k], prior, damping)
            if lay.mask is not None:
                keep = np.concatenate([lay.mask[outs].T, np.ones((1, og), bool)], axis=0)
                theta = masked_solve(theta, h, keep)
            w_new[outs] = theta[:-1].T
            b_new[outs] = theta[-1]
        return w_new, b_new
    # input space: original input channels regressed on the current ones
    c_cur = lay.gram.shape[1] - 1
    a, _ = _ridge(lay.gram[0], lay.cross[0], np.zeros_like(lay.cross[0]), damping)
    keep = slice(None) if lay.out_kept is None else lay.out_kept
    w_ref = lay.w_ref[keep]
    b_ref = lay.b_ref[keep] if lay.b_ref is not None else np.zeros(w_ref.shape[0])
    c_ref = a.shape[1]
    w3 = w_ref.reshape(w_ref.shape[0], c_ref, -1)  # [O, C_ref, taps]
    w_new = np.einsum("cd,odt->oct", a[:c_cur], w3).reshape(w_ref.shape[0], -1)
    return w_new, b_ref + np.einsum("d,odt->o", a[c_cur], w3)


def rel_error(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> float:
    num = den = 0.0
    for r, g in zip(ref, got):
        for name, want in r.items():
            num += float(np.square(np.asarray(g[name], np.float64) - want).sum())
            den += float(np.square(want).sum())
    return num / den if den > 0 else 0.0
