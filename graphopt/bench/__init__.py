"""``graphopt bench``: latency, throughput, memory and accuracy of models side by side.

:func:`run_bench` measures (see :mod:`graphopt.bench.harness` for how, and why the numbers
are honest); :mod:`graphopt.bench.report` writes the JSON, markdown and HTML reports.

This package is callable: ``graphopt.bench(["a.onnx", "b.onnx"], batches=[1, 8])`` is
:func:`bench`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphopt.bench.harness import SCHEMA, BenchSettings, parse_batches, run_bench
from graphopt.core.callable import make_callable

__all__ = ["SCHEMA", "BenchSettings", "bench", "parse_batches", "run_bench"]


def bench(
    models: Sequence[str | os.PathLike[str]],
    *,
    eps: Sequence[str] = ("cpu",),
    batches: Sequence[int] = (1,),
    data: str | os.PathLike[str] | None = None,
    metric: str | None = None,
    dims: dict[str, int] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """What ``graphopt bench MODELS`` measures, as its JSON report (a dict): the first model
    is the reference; the others run interleaved with it, ratios taken round by round.
    Other keywords are :class:`BenchSettings` fields (``threads``, ``rounds``, ``repeat``,
    ``warmup``, ``seed``, ``samples``)."""
    return run_bench(
        BenchSettings(
            models=[Path(m) for m in models],
            eps=list(dict.fromkeys(eps)),
            batches=list(batches),
            data=str(data) if data is not None else None,
            metric=metric,
            dims=dict(dims or {}),
            **settings,
        )
    )


make_callable(__name__, bench)
