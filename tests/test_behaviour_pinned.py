"""Behaviour pinned across refactors: fixed untimed pipelines give the same model bytes and
the same report (less timing fields and paths) as when the hashes were recorded.

The hashes were recorded before the package was regrouped by layer (65fda59) and hold after
it. The pipelines take no timing decision (``guard=false``; cleanup and pruning time
nothing), so the result depends on graphopt's code and the ONNX stack only: with another
version of that stack the test skips and says how to record again
(``python tests/test_behaviour_pinned.py`` prints the hashes).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

STACK = ("onnx", "onnxruntime", "onnx_ir", "onnxscript", "numpy")
RECORDED_WITH = {
    "onnx": "1.23.2",
    "onnxruntime": "1.31.1",
    "onnx_ir": "1.1.0",
    "onnxscript": "0.7.2",
    "numpy": "2.4.6",
}
PINNED = {
    "digits-cleanup": ("ae2e22d9911374d9", "36b4edb6afc2c421"),
    "crepe-cleanup": ("e13e6b36ffdd0d32", "f2e3b4bc5fcfb93c"),
    "crepe-int8": ("0d007cf1cca946a1", "eb6a3f630d85a671"),
    "digits-int8": ("60fdb9b356db45dc", "a6201376ba988481"),
    "digits-prune": ("19061f88c7284474", "e91a7cd9eeb289e2"),
}
#: report fields that measure time, name files or describe the machine; and the serialized
#: size of in-memory models, measured on their snapshots, whose external references name the
#: process's weights file and offsets in it (a few bytes more after other runs in the process)
UNPINNED = {
    "seconds",
    "created",
    "environment",
    "source",
    "output",
    "path",
    "inputs",
    "serialized_bytes",
}


def _cases(tmp: Path) -> dict[str, tuple[Path, str, str | None]]:
    import graphopt
    from graphopt.models import crepe

    models = Path(graphopt.__file__).parent / "models"
    tones = tmp / "tones.npz"
    np.savez(tones, **crepe.tone_set(16, 100.0, 800.0, seed=0))
    digits, crepe_tiny = models / "digits_cnn.onnx", models / "crepe_tiny.onnx"
    test = str(models / "digits_test.npz")
    return {
        "digits-cleanup": (digits, "cleanup", test),
        "crepe-cleanup": (crepe_tiny, "cleanup", None),
        "crepe-int8": (crepe_tiny, "cleanup,qdq-insert{guard=false}", str(tones)),
        "digits-int8": (digits, "cleanup,qdq-insert{guard=false,per_channel=false}", test),
        "digits-prune": (digits, "cleanup,prune-channels{ratio=0.25},reconstruct", test),
    }


def _pinned_part(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _pinned_part(v) for k, v in obj.items() if k not in UNPINNED}
    if isinstance(obj, list):
        return [_pinned_part(v) for v in obj]
    return obj


def hashes() -> dict[str, tuple[str, str]]:
    """(model bytes, report) hash of every case, run now."""
    import graphopt

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, pipeline, data) in _cases(Path(tmp)).items():
            path = Path(tmp) / f"{name}.onnx"
            report = graphopt.optimize(model, pipeline, data=data, output=path).report
            text = json.dumps(_pinned_part(report), sort_keys=True, default=str)
            out[name] = (
                hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                hashlib.sha256(text.encode()).hexdigest()[:16],
            )
    return out


def _stack() -> dict[str, str]:
    return {name: importlib.import_module(name).__version__ for name in STACK}


def test_untimed_pipelines_give_the_pinned_models_and_reports() -> None:
    stack = _stack()
    if stack != RECORDED_WITH:
        pytest.skip(
            f"pinned with {RECORDED_WITH}, this is {stack}: record again with "
            "'python tests/test_behaviour_pinned.py' on a revision known to be right"
        )
    got = hashes()
    moved = {k: (got[k], v) for k, v in PINNED.items() if got[k] != v}
    assert not moved, f"(now, pinned) per case: {moved}"


if __name__ == "__main__":
    json.dump({"stack": _stack(), "hashes": hashes()}, sys.stdout, indent=1)
