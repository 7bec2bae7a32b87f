"""A sweep recipe as data: its models, pipelines, cells and optimize tasks, and the keys that
hash their definitions (contents of model and data files, normalized pipeline text, every
setting that changes the result; not names or file locations)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10
    pass


EPS = ("cpu", "cuda", "tensorrt")
NONE_PIPELINES = ("", "none")
KEY_CHARS = 16  # hex digits of sha256 in a key: 64 bits, plenty for a folder of cells

# [bench] keys (also allowed in a [models.NAME] table, where they override [bench])
BENCH_DEFAULTS: dict[str, Any] = {
    "eps": ["cpu"],
    "batches": [1],
    "threads": None,
    "warmup": 5,
    "repeat": 20,
    "rounds": 3,
    "seed": 0,
    "metric": None,
    "samples": 0,
}
MODEL_KEYS = {"path", "data", "calib_data", "calib_batch", "dims"} | set(BENCH_DEFAULTS)
PIPELINE_KEYS = {"pipeline", "target", "budget", "verify", "verify_samples"}
TOP_KEYS = {"sweep", "bench", "pipelines", "models", "ray"}
SWEEP_KEYS = {"name", "description"}
RAY_GROUPS = ("optimize", *EPS)
RAY_KEYS = {"num_cpus", "num_gpus", "memory", "resources"}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One ``[models.NAME]`` table, paths resolved and files hashed."""

    name: str
    path: Path
    sha256: str  # of the model file and its external data files
    data: Path | None
    data_sha256: str | None
    calib_data: Path | None
    calib_sha256: str | None
    calib_batch: int
    dims: dict[str, int]
    bench: dict[str, Any]  # [bench] with this model's overrides applied


@dataclasses.dataclass(frozen=True)
class PipelineEntry:
    """One ``[pipelines]`` entry; ``normalized`` is ``""`` for the model as is."""

    name: str
    text: str
    normalized: str
    target: str = "cpu"
    budget: str | None = None
    verify: bool = True
    verify_samples: int = 4

    @property
    def as_is(self) -> bool:
        return self.normalized == ""


@dataclasses.dataclass(frozen=True)
class OptimizeTask:
    """One (model, pipeline) pair to optimize; its result is shared by all its cells."""

    key: str
    model: ModelEntry
    pipeline: PipelineEntry
    definition: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.pipeline.name}"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measurement: a model after a pipeline, on one EP at one batch size."""

    key: str
    model: ModelEntry
    pipeline: PipelineEntry
    ep: str
    batch: int
    optimize_key: str | None  # None: the model as is
    definition: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.pipeline.name}/{self.ep}/b{self.batch}"


@dataclasses.dataclass
class Recipe:
    path: Path
    name: str
    description: str
    sha256: str
    models: list[ModelEntry]
    pipelines: list[PipelineEntry]
    bench: dict[str, Any]
    ray: dict[str, dict[str, Any]]
    optimize_tasks: list[OptimizeTask]
    cells: list[Cell]

    def to_dict(self) -> dict[str, Any]:
        """The recipe as understood (paths resolved, defaults filled), for the report."""
        return {
            "path": str(self.path),
            "name": self.name,
            "description": self.description,
            "sha256": self.sha256,
            "bench": self.bench,
            "models": [
                {
                    "name": m.name,
                    "path": str(m.path),
                    "sha256": m.sha256,
                    "data": str(m.data) if m.data else None,
                    "calib_data": str(m.calib_data) if m.calib_data else None,
                    "calib_batch": m.calib_batch,
                    "dims": m.dims,
                    "bench": m.bench,
                }
                for m in self.models
            ],
            "pipelines": [dataclasses.asdict(p) for p in self.pipelines],
            "ray": self.ray,
        }


# ----------------------------------------------------------------------------- hashing


def digest(obj: Any) -> str:
    """A key: sha256 of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def _file_sha(path: Path, h: Any) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def files_sha256(paths: list[Path], root: Path | None = None) -> str:
    """sha256 over the files' names (relative to ``root``) and contents, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(root) if root else p.name).encode() + b"\0")
        _file_sha(p, h)
    return h.hexdigest()


def model_files(path: Path, proto: Any) -> list[Path]:
    """The model file and the external data files it names (each once)."""
    from graphopt import ir as gir

    out = [path]
    for tensor in gir.iter_tensor_protos(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                p = path.parent / entry.value
                if p not in out:
                    out.append(p)
    return out


def data_files(path: Path) -> list[Path]:
    """DATA's files: the .npz itself, or every file under a test-data folder."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]
