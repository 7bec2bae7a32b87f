"""Shared helpers for pass tests: tiny models from onnx.helper pieces, ORT runs, comparisons.

Models are built as ONNX protos (opset 17, IR version 8), optionally run through ONNX shape
inference so intermediate values carry shapes (passes such as fold-batchnorm need them), and
converted to onnx_ir. References come from ONNX Runtime's CPU provider with graph
optimizations off, the same reference the runner's verify-each uses.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from graphopt import ir as gir
from graphopt import runtime
from graphopt.accuracy.tolerance import compare_arrays
from graphopt.core.pass_base import (
    PROVENANCE_KEY,
    GraphoptPass,
    PassContext,
    Tolerance,
)
from graphopt.core.registry import get_pass
from graphopt.inputs import data
from graphopt.inputs import data as data_mod

OPSET = 17
IR_VERSION = 8
FLOAT = onnx.TensorProto.FLOAT
INT64 = onnx.TensorProto.INT64

Feed = dict[str, np.ndarray]


# ------------------------------------------------------------------------ building models
def vi(name: str, shape: Sequence[int | str | None] | None, elem_type: int = FLOAT) -> Any:
    """A ValueInfoProto (graph input, output or intermediate value)."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def init(name: str, array: np.ndarray | Sequence[Any]) -> onnx.TensorProto:
    """An initializer TensorProto from an array."""
    return numpy_helper.from_array(np.asarray(array), name)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> Any:
    """A NodeProto named after its first output (so tests can find nodes by name)."""
    return helper.make_node(
        op_type, list(inputs), list(outputs), name=f"{outputs[0]}_node", **attrs
    )


def constant(output: str, array: np.ndarray | Sequence[Any]) -> Any:
    """A Constant node producing ``array``."""
    return helper.make_node(
        "Constant",
        [],
        [output],
        name=f"{output}_node",
        value=numpy_helper.from_array(np.asarray(array), f"{output}_value"),
    )


def _value_info(v: Any) -> Any:
    """A ValueInfoProto as given, or built from ``(name, elem_type, dims)``."""
    if isinstance(v, tuple):
        name, elem_type, dims = v
        return vi(name, None if dims is None else list(dims), elem_type)
    return v


def make_proto(
    nodes: Iterable[Any],
    inputs: Iterable[Any],
    outputs: Iterable[Any],
    initializers: Iterable[onnx.TensorProto] = (),
    value_info: Iterable[Any] = (),
    *,
    infer_shapes: bool = True,
    name: str = "test",
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    """An opset-17, IR-8 ModelProto; ``infer_shapes`` fills intermediate value shapes.

    Inputs and outputs are ValueInfoProtos (:func:`vi`) or ``(name, TensorProto.<TYPE>,
    dims)`` tuples. The one model builder of the tests (conftest's ``build_proto`` fixture
    is this, without shape inference)."""
    graph = helper.make_graph(
        list(nodes),
        name,
        [_value_info(v) for v in inputs],
        [_value_info(v) for v in outputs],
        initializer=list(initializers),
        value_info=list(value_info),
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version,
        producer_name="graphopt-tests",
    )
    if infer_shapes:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(proto)  # models left without shapes may not pass the checker
    return proto


def make_model(
    nodes: Iterable[Any],
    inputs: Iterable[Any],
    outputs: Iterable[Any],
    initializers: Iterable[onnx.TensorProto] = (),
    value_info: Iterable[Any] = (),
    *,
    infer_shapes: bool = True,
) -> ir.Model:
    """Like :func:`make_proto`, converted to an onnx_ir model."""
    proto = make_proto(nodes, inputs, outputs, initializers, value_info, infer_shapes=infer_shapes)
    return ir.serde.deserialize_model(proto)


def _shaped_models() -> Any:
    """benchmarks/shaped_models.py (the shaped-model builders the benchmarks use)."""
    import sys
    from pathlib import Path

    path = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)
    import shaped_models

    return shaped_models


