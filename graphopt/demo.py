"""The built-in demo: a small CNN trained on scikit-learn's digits, shipped with its test split.

It lets a new user see the whole job (load, run a pipeline with verify-each, save, measure
the task metric before and after) on a real trained model with no download.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import runtime
from graphopt.data import Samples

DEMO_MODEL = "digits_cnn.onnx"
DEMO_DATA = "digits_test.npz"


def demo_files() -> tuple[Path, Path]:
    """Paths of the shipped model and its held-out test split (input, label)."""
    root = importlib.resources.files("graphopt.models")
    return Path(str(root / DEMO_MODEL)), Path(str(root / DEMO_DATA))


def top1_accuracy(model: Any, samples: Samples, labels: np.ndarray, *, ep: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (ir.Model, Snapshot or path) over the feeds' batches."""
    sess = runtime.make_session(model, ep=ep, optimize=True)
    preds = [np.argmax(out[0], axis=-1).ravel() for out in runtime.run_feeds(sess, samples.feeds)]
    pred = np.concatenate(preds)
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
    return float(np.mean(pred == labels))
