"""Inputs a model runs with, found when the user gave no DATA.

Verification needs inputs, and a model from another exporter rarely says what sizes it takes:
a detector exported as ``images: float[batch, 3, height, width]`` fails on a 1x1 image, an
operator test's ``axis`` input fails on a random axis. So, in order:

1. the user's DATA (``--data``);
2. ``test_data_set_*`` folders beside the model (the ONNX model zoo's and node suite's way of
   shipping inputs);
3. seeded random inputs at sizes the model runs with. Fixed dims stay; ``--dim`` sizes are
   used as given; sizes the exporter left in the model's metadata (``imgsz``, ``image_size``)
   come next; else the smallest step of a ladder that runs: batch dims 1, image dims
   (height/width of an NCHW or NHWC input) from 32 up, other dims (sequence, time) from 8 up
   and then the small sizes 1, 2, 4; when two or three such dims never run together, the
   ladder is climbed again with some of them held at 1 (an unnamed batch dim off axis 0, as
   in a recurrent state ``[2, 0, 128]`` beside ``input [0, 0]``). A step "runs" when ONNX
   Runtime (CPU, no graph optimizations, as the reference run) returns outputs for it.
   Integer inputs are drawn from {0, 1}, or below the size of the axis they index where the
   graph says (``edge_index`` read by Gather/ScatterElements over ``num_nodes``); when that
   fails they are tried as zeros (axes, indices and counts that must be valid). Every feed
   returned has run, not only the first.

When nothing runs, the error names the inputs and dims it varied, what it tried, ONNX
Runtime's message, and the flags that fix it (``--dim NAME=N``, ``--data``); "fix the model"
is said only of a model ONNX Runtime cannot load at all.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import runtime
from graphopt.errors import DataError, GraphoptError, RuntimeFailure
from graphopt.inputs import data as gdata
from graphopt.ir import attr_value

BATCH, SPATIAL, OTHER = "batch", "spatial", "other"
#: sizes tried for image dims, smallest first (detectors downsample by 32)
SPATIAL_LADDER = (32, 64, 96, 128, 160, 224, 256, 320, 416, 512, 640, 1024)
#: sizes tried for other dynamic dims: sequences and time first, then the degenerate ones
OTHER_LADDER = (8, 16, 32, 64, 128, 256, 512, 1024, 1, 2, 4)
#: at most this many free "other" dims are also tried with some of them pinned to 1
MAX_PINNED_SEARCH = 3
#: metadata keys exporters use for the input image size (ultralytics writes ``imgsz``)
SIZE_KEYS = ("imgsz", "img_size", "image_size", "input_size", "imagesize", "input_shape")


@dataclasses.dataclass
class Chosen:
    """Verification inputs and the dim sizes they use."""

    #: the feeds; their ``source`` says where they came from and why these sizes
    samples: gdata.Samples
    #: size of every dynamic dim the inputs use, by :func:`graphopt.inputs.data.dim_key`
    dims: dict[str, int]


def roles(specs: list[gdata.InputSpec]) -> dict[str, str]:
    """Role of every dynamic dim, by its key: batch, spatial (image height/width) or other."""
    out: dict[str, str] = {}
    for spec in specs:
        if spec.dims is None:
            continue
        rank = len(spec.dims)
        image_axes = _image_axes(spec)
        for axis, d in enumerate(spec.dims):
            if isinstance(d, int):
                continue
            key = gdata.dim_key(spec, axis)
            if axis == 0 and rank >= 2:
                role = BATCH
            elif axis in image_axes:
                role = SPATIAL
            else:
                role = OTHER
            # a name shared by several inputs keeps its first role, unless another input
            # shows it is an image dim (a mask over an image takes the image's size)
            if key not in out or role == SPATIAL:
                out[key] = role
    return out


def _image_axes(spec: gdata.InputSpec) -> tuple[int, ...]:
    """Height and width axes of a float image input (NCHW, or NHWC with few channels)."""
    dims = spec.dims
    if dims is None or len(dims) != 4 or not np.issubdtype(spec.dtype, np.floating):
        return ()
    if isinstance(dims[3], int) and dims[3] in (1, 3, 4) and not isinstance(dims[1], int):
        return (1, 2)
    return (2, 3)


def metadata_sizes(model: ir.Model) -> tuple[int, int] | None:
    """(height, width) an exporter left in the metadata (``imgsz: [640, 640]``), if any."""
    for key, value in model.metadata_props.items():
        if key.lower() not in SIZE_KEYS:
            continue
        sizes = [int(x) for x in re.findall(r"\d+", value)]
        sizes = [s for s in sizes if s > 4] or sizes  # [1, 3, 640, 640] -> the image dims
        if len(sizes) == 1:
            return sizes[0], sizes[0]
        if len(sizes) >= 2:
            return sizes[-2], sizes[-1]
    return None


def _test_data_beside(model: ir.Model, path: Path | None) -> tuple[gdata.Samples | None, str]:
    if path is None:
        return None, ""
    folder = Path(path).parent
    if not any(p.is_dir() for p in folder.glob("test_data_set_*")):
        return None, ""
    try:
        return gdata.from_test_data_dir(model, folder), ""
    except DataError as exc:
        return None, f"the test_data_set_* folders beside the model do not fit it ({exc.message})"


def choose(
    model: ir.Model,
    *,
    model_path: str | Path | None = None,
    dims: Mapping[str, int] | None = None,
    count: int = 4,
    seed: int = 0,
) -> Chosen:
    """Verification inputs without DATA: test data beside the model, else random inputs at
    sizes the model runs with (see the module doc). Raises a DataError naming the inputs,
    dims and flags when no size runs."""
    given = dict(dims or {})
    found, note = _test_data_beside(model, Path(model_path) if model_path else None)
    if found is not None:
        samples = found.head(count) if count else found
        samples.source = f"test_data_set_* beside the model ({samples.source})"
        return Chosen(samples, {})
    specs = gdata.input_specs(model)
    for spec in specs:
        gdata.resolve_shape(spec, {})  # an input without a shape: DataError naming it
    dim_roles = roles(specs)
    free = {k: r for k, r in dim_roles.items() if k not in given}
    if "*" in given:  # --dim '*=N' sizes every dynamic dim
        free = {}
    has_ints = any(np.issubdtype(s.dtype, np.integer) for s in specs)
    bounds = index_bounds(model)
    tried: list[str] = []
    last_error = ""
    sess = _session(model)
    for sizes, label in _candidates(model, free):
        chosen = {**sizes, **given}
        for zeros in (False, True) if has_ints else (False,):
            samples = _samples(specs, chosen, count, seed, zeros, bounds)
            try:  # the first feed alone decides a failing size; the rest must run too
                for feed in samples.feeds:
                    runtime.run_one(sess, None, feed)
            except Exception as exc:  # onnxruntime raises its own types
                last_error = runtime._first_line(exc)
                tried.append(label + (" (integer inputs zero)" if zeros else ""))
                continue
            why = [why_label] if (why_label := _why(label, free)) else []
            if zeros:
                why.append("integer inputs zero")
            elif bounds:
                why.append(f"{', '.join(sorted(bounds))} below the size of the axis they index")
            if note:
                why.append(note)
            if why:
                samples.source += f": {'; '.join(why)}"
            return Chosen(samples, chosen)
    raise _no_inputs_error(specs, set(free), given, tried, last_error, note)


def _session(model: ir.Model) -> Any:
    try:
        return runtime.make_session(model, ep="cpu", optimize=False)
    except RuntimeFailure as exc:
        raise RuntimeFailure(
            f"the input model does not load on ONNX Runtime CPU: {exc.message}",
            hint="the model itself is invalid for ONNX Runtime: check it with "
            "onnx.checker.check_model and re-export it, or use --no-verify",
        ) from exc


def _candidates(model: ir.Model, free: dict[str, str]) -> list[tuple[dict[str, int], str]]:
    """Size assignments to try, in order, each with a label for messages."""
    batch = {k: 1 for k, r in free.items() if r == BATCH}
    spatial = [k for k, r in free.items() if r == SPATIAL]
    other = [k for k, r in free.items() if r == OTHER]
    if not spatial and not other:
        return [(batch, _label(batch))]
    out = []
    meta = metadata_sizes(model)
    if meta is not None and spatial:
        sizes = {**batch, **_spatial_sizes(spatial, meta)}
        sizes.update({k: OTHER_LADDER[0] for k in other})
        out.append((sizes, _label(sizes) + " (from the model's metadata)"))
    pinned_sets: list[tuple[str, ...]] = [()]
    if 2 <= len(other) <= MAX_PINNED_SEARCH:
        # an unnamed dim off axis 0 may be a batch (a recurrent state [2, batch, 128] beside
        # input [batch, time]): with every such dim climbing together, batch and time never
        # differ, so each proper subset also gets pinned to the batch size 1
        pinned_sets += [c for r in range(1, len(other)) for c in itertools.combinations(other, r)]
    for pinned in pinned_sets:
        climbing = [k for k in other if k not in pinned]
        for i in range(
            max(len(SPATIAL_LADDER) if spatial else 0, len(OTHER_LADDER) if climbing else 0)
        ):
            s = SPATIAL_LADDER[min(i, len(SPATIAL_LADDER) - 1)]
            o = OTHER_LADDER[min(i, len(OTHER_LADDER) - 1)]
            sizes = {**batch, **{k: s for k in spatial}, **{k: o for k in climbing}}
            sizes.update({k: 1 for k in pinned})
            if all(sizes != prev for prev, _ in out):
                out.append((sizes, _label(sizes)))
    return out


def _why(label: str, free: Mapping[str, str]) -> str:
    if "(from the model's metadata)" in label:
        return "image size from the model's metadata"
    if any(r != BATCH for r in free.values()):
        return "the smallest ladder sizes the model runs with"
    return ""


def _spatial_sizes(keys: list[str], hw: tuple[int, int]) -> dict[str, int]:
    """Height to the first image dim of each input, width to the second."""
    out: dict[str, int] = {}
    for i, key in enumerate(keys):
        out[key] = hw[0] if i % 2 == 0 else hw[1]
    return out


def _label(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


#: (op, input) pairs that read an integer tensor as indices into input 0 along ``axis``
_INDEX_READS = {
    ("Gather", 1),
    ("GatherElements", 1),
    ("ScatterElements", 1),
    ("GatherND", 1),
    ("ScatterND", 1),
}
#: (op, input) pairs whose output holds the same integer values (followed to an index read)
_SAME_VALUES = {
    ("Cast", 0),
    ("Identity", 0),
    ("Squeeze", 0),
    ("Unsqueeze", 0),
    ("Reshape", 0),
    ("Flatten", 0),
    ("Transpose", 0),
    ("Split", 0),
    ("Slice", 0),
    ("Expand", 0),
    ("Gather", 0),  # edge_index[0]: a row of the indices is indices too
    ("Concat", -1),  # any input
}


def _indexed_size(node: ir.Node, inferred: Mapping[str, ir.Shape]) -> int | str | None:
    """The size of the axis ``node`` indexes (a fixed size or a symbolic dim's name)."""

    def shape_of(v: ir.Value | None) -> ir.Shape | None:
        return None if v is None else (v.shape or inferred.get(v.name or ""))

    data = node.inputs[0]
    shape = shape_of(data)
    if shape is None and data is not None and data.producer() is not None:
        made = data.producer()  # zeros_like(h): ConstantOfShape(Shape(h))
        src = made.inputs[0].producer() if made.op_type == "ConstantOfShape" else None
        if src is not None and src.op_type == "Shape" and "start" not in src.attributes:
            shape = shape_of(src.inputs[0])
    if shape is None:
        return None
    axis = 0 if node.op_type.endswith("ND") else int(attr_value(node, "axis", 0))  # type: ignore[arg-type]
    if not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    if isinstance(d, int):
        return d
    return d.value if isinstance(d, ir.SymbolicDim) and d.value else None


def index_bounds(model: ir.Model) -> dict[str, list[int | str]]:
    """Integer inputs whose values are indices, with the size of each axis they index
    (followed through Cast, Reshape, Concat, row Gathers, ...), so random indices are valid.

    Where the indexed tensors carry no shapes, ONNX shape inference runs on a copy first.
    """
    bounds, unknown = _index_bounds(model, {})
    if unknown:
        try:
            proto = onnx.shape_inference.infer_shapes(ir.to_proto(model), data_prop=True)
        except Exception:  # inference is a help here, never a requirement
            return bounds
        inferred = {}
        for info in proto.graph.value_info:  # only the shapes are read back
            shape = ir.serde.deserialize_value_info_proto(info, None).shape
            if shape is not None:
                inferred[info.name] = shape
        bounds, _ = _index_bounds(model, inferred)
    return bounds


def _index_bounds(
    model: ir.Model, inferred: Mapping[str, ir.Shape]
) -> tuple[dict[str, list[int | str]], bool]:
    """:func:`index_bounds` on the shapes ``model`` has, and whether some were unknown."""
    out: dict[str, list[int | str]] = {}
    unknown = False
    for inp in model.graph.inputs:
        if inp.dtype is None or not np.issubdtype(inp.dtype.numpy(), np.integer):
            continue
        seen, stack, sizes = set(), [inp], []
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            for node, i in v.uses():
                if (node.op_type, i) in _INDEX_READS:
                    size = _indexed_size(node, inferred)
                    if size is not None:
                        sizes.append(size)
                    unknown |= size is None
                if (node.op_type, i) in _SAME_VALUES or (node.op_type, -1) in _SAME_VALUES:
                    stack.extend(node.outputs)
        if sizes:
            out[inp.name or ""] = sizes
    return out, unknown


def _bound(sizes: list[int | str], dims: Mapping[str, int]) -> int:
    """The smallest indexed size, symbolic names read from ``dims`` (else 1)."""
    return max(1, min(s if isinstance(s, int) else dims.get(s, dims.get("*", 1)) for s in sizes))


def _samples(
    specs: list[gdata.InputSpec],
    dims: Mapping[str, int],
    count: int,
    seed: int,
    zeros: bool,
    bounds: Mapping[str, list[int | str]] | None = None,
) -> gdata.Samples:
    rng = np.random.default_rng(seed)
    bounds = bounds or {}
    feeds = []
    for _ in range(max(1, count)):
        feed: gdata.Feed = {}
        for spec in specs:
            shape = gdata.resolve_shape(spec, dims)
            if zeros and np.issubdtype(spec.dtype, np.integer):
                feed[spec.name] = np.zeros(shape, spec.dtype)
            elif spec.name in bounds:
                high = _bound(bounds[spec.name], dims)
                feed[spec.name] = rng.integers(0, high, size=shape).astype(spec.dtype)
            else:
                feed[spec.name] = gdata.random_array(rng, spec.dtype, shape)
        feeds.append(feed)
    desc = _label(dims)
    return gdata.Samples(feeds, f"random(seed={seed}{', ' + desc if desc else ''})")


def _no_inputs_error(
    specs: list[gdata.InputSpec],
    free: set[str],
    given: Mapping[str, int],
    tried: list[str],
    last_error: str,
    note: str,
) -> GraphoptError:
    if free:
        dims_text = ", ".join(sorted(free))
        shown = tried[:3] + (["..."] if len(tried) > 4 else []) + tried[-1:] if tried else []
        message = (
            f"the model does not run on any input size graphopt tried for its dynamic dims "
            f"({dims_text}; tried {'; '.join(shown)}): {last_error}"
        )
        example = " ".join(f"--dim {k}=N" for k in sorted(free)[:3])
        hint = f"give the sizes it runs with ({example}) or real inputs with --data DATA"
    else:
        ints = [s.name for s in specs if np.issubdtype(s.dtype, np.integer)]
        message = f"the model does not run on graphopt's random inputs: {last_error}"
        if given:
            message += f" (with {_label(given)})"
        hint = "give real inputs with --data DATA (or test_data_set_* folders beside the model)"
        if ints:
            hint += f"; integer inputs ({', '.join(ints)}) may be axes, shapes or indices"
    inputs = "; ".join(s.describe() for s in specs)
    if note:
        hint += f"; {note}"
    return DataError(f"{message}. Inputs: {inputs}", hint=hint)