def tiny_bert(layers: int = 2) -> ir.Model:
    """A cleaned BERT-style encoder (hidden 64, 4 heads of 16, FFN 128, sequence 16), built
    by the benchmarks' shaped-model builder: post-LayerNorm, erf GELU, PyTorch's op pattern."""
    from graphopt.core.runner import run_pipeline

    proto = _shaped_models().build_bert_encoder(layers=layers, hidden=64, heads=4, ffn=128, seq=16)
    model = ir.serde.deserialize_model(proto)
    run_pipeline(model, "cleanup", verify_each=False)
    return model


def tiny_bert_feeds(count: int, seed: int) -> list[Feed]:
    """Batch-1 token/mask feeds for :func:`tiny_bert` (random lengths, padding masked)."""
    arrays = _shaped_models().bert_inputs(count, seed=seed, seq=16)
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]


def copy_model(model: ir.Model) -> ir.Model:
    """An independent deep copy (through a proto round trip)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def to_bytes(model: ir.Model) -> bytes:
    """Deterministic serialized bytes, for "the graph did not change" assertions."""
    return ir.serde.serialize_model(model).SerializeToString(deterministic=True)


# ------------------------------------------------------------------------ running models
def random_feeds(
    model: ir.Model, *, count: int = 2, seed: int = 0, dims: Mapping[str, int] | None = None
) -> list[Feed]:
    """Seeded standard-normal feeds for the model's inputs (symbolic dims default to 2)."""
    return data.random_feeds(model, count=count, seed=seed, dims=dims or {"*": 2}).feeds


