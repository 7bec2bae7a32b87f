"""Following a channel axis through shapes: dims as known factors times symbols, which input
dims a Reshape merges or splits, and where its target holds the channel count.

A Reshape's target is often computed (PyTorch exports build ``[batch, seq, heads, head_dim]``
from ``Shape`` values); ONNX's own inference gives such targets fresh unknown dims, so
:func:`symbolic_shapes` asks ONNX Runtime's symbolic shape inference for consistent names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.ir import attr_value, const_array


def rank_of(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def const_ints(value: ir.Value | None) -> list[int] | None:
    a = const_array(value)
    return None if a is None else [int(x) for x in np.asarray(a).ravel()]


def axes_of(node: ir.Node, input_index: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input ``input_index`` (newer ones)."""
    a = attr_value(node, "axes", None)
    if a is not None:
        return [int(x) for x in a]  # type: ignore[union-attr]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        return const_ints(node.inputs[input_index])
    return []


Dim = tuple[int, tuple[str, ...]]  # known factor, unknown factors (symbols)


def _mul(a: Dim, b: Dim) -> Dim:
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _divides(a: Dim, b: Dim) -> bool:
    if a[0] == 0 or b[0] % a[0]:
        return False
    rest = list(b[1])
    for sym in a[1]:
        if sym not in rest:
            return False
        rest.remove(sym)
    return True


def as_dims(dims: Sequence[int | str | None], tag: str) -> list[Dim]:
    """Dims as (known factor, symbols): a name is a symbol, an unknown dim a fresh one."""
    return [
        (d, ()) if isinstance(d, int) else (1, (d if d else f"?{tag}{i}",))
        for i, d in enumerate(dims)
    ]


def resolve_target(ins: list[Dim], target: list[int]) -> list[Dim] | None:
    """A Reshape's constant target (0 copies, -1 infers) as dims."""
    outs: list[Dim | None] = []
    for j, t in enumerate(target):
        if t == 0:
            if j >= len(ins):
                return None
            outs.append(ins[j])
        elif t > 0:
            outs.append((t, ()))
        elif t == -1:
            outs.append(None)
        else:
            return None
    if outs.count(None) > 1:
        return None
    if None in outs:
        total: Dim = (1, ())
        for d in ins:
            total = _mul(total, d)
        known: Dim = (1, ())
        for d in outs:
            if d is not None:
                known = _mul(known, d)
        if not _divides(known, total):
            return None
        rest = list(total[1])
        for sym in known[1]:
            rest.remove(sym)
        outs[outs.index(None)] = (total[0] // known[0], tuple(sorted(rest)))
    return [d for d in outs if d is not None]


def _product(dims: Sequence[Dim]) -> Dim:
    total: Dim = (1, ())
    for d in dims:
        total = _mul(total, d)
    return total


def unify(ins: list[Dim], outs: list[Dim]) -> list[Dim]:
    """``outs`` with one unknown dim named as one of ``ins`` where the two must be equal.

    A Reshape keeps the element count: in ``[?a, 200, 1, 1] -> [?b, 200]`` the other dims
    multiply to 200 on both sides, so ``?b`` is ``?a`` (an unknown batch dim each side,
    as a Paddle export's -1s or ONNX's fresh ``unk__`` names give).
    """
    if _product(ins) == _product(outs):
        return outs
    for i, d in enumerate(ins):
        if d[0] != 1 or len(d[1]) != 1:
            continue
        rest_in = _product(ins[:i] + ins[i + 1 :])
        for j, e in enumerate(outs):
            if e[0] != 1 or len(e[1]) != 1 or e == d or rest_in[0] == 0:
                continue
            if _product(outs[:j] + outs[j + 1 :]) == rest_in:
                return [*outs[:j], d, *outs[j + 1 :]]
    return outs


def reshape_run(
    ins: list[Dim], outs: list[Dim], axis: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Input dims [lo, hi) and output dims [j0, j1) that hold the same elements, axis in [lo, hi).

    Unknown dims are symbols, so ``[n, 4, 512, 1] -> [-1, 2048]`` pairs ``n`` with ``-1`` and
    ``4*512`` with ``2048``. None where the runs cannot be told apart.
    """
    i = j = 0
    while i < len(ins) and j < len(outs):
        lo, j0 = i, j
        pi, pj = ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if _divides(pi, pj) and i < len(ins):
                pi = _mul(pi, ins[i])
                i += 1
            elif _divides(pj, pi) and j < len(outs):
                pj = _mul(pj, outs[j])
                j += 1
            else:
                return None
        if lo <= axis < i:
            return (lo, i), (j0, j)
    return None


def shape_slot(node: ir.Node, j: int) -> tuple[ir.Node, int, int] | None:
    """Where element ``j`` of a Reshape's target is a constant: (node, input, element).

    The target itself, or one constant input of the Concat that builds it (PyTorch exports
    build ``[batch, seq, heads, head_dim]`` from Shape values and constants).
    """
    target = node.inputs[1]
    if const_array(target) is not None:
        return node, 1, j
    concat = target.producer() if target is not None else None
    if concat is None or concat.op_type != "Concat" or int(attr_value(concat, "axis", 0)) != 0:  # type: ignore[call-overload]
        return None
    offset = 0
    for k, part in enumerate(concat.inputs):
        if part is None or part.shape is None or len(part.shape) != 1:
            return None
        n = part.shape[0]
        if not isinstance(n, int):
            return None
        if offset <= j < offset + n:
            return (concat, k, j - offset) if const_array(part) is not None else None
        offset += n
    return None


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[None]:
    """Run in a temp folder: when its inference is incomplete, ORT's ``infer_shapes`` saves
    ``sym_shape_infer_temp.onnx`` and a data file into the current folder (the user's)."""
    old = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="graphopt-symshape-")
    try:
        os.chdir(tmp)
        yield
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def symbolic_shapes(model: ir.Model) -> dict[str, list[int | str | None]] | None:
    """Value shapes with consistent symbolic dims, from ONNX Runtime's symbolic shape inference.

    ONNX's own inference gives every computed Reshape target fresh unknown dims, so the
    ``[batch, seq, 12, 32]`` that a PyTorch export builds from ``Shape`` values cannot be
    matched to its input; ORT's ``SymbolicShapeInference`` follows Shape/Gather/Concat and
    names them ``batch``/``sequence`` on both sides. None where it cannot run.
    """
    import logging

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = ir.serde.serialize_model(model)
        del proto.graph.value_info[:]
        for k, v in enumerate([*proto.graph.input, *proto.graph.output]):
            for j, d in enumerate(v.type.tensor_type.shape.dim):
                if d.HasField("dim_value") and d.dim_value < 0:  # Paddle's -1: a symbol
                    d.dim_param = f"graphopt_unknown_{k}_{j}"  # (ORT would multiply by -1)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            with _in_temp_dir():
                out = SymbolicShapeInference.infer_shapes(
                    proto, auto_merge=True, guess_output_rank=True
                )
        finally:
            logging.getLogger().setLevel(level)
    except Exception:  # an unsupported op, a model past 2 GB, ...: fall back to onnx_ir's
        return None
    if out is None:  # it returns None for opsets it does not know (below 7)
        return None
    shapes: dict[str, list[int | str | None]] = {}
    for v in [*out.graph.value_info, *out.graph.input, *out.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim
            ]
    return shapes
