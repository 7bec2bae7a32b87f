"""Which QDQ groups ONNX Runtime turned into integer kernels: read its optimized graph back.

QDQ is only a promise: a ``DequantizeLinear -> Conv -> QuantizeLinear`` group runs as an integer
``QLinearConv`` only if the execution provider's selectors accept it (types, zero points,
shapes, the instruction set, who else reads the tensors). Otherwise the model pays for the
Q/DQ nodes *and* runs the float kernel. So after inserting Q/DQ we build a session the way it
will be deployed, save ONNX Runtime's optimized graph (``optimized_model_filepath``) and look
up every quantized node by name: ORT's QDQ actions give the fused kernel the target node's
name.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from graphopt import runtime
from graphopt.core.ops import QDQ, SCALE_PRESERVING
from graphopt.ir import graph_protos

#: kernels that mean "this group runs in integer arithmetic"
INTEGER_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "MatMulIntegerToFloat",
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearSoftmax",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearWhere",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
    }
)
_QDQ = QDQ
_TOKEN = re.compile(r"_token_\d+$")
_FUSION_SUFFIX = re.compile(r"/\w*Fusion$")


@dataclasses.dataclass
class FusionReport:
    """Per quantized node: the kernel ORT runs it with, and whether that is integer."""

    kernels: dict[str, str]  # node name -> op type in ORT's optimized graph ("" = folded away)
    fused: list[str]
    unfused: list[str]
    ops: dict[str, int]  # op counts of the optimized graph

    def summary(self) -> dict[str, object]:
        return {
            "fused": len(self.fused),
            "unfused": len(self.unfused),
            "unfused_nodes": {n: self.kernels[n] or "?" for n in self.unfused},
            "integer_kernels": {k: v for k, v in sorted(self.ops.items()) if k in INTEGER_KERNELS},
            "remaining_qdq": self.ops.get("QuantizeLinear", 0)
            + self.ops.get("DequantizeLinear", 0),
        }


def optimized_graph(model: ir.Model, ep: str = "cpu") -> onnx.ModelProto:
    """ONNX Runtime's optimized form of ``model`` (all graph optimizations, as deployed)."""
    rt = runtime.ort()
    with tempfile.TemporaryDirectory(prefix="graphopt-fusion-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = runtime.session_options(optimize=True)
        so.optimized_model_filepath = str(out)
        # External initializers of the optimized copy go beside it, not into the proto.
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.data"
        )
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        snap = runtime.Snapshot.of(model)
        try:
            rt.InferenceSession(snap.source, sess_options=so, providers=runtime.providers_for(ep))
        finally:
            snap.close()
        return onnx.load(str(out), load_external_data=False)


def _base_name(name: str) -> str:
    """The node name before ORT's rewrites: layout transformers append ``_token_<k>``,
    level-1 fusions prepend ``fused `` or append ``/<Something>Fusion``."""
    name = name.removeprefix("fused ")
    name = _FUSION_SUFFIX.sub("", name)
    while _TOKEN.search(name):
        name = _TOKEN.sub("", name)
    return name


def check_fusion(model: ir.Model, nodes: dict[str, str], ep: str = "cpu") -> FusionReport:
    """Classify the quantized nodes of ``model`` (name -> op type) as fused or not on ``ep``."""
    ops_of = nodes
    proto = optimized_graph(model, ep)
    # If/Loop/Scan bodies too: ORT optimizes them in place (names are unique across scopes)
    every = [n for g in graph_protos(proto.graph) for n in g.node]
    by_name: dict[str, onnx.NodeProto] = {}
    for n in every:
        by_name.setdefault(_base_name(n.name), n)
    for n in every:  # exact names win over renamed ones
        by_name[n.name] = n
    producers = {o: n for n in every for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in every:
        for i in n.input:
            consumers[i].append(n)
    kernels, fused, unfused = {}, [], []
    for name in nodes:
        node = by_name.get(name)
        kernels[name] = node.op_type if node is not None else ""
        if node is None:
            # Integer kernels keep their node's name, so a compute node that is gone was
            # rewritten into a float kernel under another name (NCHWc convolutions are named
            # after their output); data movement that is gone was simply folded away.
            (fused if ops_of.get(name) in _INTEGER_SAFE else unfused).append(name)
            continue
        if node.op_type in INTEGER_KERNELS:
            fused.append(name)
            continue
        # Data movement ops (Reshape, MaxPool, ...) are "fused" when the DQ/Q around them
        # were dropped, so they run on the integer tensor directly.
        reads_dq = any(
            (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear"
            for i in node.input[:1]
        )
        feeds_q = any(c.op_type == "QuantizeLinear" for o in node.output for c in consumers[o])
        if node.op_type in _INTEGER_SAFE and not reads_dq and not feeds_q:
            fused.append(name)
        else:
            unfused.append(name)
    ops = collections.Counter(n.op_type for n in every)
    return FusionReport(kernels=kernels, fused=fused, unfused=unfused, ops=dict(ops))


_INTEGER_SAFE = SCALE_PRESERVING | {"NhwcMaxPool", "Split"}