def run_model(model: ir.Model, feeds: Sequence[Feed]) -> tuple[list[str], list[list[np.ndarray]]]:
    """Output names and per-feed outputs on ORT CPU with graph optimizations disabled."""
    sess = runtime.make_session(model, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return names, runtime.run_feeds(sess, feeds)


def assert_same_outputs(
    before: ir.Model,
    after: ir.Model,
    tolerance: Tolerance,
    feeds: Sequence[Feed] | None = None,
) -> None:
    """``after`` computes ``before``'s outputs (same names, dtypes, shapes) within tolerance."""
    if feeds is None:
        feeds = random_feeds(before)
    names_b, outs_b = run_model(before, feeds)
    names_a, outs_a = run_model(after, feeds)
    assert names_a == names_b, f"outputs changed: {names_b} -> {names_a}"
    for k, (want_all, got_all) in enumerate(zip(outs_b, outs_a, strict=True)):
        for name, want, got in zip(names_b, want_all, got_all, strict=True):
            ok, metrics = tolerance.check(got, want)
            assert ok, (
                f"feed {k}, output {name!r}: {metrics} exceeds {tolerance} "
                f"(shapes {got.shape} vs {want.shape}, dtypes {got.dtype} vs {want.dtype})"
            )


def output_cosines(before: ir.Model, after: ir.Model, feeds: Sequence[Feed]) -> list[float]:
    """Cosine of every output of ``after`` to ``before``'s, per feed (lossy passes' checks)."""
    _, want = run_model(before, feeds)
    _, got = run_model(after, feeds)
    return [
        compare_arrays(g, w)["cosine"]
        for gs, ws in zip(got, want, strict=True)
        for g, w in zip(gs, ws, strict=True)
    ]


# ------------------------------------------------------------------------ inspecting models
def op_counts(model: ir.Model) -> collections.Counter[str]:
    """Node count per op type (subgraphs included)."""
    return collections.Counter(n.op_type for n in gir.iter_nodes(model))


def op_sequence(model: ir.Model) -> list[str]:
    """Op types of the main graph in node order."""
    return [n.op_type for n in model.graph]


def nodes_of(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == op_type]


def created_by(model: ir.Model, pass_name: str) -> list[ir.Node]:
    """Nodes whose provenance metadata names ``pass_name``."""
    return [n for n in gir.iter_nodes(model) if n.metadata_props.get(PROVENANCE_KEY) == pass_name]


def used_initializers(model: ir.Model) -> set[str]:
    """Names of initializers that some node or graph output reads."""
    names = set(model.graph.initializers)
    used = {v.name for n in gir.iter_nodes(model) for v in n.inputs if v is not None}
    used |= {v.name for v in model.graph.outputs}
    return names & used


def initializer_array(model: ir.Model, name: str) -> np.ndarray:
    value = model.graph.initializers[name]
    assert value.const_value is not None
    return value.const_value.numpy()


# ------------------------------------------------------------------------ running passes
def make_context(
    model: ir.Model | None = None,
    *,
    context: PassContext | None = None,
    data: Any = None,
    reference: ir.Model | None = None,
    **fields: Any,
) -> PassContext:
    """The run's context: ``context`` as given, or a new one from ``fields`` (``target``,
    ``budget``, ``dims``...). ``data`` (``Samples``, a list of feeds, a dict of arrays) is
    what passes that need DATA calibrate on; ``reference`` is the model before the lossy
    passes (what ``reconstruct`` fits to)."""
    ctx = context if context is not None else PassContext(**fields)
    if data is not None:  # checked against the model's inputs like any DATA
        ctx.data = data_mod.as_samples(model, data) if model is not None else data
    if reference is not None:
        ctx.reference = runtime.Snapshot.of(reference)
    return ctx


def make_pass(
    pass_name: str, *, context: PassContext | None = None, **options: Any
) -> GraphoptPass:
    cls = get_pass(pass_name)
    return cls(cls.Options(**options), context)


def run_pass(
    model: ir.Model,
    pass_name: str,
    *,
    context: PassContext | None = None,
    data: Any = None,
    **options: Any,
) -> tuple[ir.passes.PassResult, GraphoptPass]:
    """Run one pass in place with ``context`` (and ``data`` as its DATA); returns the result
    and the pass object (``stats``, ``details``, ``findings``)."""
    ctx = make_context(model, context=context, data=data)
    p = make_pass(pass_name, context=ctx, **options)
    with warnings.catch_warnings():  # numpy warns about a lossy tolerance's infinite atol
        warnings.simplefilter("ignore", RuntimeWarning)
        result = p(model)
    assert result.model is model, "graphopt passes are in place"
    return result, p


def assert_idempotent(
    model: ir.Model,
    pass_name: str,
    *,
    context: PassContext | None = None,
    data: Any = None,
    **options: Any,
) -> None:
    """A second run changes nothing: modified=False, no stats, identical graph."""
    before = to_bytes(model)
    fp = gir.fingerprint(model)
    result, p = run_pass(model, pass_name, context=context, data=data, **options)
    assert not result.modified, f"{pass_name} is not idempotent (stats {dict(p.stats)})"
    assert not p.stats, f"{pass_name} counted work on its second run: {dict(p.stats)}"
    assert gir.fingerprint(model) == fp
    assert to_bytes(model) == before


def assert_noop(model: ir.Model, pass_name: str, **options: Any) -> None:
    """The pass has nothing to do: modified=False and the graph is unchanged."""
    assert_idempotent(model, pass_name, **options)


def _passes_checker(model: ir.Model) -> bool:
    try:
        onnx.checker.check_model(ir.serde.serialize_model(model))
    except onnx.checker.ValidationError:
        return False
    return True


def apply_and_check(
    model: ir.Model,
    pass_name: str,
    feeds: Sequence[Feed] | None = None,
    *,
    context: PassContext | None = None,
    data: Any = None,
    **options: Any,
) -> tuple[ir.Model, GraphoptPass]:
    """Run the pass on ``model`` (in place) expecting a change; check numerics against ONNX
    Runtime within the pass's declared tolerance, validity and idempotence.

    ``context``/``data`` are the run's (see :func:`run_pass`); ``feeds`` are what the outputs
    are compared on (default: random inputs). Returns the untouched original (a copy taken
    before) and the pass object.
    """
    original = copy_model(model)
    if feeds is None:
        feeds = random_feeds(original)
    valid_before = _passes_checker(original)
    ctx = make_context(model, context=context, data=data)
    result, p = run_pass(model, pass_name, context=ctx, **options)
    assert result.modified, f"{pass_name} found nothing to do"
    if valid_before:  # a valid model stays valid
        onnx.checker.check_model(ir.serde.serialize_model(model))
    assert_same_outputs(original, model, type(p).tolerance, feeds)
    assert_idempotent(model, pass_name, context=ctx, **options)
    return original, p
