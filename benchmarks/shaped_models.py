"""Random-weight models with the shapes of well-known networks, for latency benchmarks.

* :func:`build_bert_encoder`: a BERT-base-shaped encoder (12 layers, hidden 768, 12 heads,
  FFN 3072, sequence 128) built directly with ``onnx.helper`` (post-LayerNorm, erf GELU, the
  op pattern PyTorch exports), with N(0, 0.02) weights. Batch axis dynamic. ~420 MB in fp32.
* :func:`export_resnet50`: a ResNet-50-shaped CNN (bottleneck blocks 3-4-6-3, 224x224 RGB,
  1000 classes) written in plain torch (no torchvision), Kaiming-initialised, BatchNorm in eval
  mode with running statistics gathered from random images (so they are not the trivial 0/1)
  and perturbed affine parameters, exported with ``torch.onnx`` (opset 17, TorchScript
  exporter, dynamic batch axis). ~100 MB in fp32.

Both are deterministic (fixed seeds). :func:`cached_model` builds each once under
``$GRAPHOPT_CACHE`` or ``~/.cache/graphopt/models`` (see :func:`zoo.cached`).
Only numpy and onnx are imported at module level; torch only inside the ResNet exporter.

    python benchmarks/shaped_models.py [resnet50] [bert-base]   # build and cache
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB = 30522
RESNET_NAME = "shaped-resnet50-r224"
BERT_NAME = "shaped-bert-base-s128"


# ------------------------------------------------------------------------------ BERT-base


def build_bert_encoder(
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    seq: int = 128,
    seed: int = 0,
) -> onnx.ModelProto:
    """A BERT-style encoder (post-LayerNorm, erf GELU) with N(0, 0.02) random weights.

    Inputs ``input_ids`` and ``attention_mask`` (int64 [batch, seq]); output the last hidden
    state (float32 [batch, seq, hidden]).
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    head_dim = hidden // heads

    def weight(name: str, *shape: int, std: float = 0.02) -> str:
        arr = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def layer_norm(x: str, prefix: str) -> str:
        gamma = const(f"{prefix}.gamma", np.ones(hidden))
        beta = const(f"{prefix}.beta", np.zeros(hidden))
        return node("LayerNormalization", [x, gamma, beta], f"{prefix}.out", axis=-1, epsilon=1e-12)

    def dense(x: str, prefix: str, n_in: int, n_out: int) -> str:
        mm = node("MatMul", [x, weight(f"{prefix}.w", n_in, n_out)], f"{prefix}.matmul")
        return node("Add", [mm, weight(f"{prefix}.b", n_out, std=0.01)], f"{prefix}.add")

    split_shape = const("shape.split", [0, -1, heads, head_dim], np.int64)
    merge_shape = const("shape.merge", [0, -1, hidden], np.int64)
    scale = const("attn.scale", math.sqrt(head_dim))
    one, half, sqrt2 = const("one", 1.0), const("half", 0.5), const("sqrt2", math.sqrt(2.0))

    # embeddings and the additive attention mask
    words = node("Gather", [weight("emb.word", VOCAB, hidden), "input_ids"], "emb.words")
    pos = node("Add", [words, weight("emb.pos", 1, seq, hidden)], "emb.sum")
    x = layer_norm(pos, "emb.ln")
    mask = node("Cast", ["attention_mask"], "mask.float", to=TensorProto.FLOAT)
    inv = node("Sub", [one, mask], "mask.inv")
    bias = node("Mul", [inv, const("mask.neg", -10000.0)], "mask.bias")
    bias = node("Unsqueeze", [bias, const("mask.axes", [1, 2], np.int64)], "mask.bias4d")

    for i in range(layers):
        p = f"l{i}"
        q = node("Reshape", [dense(x, f"{p}.q", hidden, hidden), split_shape], f"{p}.q.heads")
        q = node("Transpose", [q], f"{p}.q.t", perm=[0, 2, 1, 3])
        k = node("Reshape", [dense(x, f"{p}.k", hidden, hidden), split_shape], f"{p}.k.heads")
        k = node("Transpose", [k], f"{p}.k.t", perm=[0, 2, 3, 1])
        v = node("Reshape", [dense(x, f"{p}.v", hidden, hidden), split_shape], f"{p}.v.heads")
        v = node("Transpose", [v], f"{p}.v.t", perm=[0, 2, 1, 3])
        s = node("MatMul", [q, k], f"{p}.scores")
        s = node("Div", [s, scale], f"{p}.scaled")
        s = node("Add", [s, bias], f"{p}.masked")
        s = node("Softmax", [s], f"{p}.probs", axis=-1)
        c = node("MatMul", [s, v], f"{p}.context")
        c = node("Transpose", [c], f"{p}.context.t", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, merge_shape], f"{p}.context.merged")
        a = dense(c, f"{p}.attn_out", hidden, hidden)
        x = layer_norm(node("Add", [a, x], f"{p}.residual1"), f"{p}.ln1")
        h = dense(x, f"{p}.ffn1", hidden, ffn)
        g = node("Div", [h, sqrt2], f"{p}.gelu.div")
        g = node("Erf", [g], f"{p}.gelu.erf")
        g = node("Add", [g, one], f"{p}.gelu.add")
        g = node("Mul", [h, g], f"{p}.gelu.mul")
        g = node("Mul", [g, half], f"{p}.gelu.out")
        f = dense(g, f"{p}.ffn2", ffn, hidden)
        x = layer_norm(node("Add", [f, x], f"{p}.residual2"), f"{p}.ln2")

    graph = helper.make_graph(
        nodes,
        "bert_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq]),
        ],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", seq, hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def bert_inputs(samples: int, seq: int = 128, seed: int = 1) -> dict[str, np.ndarray]:
    """Random token ids; each sample keeps a random length (at least 16), the rest padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB, size=(samples, seq), dtype=np.int64)
    lengths = rng.integers(16, seq + 1, size=samples)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    ids[:, 0] = 101  # [CLS]
    return {"input_ids": ids, "attention_mask": mask}


def save_bert_encoder(path: str | Path, **kwargs: Any) -> Path:
    """Build :func:`build_bert_encoder` and write it to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(build_bert_encoder(**kwargs), str(tmp))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------ ResNet-50


