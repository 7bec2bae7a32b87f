"""Accuracy budgets for lossy passes: ``cosine>=0.999``, ``max_abs<=1e-2``, or a task metric.

A budget compares a transformed model's outputs with the float model's on the same feeds:

* ``cosine>=X``: for every output, the mean over samples of the cosine similarity; the worst
  output counts;
* ``max_abs<=X`` / ``max_rel<=X``: the largest absolute error (relative to the largest
  reference magnitude) over all outputs and samples;
* ``top1>=X``: top-1 accuracy of the first output (argmax over its last axis) against the
  ``label`` array carried in DATA (an extra key of the .npz), over the budget's samples;
* ``python:pkg.module:function>=X`` (or ``<=``): ``function(outputs, samples)`` returns a
  task metric (top-1, pitch accuracy, ...) where ``outputs`` is one list of output arrays per
  sample and ``samples`` the :class:`graphopt.inputs.data.Samples` they came from.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphopt.accuracy.metrics import cosine_sample_mean

_BUILTIN = {"cosine": ">=", "max_abs": "<=", "max_rel": "<=", "top1": ">="}
_SYNTAX = re.compile(r"^\s*(?P<metric>[A-Za-z_][\w.:]*)\s*(?P<op>>=|<=)\s*(?P<value>[^\s]+)\s*$")

Outputs = Sequence[Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Budget:
    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse ``metric>=value`` / ``metric<=value``; ValueError says what is wrong."""
        m = _SYNTAX.match(text)
        if not m:
            raise ValueError(
                f"budget {text!r}: expected METRIC>=VALUE or METRIC<=VALUE, e.g. cosine>=0.999, "
                "max_abs<=1e-2 or python:my.module:top1>=0.98"
            )
        metric, op = m["metric"], m["op"]
        try:
            value = float(m["value"])
        except ValueError:
            raise ValueError(f"budget {text!r}: {m['value']!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"budget {text!r}: the threshold must be finite")
        if metric in _BUILTIN:
            if op != _BUILTIN[metric]:
                raise ValueError(f"budget {text!r}: {metric} takes {_BUILTIN[metric]}")
        elif metric.startswith("python:"):
            if metric.count(":") != 2 or not all(metric.split(":")[1:]):
                raise ValueError(f"budget {text!r}: write python:package.module:function")
        else:
            raise ValueError(
                f"budget {text!r}: unknown metric {metric!r} "
                f"(known: {', '.join(_BUILTIN)}, python:module:function)"
            )
        return cls(metric, op, value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def measure(self, reference: Outputs, got: Outputs, samples: Any = None) -> float:
        """The budget's metric of ``got`` against ``reference`` (one list per sample)."""
        if self.metric.startswith("python:"):
            return float(self._callback()(got, samples))
        if self.metric == "top1":
            return top1(got, samples)
        if self.metric == "cosine":
            return min(cosine_sample_mean(reference, got, k) for k in range(len(reference[0])))
        worst_abs, scale = 0.0, 0.0
        for r, g in zip(reference, got, strict=True):
            for a, b in zip(r, g, strict=True):
                a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
                worst_abs = max(worst_abs, float(np.max(np.abs(a64 - b64), initial=0.0)))
                scale = max(scale, float(np.max(np.abs(a64), initial=0.0)))
        if self.metric == "max_abs":
            return worst_abs
        return worst_abs / scale if scale > 0 else (0.0 if worst_abs == 0 else math.inf)

    def _callback(self) -> Callable[[Outputs, Any], float]:
        _, module, func = self.metric.split(":")
        try:
            return getattr(_import_here_too(module), func)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"budget metric {self.metric}: cannot load it ({exc})") from None


def _import_here_too(module: str) -> Any:
    """Import ``module``; one not on the path is looked for in the current folder too (the
    console script's path does not hold it, yet that is where a user's metric file is)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module)


def top1(outputs: Outputs, samples: Any) -> float:
    """Top-1 accuracy of the first output against ``samples.extras['label']``."""
    from graphopt.errors import DataError

    labels = getattr(samples, "extras", {}).get("label")
    if labels is None:
        raise DataError("budget top1 needs labels: add a 'label' array to the DATA .npz")
    pred = np.concatenate([np.asarray(o[0]).reshape(-1, np.shape(o[0])[-1]) for o in outputs])
    truth = np.asarray(labels).reshape(-1)[: len(pred)]
    if len(truth) < len(pred):
        raise DataError(f"budget top1: {len(pred)} predictions but only {len(truth)} labels")
    return float(np.mean(pred.argmax(axis=-1) == truth))
