"""Writing ``reconstruct``'s refit weights back into the model, so that they can be taken back.

The pass keeps a refit only if it moved the model's outputs closer to the original's; every
change :class:`Edits` makes (a constant's new value, a copy of a shared constant, a bias a
layer did not have, the metadata hash) comes with its undo, and :meth:`Edits.revert` takes
them all back. One :class:`Edits` lives for one run of the pass.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from graphopt.passes.sparsify.reconstruct_layers import (
    RECONSTRUCT_KEY,
    Layer,
    as_rows,
    bias_of,
    dq_of,
    from_rows,
    weight_hash,
)

from graphopt.core.build import Namer, add_initializer
from graphopt.ir import attr_value, const_array


class Edits:
    """The changes one run of ``reconstruct`` made to ``graph``, each with its undo."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self._undo: list[Callable[[], None]] = []

    def revert(self) -> None:
        """Take back every change, newest first."""
        for undo in reversed(self._undo):
            undo()

    def write(self, lay: Layer, w_rows: np.ndarray, b: np.ndarray) -> None:
        """Store a layer's refit weight rows and bias (integer weights stay as they are)."""
        graph = self.graph
        namer = Namer(graph)
        node = lay.node
        if lay.method != "bias":  # quantized weights stay as they are
            w_val = node.inputs[1]
            assert w_val is not None and w_val.const_value is not None
            shape = tuple(w_val.const_value.shape)
            arr = from_rows(node, w_rows, shape)
            if lay.mask is not None:
                keep = from_rows(node, lay.mask.astype(np.float64), shape) != 0
                arr = np.where(keep, arr, np.float32(0))
            self._set_const(graph, namer, node, 1, arr)
            lay.w = as_rows(node, arr)
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
        lay.b = bias_of(node, lay.bias_add, lay.w.shape[0])  # as stored (rounded)
        old = node.metadata_props.get(RECONSTRUCT_KEY)
        node.metadata_props[RECONSTRUCT_KEY] = weight_hash(lay.w, lay.b)

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
        dq = dq_of(v) if v.const_value is None else None
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
