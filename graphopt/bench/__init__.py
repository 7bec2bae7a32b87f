"""``graphopt bench``: latency, throughput, memory and accuracy of models side by side.

:func:`run_bench` measures (see :mod:`graphopt.bench.harness` for how, and why the numbers
are honest); :mod:`graphopt.bench.report` writes the JSON, markdown and HTML reports.
"""

from __future__ import annotations

from graphopt.bench.harness import SCHEMA, BenchSettings, parse_batches, run_bench

__all__ = ["SCHEMA", "BenchSettings", "parse_batches", "run_bench"]