def _resnet50_module(
    seed: int = 0,
    base: int = 64,
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
    size: int = 224,
    classes: int = 1000,
) -> Any:
    """A torchvision-compatible ResNet-50 (v1.5: stride on the 3x3) in plain torch, eval mode.

    ``base``, ``blocks``, ``size`` and ``classes`` shrink it for dry runs (the GPU suite's
    ``--dry-run``); the defaults are ResNet-50's."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * self.expansion
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down: nn.Module | None = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: Any) -> Any:
            idt = x if self.down is None else self.down(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + idt)

    class ResNet50(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(base),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            layers: list[nn.Module] = []
            cin = base
            stages = zip((base, base * 2, base * 4, base * 8), blocks, (1, 2, 2, 2))
            for width, count, stride in stages:
                for i in range(count):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * Bottleneck.expansion
            self.blocks = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x: Any) -> Any:
            x = self.pool(self.blocks(self.stem(x)))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(seed)
    model = ResNet50(classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
            m.momentum = None  # cumulative average over the batches below
    # Gather real running statistics from a few random-image batches (train mode), so the
    # folded BatchNorm scales and shifts differ per channel as in a trained network.
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=gen))
    return model.eval()


def export_resnet50(path: str | Path, seed: int = 0, **shape: Any) -> Path:
    """Export the ResNet-50-shaped CNN: ``image`` [batch, 3, 224, 224] -> ``logits``
    (``shape``: :func:`_resnet50_module`'s ``base``, ``blocks``, ``size``, ``classes``)."""
    import torch
    import zoo

    model = _resnet50_module(seed, **shape)
    size = shape.get("size", 224)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 2))
    return zoo._export(
        model,
        (x,),
        Path(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )


def resnet_inputs(samples: int, seed: int = 1, size: int = 224) -> dict[str, np.ndarray]:
    """Random images, roughly ImageNet-normalised (standard normal per pixel)."""
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((samples, 3, size, size), dtype=np.float32)}


# ------------------------------------------------------------------------------ cache

BUILDERS = {"resnet50": (RESNET_NAME, export_resnet50), "bert-base": (BERT_NAME, save_bert_encoder)}


def int8_floor_off(pipeline: str) -> str:
    """``pipeline`` (a preset name is expanded) with qdq-insert's accuracy floor off: int8 of
    random weights misses its default cosine 0.993 (ORT's int8 of the ResNet: 0.98), which
    would keep these latency-only models float."""
    from graphopt.core.pipeline import PRESETS

    text = PRESETS.get(pipeline, pipeline)
    return text.replace("qdq-insert{", "qdq-insert{budget=none,")


def cached_model(which: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the cached ``"resnet50"`` or ``"bert-base"`` model, building it once."""
    import zoo

    name, builder = BUILDERS[which]
    return zoo.cached(name, builder, cache_dir)


if __name__ == "__main__":
    for arg in sys.argv[1:] or list(BUILDERS):
        out = cached_model(arg)
        print(f"{arg}: {out} ({out.stat().st_size / 1e6:.1f} MB)")
