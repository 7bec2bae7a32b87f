"""Conformance: the ``cleanup`` preset keeps ONNX's backend node tests passing on ORT CPU.

The node suite (about 1,900 single-operator models with inputs and expected outputs) is
generated once per session from the generators in the ``onnx`` wheel and cached under
``$GRAPHOPT_CACHE/node-suite-<onnx version>`` (``~/.cache/graphopt/...`` by default). Each
model that ONNX Runtime CPU (graph optimizations off) runs correctly as it is goes through
``run_pipeline(model, "cleanup")`` and must still produce the expected outputs, and a second
run of the preset must change nothing. Models ORT does not run correctly (newer opsets or IR
versions, missing kernels, types its Python binding cannot feed) are counted and excluded.

Rerun single models by hand with ``python tests/conformance_util.py - test_abs ...``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from pathlib import Path

import pytest

try:
    import conformance_util as cu
except ImportError:  # tests/ imported as a package
    from tests import conformance_util as cu

# Measured with onnx 1.23.2 / onnxruntime 1.31.1 (CPU): 1,884 cases, 1,450 run correctly on
# ORT as they are, 1,447 checked (3 use opset 1, which graphopt refuses). Of the 434 others,
# ~290 need IR version 14 or opsets 27-28 that this ORT refuses; the rest lack ORT kernels
# (bfloat16 Attention, training ops), use int4/int2 inputs its Python API cannot take, or
# give outputs outside the tolerance (DFT, STFT). The floor leaves room for ORT upgrades.
MIN_CHECKED = 1400
SHOW = 30


@dataclasses.dataclass
class Suite:
    path: Path
    generated: bool  # False when it came from the cache
    seconds: float


@pytest.fixture(scope="session")
def node_suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    started = time.perf_counter()
    cached = (cu.cache_dir() / cu.COMPLETE_MARKER).is_file()
    path = cu.node_suite(tmp_path_factory.mktemp("onnx-node-suite"))
    return Suite(path, not cached, time.perf_counter() - started)


def test_cleanup_keeps_node_suite_outputs(node_suite: Suite) -> None:
    started = time.perf_counter()
    names = cu.list_models(node_suite.path)
    results = cu.check_suite(node_suite.path, names, processes=min(2, os.cpu_count() or 1))
    seconds = time.perf_counter() - started

    by_status: dict[str, list[cu.ModelResult]] = collections.defaultdict(list)
    for res in sorted(results, key=lambda r: r.name):
        by_status[res.status].append(res)
    ort_correct = len(results) - len(by_status[cu.ORT_FAIL])
    checked = len(by_status[cu.OK]) + len(by_status[cu.FAIL])
    failures = by_status[cu.FAIL]
    excluded = collections.Counter(cu.exclusion_kind(r.reason) for r in by_status[cu.ORT_FAIL])
    not_idempotent = collections.Counter(p for r in failures for p in r.not_idempotent)

    source = "generated" if node_suite.generated else "cached"
    counts = (
        f"node suite: {len(names)} models ({source} in {node_suite.seconds:.1f} s, "
        f"{node_suite.path}); ORT CPU runs {ort_correct} correctly "
        f"({len(by_status[cu.ORT_FAIL])} excluded: "
        + ", ".join(f"{k} {v}" for k, v in excluded.most_common())
        + f"); graphopt refuses {len(by_status[cu.REFUSED])} "
        f"({', '.join(r.name for r in by_status[cu.REFUSED]) or '-'}); "
        f"checked after cleanup: {checked}, passed {len(by_status[cu.OK])}, "
        f"failed {len(failures)}; {seconds:.1f} s"
    )
    print("\n" + counts)
    if not_idempotent:
        print(
            "not idempotent (pass: models): "
            + ", ".join(f"{p}: {n}" for p, n in not_idempotent.most_common())
        )
    for res in failures:
        print(f"  FAIL {res.name}: {res.reason}")

    assert len(results) == len(names), f"{len(names) - len(results)} models got no result"
    if failures:
        shown = "\n".join(f"  {r.name}: {r.reason}" for r in failures[:SHOW])
        more = f"\n  ... and {len(failures) - SHOW} more" if len(failures) > SHOW else ""
        idem = (
            "\nnot idempotent: " + ", ".join(f"{p} ({n})" for p, n in not_idempotent.items())
            if not_idempotent
            else ""
        )
        pytest.fail(
            f"{len(failures)} of {checked} node-suite models are wrong after cleanup "
            f"(first {min(SHOW, len(failures))}):\n{shown}{more}{idem}\n{counts}",
            pytrace=False,
        )
    assert checked >= MIN_CHECKED, (
        f"only {checked} models were checked (expected at least {MIN_CHECKED}): {counts}"
    )


def test_assign_precision_fp16_keeps_node_suite_outputs(node_suite: Suite) -> None:
    """Every node-suite model ORT runs still loads, runs and matches after fp16 assignment.

    fp16 rounds (about 1e-3 relative per value), so the bound is 2e-2 instead of the exact
    suite's; nodes ORT's CPU EP has no fp16 kernel for stay fp32 (measured by probing).
    """
    names = cu.list_models(node_suite.path)
    results = cu.check_suite(
        node_suite.path,
        names,
        processes=min(2, os.cpu_count() or 1),
        rtol=2e-2,
        atol=2e-2,
        pipeline="assign-precision{target=fp16}",
    )
    by_status = collections.Counter(r.status for r in results)
    failures = sorted((r for r in results if r.status == cu.FAIL), key=lambda r: r.name)
    print(f"\nassign-precision fp16 over the node suite: {dict(by_status)}")
    assert len(results) == len(names)
    assert not failures, "\n".join(f"  {r.name}: {r.reason}" for r in failures[:SHOW])
    assert by_status[cu.OK] >= MIN_CHECKED
