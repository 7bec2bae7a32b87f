"""fold-batchnorm: per-channel affine ops after a linear layer go into its weights and bias.

``BatchNormalization`` (inference form), ``Mul`` by a per-channel constant, and ``Add``/``Sub``
of one, right after ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul`` with constant weights,
are folded: y = s * (W x + b) + t  becomes  (s W) x + (s b + t). One implementation covers
all four producers and all three affine forms (onnxscript's rules cover BatchNormalization
after Conv/ConvTranspose/Gemm only), so exported models that spell BatchNorm as Mul/Add and
MLPs with BatchNorm1d after MatMul fold too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.core.pass_base import GraphoptPass, Tolerance
from graphopt.core.registry import option, register_pass
from graphopt.ir import attr_value as _attr
from graphopt.ir import const_array as _const

_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class FoldBatchNormOptions:
    batchnorm: bool = option(True, "fold BatchNormalization nodes")
    mul_add: bool = option(True, "fold Mul/Add/Sub by per-channel constants")


@register_pass
class FoldBatchNormPass(GraphoptPass):
    name = "fold-batchnorm"
    Options = FoldBatchNormOptions
    tolerance = Tolerance.reassociation()
    summary = "fold BatchNormalization and per-channel Mul/Add into Conv/Gemm/MatMul"

    def run(self, model: ir.Model) -> bool:
        changed = False
        graph = model.graph
        progress = True
        while progress:  # a chain Conv->BN->Mul folds one consumer per round
            progress = False
            for node in list(graph):
                if (
                    node.graph is None
                    or node.op_type not in _PRODUCERS
                    or node.domain not in ("", "ai.onnx")
                ):
                    continue
                if self._fold(graph, node):
                    progress = changed = True
        return changed

    # ----------------------------------------------------------------- matching
    def _affine(
        self, producer: ir.Node, consumer: ir.Node, y: ir.Value
    ) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(scale, shift, kind) as arrays broadcastable against y, or None."""
        op = consumer.op_type
        if consumer.domain not in ("", "ai.onnx"):
            return None
        if op == "BatchNormalization" and self.options.batchnorm:
            if consumer.inputs[0] is not y or _attr(consumer, "training_mode", 0):
                return None
            if any(o.uses() or o.is_graph_output() for o in consumer.outputs[1:]):
                return None
            params = [_const(v) for v in consumer.inputs[1:5]]
            if any(p is None for p in params):
                return None
            gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
            eps = float(_attr(consumer, "epsilon", 1e-5))  # type: ignore[arg-type]
            scale = gamma / np.sqrt(var + eps)
            shift = beta - mean * scale
            return scale.reshape(-1), shift.reshape(-1), "BatchNormalization"  # over axis 1
        if not self.options.mul_add or op not in ("Mul", "Add", "Sub") or len(consumer.inputs) != 2:
            return None
        other_index = 1 if consumer.inputs[0] is y else 0
        if consumer.inputs[1 - other_index] is not y or consumer.inputs[other_index] is y:
            return None
        c = _const(consumer.inputs[other_index])
        if c is None or not np.issubdtype(c.dtype, np.floating):
            return None
        c = c.astype(np.float64)
        if op == "Mul":
            return c, np.zeros_like(c), "Mul"
        if op == "Add":
            return np.ones_like(c), c, "Add"
        if other_index == 1:  # y - c
            return np.ones_like(c), -c, "Sub"
        return None  # c - y flips the sign of W; rare, not worth a special case

    def _per_channel(
        self, arr: np.ndarray, rank: int, axis: int, channels: int
    ) -> np.ndarray | None:
        """Reduce a broadcastable constant to a vector over output channels, if it is one."""
        if arr.ndim > rank:
            return None
        full = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
        for i, d in enumerate(full.shape):
            if i != axis and d != 1:
                return None
        vec = full.reshape(-1)
        if vec.size == 1:
            return np.full(channels, vec[0])
        return vec if vec.size == channels else None

    @staticmethod
    def _rank(node: ir.Node, y: ir.Value, w: np.ndarray) -> int | None:
        """Rank of the producer's output, from its shape or else from the op's rules."""
        if y.shape is not None:
            return len(y.shape)
        if node.op_type in ("Conv", "ConvTranspose"):
            return w.ndim
        if node.op_type == "Gemm":
            return 2
        a = node.inputs[0]
        return None if a is None or a.shape is None else max(len(a.shape), 1)

    def _fold(self, graph: ir.Graph, node: ir.Node) -> bool:
        y = node.outputs[0]
        if y.is_graph_output() or len(y.uses()) != 1:
            return False
        consumer = next(iter(y.uses())).node
        if consumer.graph is not graph:
            return False
        affine = self._affine(node, consumer, y)
        if affine is None:
            return False
        scale_b, shift_b, kind = affine
        w = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None or not np.issubdtype(w.dtype, np.floating):
            return False
        op = node.op_type
        rank = self._rank(node, y, w)
        if rank is None:  # MatMul on activations of unknown rank: vectors only
            if kind == "BatchNormalization" or scale_b.ndim > 1 or shift_b.ndim > 1:
                return False
            rank = 1
        if op in ("Conv", "ConvTranspose"):
            axis = 1
            channels = w.shape[0] if op == "Conv" else w.shape[1] * int(_attr(node, "group", 1))  # type: ignore[arg-type]
        else:
            axis = rank - 1
            if op == "MatMul" and w.ndim != 2:
                return False
            channels = w.shape[0] if op == "Gemm" and _attr(node, "transB", 0) else w.shape[-1]
            if kind == "BatchNormalization" and rank != 2:
                return False
        if kind == "BatchNormalization":
            scale_b = scale_b.reshape(-1)
            shift_b = shift_b.reshape(-1)
            if scale_b.size != channels:
                return False
            scale, shift = scale_b, shift_b
        else:
            scale = self._per_channel(scale_b, rank, axis, channels)
            shift = self._per_channel(shift_b, rank, axis, channels)
            if scale is None or shift is None:
                return False
        # the folded result must keep y's broadcast shape: the constant may not add dims
        if kind != "BatchNormalization" and consumer.outputs[0].shape is not None:
            if len(consumer.outputs[0].shape) != rank:
                return False
        if op == "MatMul" and np.all(scale == 1):
            return False  # MatMul has no bias to absorb an Add into
        new_w = self._scale_weight(node, w, scale)
        bias = (
            _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        )
        if len(node.inputs) > 2 and node.inputs[2] is not None and bias is None:
            return False  # a bias computed at run time: leave it
        inputs: list[ir.Value | None] = [
            node.inputs[0],
            self._initializer(graph, node.inputs[1], new_w, "w"),
        ]
        attributes = dict(node.attributes)
        extra_add: np.ndarray | None = None
        if op in ("Conv", "ConvTranspose"):
            b = np.zeros(channels) if bias is None else bias.astype(np.float64)
            inputs.append(
                self._initializer(graph, node.inputs[1], (scale * b + shift).astype(w.dtype), "b")
            )
        elif op == "Gemm":
            beta = float(_attr(node, "beta", 1.0))  # type: ignore[arg-type]
            c = np.zeros(channels) if bias is None else beta * bias.astype(np.float64)
            new_c = scale * c + shift  # broadcasts over the last axis
            inputs.append(self._initializer(graph, node.inputs[1], new_c.astype(w.dtype), "b"))
            attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        elif np.any(shift != 0):
            extra_add = shift.astype(w.dtype)
        new_node = self.mark(
            ir.Node(
                node.domain,
                op,
                inputs,
                attributes=attributes.values(),
                name=node.name,
                version=node.version,
            )
        )
        new_node.outputs[0].shape = consumer.outputs[0].shape
        new_node.outputs[0].type = consumer.outputs[0].type
        new_nodes = [new_node]
        result = new_node.outputs[0]
        if extra_add is not None:
            add = self.mark(
                ir.Node(
                    "",
                    "Add",
                    [result, self._initializer(graph, node.inputs[1], extra_add, "b")],
                    name=(node.name or "matmul") + "_bias",
                )
            )
            add.outputs[0].shape = consumer.outputs[0].shape
            add.outputs[0].type = consumer.outputs[0].type
            new_nodes.append(add)
            result = add.outputs[0]
        ir.convenience.replace_nodes_and_values(
            graph, consumer, [node, consumer], new_nodes, [consumer.outputs[0]], [result]
        )
        self.count(f"folded:{kind}")
        return True

    def _scale_weight(self, node: ir.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
        w64 = w.astype(np.float64)
        op = node.op_type
        if op == "Conv":
            out = w64 * scale.reshape(-1, *([1] * (w.ndim - 1)))
        elif op == "ConvTranspose":
            group = int(_attr(node, "group", 1))  # type: ignore[arg-type]
            cin, cout_g = w.shape[0], w.shape[1]
            grouped = w64.reshape(group, cin // group, cout_g, *w.shape[2:])
            s = scale.reshape(group, 1, cout_g, *([1] * (w.ndim - 2)))
            out = (grouped * s).reshape(w.shape)
        elif op == "Gemm" and _attr(node, "transB", 0):
            out = w64 * scale.reshape(-1, 1)
        else:  # Gemm without transB, MatMul: W is [K, N]
            out = w64 * scale.reshape(1, -1)
        # Gemm's alpha multiplies A·B, so scaling B's columns scales alpha·A·B the same way.
        return out.astype(w.dtype)

    def _initializer(
        self, graph: ir.Graph, like: ir.Value | None, array: np.ndarray, suffix: str
    ) -> ir.Value:
        base = (like.name if like is not None and like.name else "w") + f"_folded_{suffix}"
        name, k = base, 1
        while name in graph.initializers:
            k += 1
            name = f"{base}{k}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape = ir.Shape(array.shape)
        value.dtype = ir.DataType.from_numpy(array.dtype)
        graph.register_initializer(value)
        return value
