"""Helpers for the ONNX node-test conformance check (tests/passes/test_conformance.py).

The ``onnx`` wheel ships the generators of its backend node tests (about 1,900 single-operator
models with inputs and expected outputs) but not the generated files. This module writes them
to disk in the layout of ``onnx/backend/test/data/node`` (``<case>/model.onnx`` and
``<case>/test_data_set_<i>/{input,output}_<j>.pb``), reads them back, runs them on ONNX
Runtime CPU before and after graphopt's ``cleanup`` preset, and compares with the expected
outputs.

Every model is checked in a worker process of a small pool (:func:`check_suite`), so a model
that crashes or hangs ONNX Runtime costs that model only and is reported as a failure.

Run one model by hand (prints what the test would record)::

    python tests/conformance_util.py SUITE_DIR test_abs [test_add ...]   (SUITE_DIR "-": the cache)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

RTOL = 1e-3
ATOL = 1e-5
COMPLETE_MARKER = "COMPLETE"
MODEL_TIMEOUT_S = 120.0

# Statuses of one model.
OK = "ok"  # ORT runs it correctly, and the cleaned-up model too
ORT_FAIL = "ort_fail"  # ORT does not run the model correctly as it is: excluded
REFUSED = "refused"  # graphopt refuses the model by design (UnsupportedModelError): excluded
FAIL = "fail"  # ORT runs it correctly, but something after graphopt's cleanup is wrong


# ---------------------------------------------------------------------------- generation
def cache_dir() -> Path:
    """Where the generated suite is kept between runs, keyed by the onnx version.

    ``$GRAPHOPT_CACHE/node-suite-<onnx version>`` or ``~/.cache/graphopt/node-suite-<...>``.
    """
    env = os.environ.get("GRAPHOPT_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "graphopt"
    return root / f"node-suite-{onnx.__version__}"


def _serialize_value(value: Any, type_proto: onnx.TypeProto, name: str) -> bytes:
    """One input or output as onnx.backend.test.cmd_tools.generate_data writes it."""
    if type_proto.HasField("map_type"):
        return numpy_helper.from_dict(value, name).SerializeToString()
    if type_proto.HasField("sequence_type"):
        return numpy_helper.from_list(value, name).SerializeToString()
    if type_proto.HasField("optional_type"):
        return numpy_helper.from_optional(value, name).SerializeToString()
    if isinstance(value, onnx.TensorProto):
        return value.SerializeToString()
    return numpy_helper.from_array(np.asarray(value), name).SerializeToString()


def write_case(case: Any, out_dir: Path) -> None:
    """Write one ``onnx.backend.test`` TestCase (kind "node") as model.onnx plus data sets."""
    assert case.model is not None and case.data_sets, case.name
    case_dir = out_dir / case.name
    case_dir.mkdir(parents=True)
    (case_dir / "model.onnx").write_bytes(case.model.SerializeToString())
    graph = case.model.graph
    for i, (inputs, outputs) in enumerate(case.data_sets):
        ds = case_dir / f"test_data_set_{i}"
        ds.mkdir()
        for j, value in enumerate(inputs):
            vi = graph.input[j]
            (ds / f"input_{j}.pb").write_bytes(_serialize_value(value, vi.type, vi.name))
        for j, value in enumerate(outputs):
            vi = graph.output[j]
            (ds / f"output_{j}.pb").write_bytes(_serialize_value(value, vi.type, vi.name))


def generate_node_suite(dest: Path) -> int:
    """Generate every node test case into ``dest`` (which must not exist); returns the count.

    onnx's ``cmd_tools.generate_data`` writes only the "real" and "simple" model cases in this
    onnx version, so the node cases are collected with ``load_model_tests(kind="node")``
    (the generators, run in memory) and written here in generate_data's file format.
    """
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators divide by zero on purpose
        cases = load_model_tests(kind="node")
    dest.mkdir(parents=True)
    names = set()
    for case in cases:
        if case.name in names:  # cannot happen (expect() refuses duplicates), but be sure
            continue
        names.add(case.name)
        write_case(case, dest)
    (dest / COMPLETE_MARKER).write_text(f"{len(names)}\n")
    return len(names)


def node_suite(scratch: Path, *, use_cache: bool = True) -> Path:
    """A directory holding the generated node suite, from the cache when it is there.

    When the cache is missing the suite is generated into ``scratch`` (a temp dir) and then
    copied into the cache atomically (best effort: an unwritable cache is ignored).
    """
    cached = cache_dir()
    if use_cache and (cached / COMPLETE_MARKER).is_file():
        return cached
    target = scratch / "node"
    generate_node_suite(target)
    if use_cache:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
            shutil.copytree(target, tmp)
            try:
                os.rename(tmp, cached)  # fails if another run won the race: keep theirs
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def list_models(suite: Path) -> list[str]:
    """Names of the generated cases (directories holding a model.onnx), sorted."""
    return sorted(p.parent.name for p in suite.glob("*/model.onnx"))


# ---------------------------------------------------------------------------- test data
def _normalize_strings(arr: np.ndarray) -> np.ndarray:
    """String tensors as object arrays of ``str`` (onnx reads bytes, ORT returns str)."""
    if arr.dtype.kind in "SU" or (
        arr.dtype == object and any(isinstance(x, (bytes, str)) for x in arr.flat)
    ):
        out = np.empty(arr.shape, dtype=object)
        for idx, x in np.ndenumerate(arr):
            out[idx] = x.decode("utf-8") if isinstance(x, bytes) else str(x)
        return out
    return arr


def _to_python(value: Any) -> Any:
    """Arrays with strings normalized; sequences, maps and optionals kept as Python values."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return _normalize_strings(np.asarray(value))


def read_value(path: Path, type_proto: onnx.TypeProto) -> Any:
    """Read one input_*.pb / output_*.pb written for a value of type ``type_proto``."""
    data = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return _to_python(numpy_helper.to_list(seq))
    if type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return _to_python(numpy_helper.to_optional(opt))
    if type_proto.HasField("map_type"):
        mp = onnx.MapProto()
        mp.ParseFromString(data)
        return _to_python(numpy_helper.to_dict(mp))
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    return _to_python(numpy_helper.to_array(tensor))


@dataclasses.dataclass
class DataSet:
    feeds: dict[str, Any]
    expected: list[Any]


def read_data_sets(model_dir: Path, graph: onnx.GraphProto) -> list[DataSet]:
    """Every test_data_set_* of a case: feeds by graph input name, outputs in graph order."""
    sets = []
    for ds in sorted(model_dir.glob("test_data_set_*"), key=lambda p: int(p.name.rsplit("_")[-1])):
        n_in = len(list(ds.glob("input_*.pb")))
        n_out = len(list(ds.glob("output_*.pb")))
        feeds = {
            graph.input[j].name: read_value(ds / f"input_{j}.pb", graph.input[j].type)
            for j in range(n_in)
        }
        expected = [read_value(ds / f"output_{j}.pb", graph.output[j].type) for j in range(n_out)]
        sets.append(DataSet(feeds, expected))
    return sets


# ---------------------------------------------------------------------------- comparison
def _is_ml_dtype(dtype: np.dtype) -> bool:
    """bfloat16, float8*, float4, int4, int2... (ml_dtypes types, not native numpy ones)."""
    return dtype.type.__module__.startswith("ml_dtypes")


def _float_like(dtype: np.dtype) -> bool:
    """float, complex and the ml_dtypes floats (bfloat16, float8*, float4)."""
    if dtype.kind in "fc":
        return True
    return _is_ml_dtype(dtype) and "float" in dtype.name


def _mismatch_summary(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    with np.errstate(all="ignore"):
        bad = ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
        diff = np.abs(got.astype(np.complex128) - want.astype(np.complex128))
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN against a number
    if not bad.any():
        return "assert_allclose failed"
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    worst = float(np.max(np.where(bad, diff, 0.0)))
    return (
        f"{int(bad.sum())} of {want.size} elements, max abs diff {worst:.4g}; first at "
        f"{idx}: got {got[idx].item()}, expected {want[idx].item()}"
    )


def compare_value(
    got: Any, want: Any, *, rtol: float = RTOL, atol: float = ATOL, where: str = "output"
) -> str | None:
    """None when ``got`` matches ``want``, else a one-line reason.

    Floats: ``np.testing.assert_allclose(rtol, atol, equal_nan=True)`` (computed in float64
    for the narrow float types); integers, booleans and strings: exact. Shapes and dtypes must
    match. Sequences, maps and optionals are compared element by element.
    """
    if want is None:
        return None if got is None else f"{where}: expected an empty optional, got {type(got)}"
    if got is None:
        return f"{where}: got None (empty optional), expected a value"
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"{where}: expected a sequence, got {type(got).__name__}"
        if len(got) != len(want):
            return f"{where}: sequence length {len(got)} != expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            reason = compare_value(g, w, rtol=rtol, atol=atol, where=f"{where}[{i}]")
            if reason:
                return reason
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"{where}: map keys differ"
        for k in want:
            reason = compare_value(got[k], want[k], rtol=rtol, atol=atol, where=f"{where}[{k!r}]")
            if reason:
                return reason
        return None
    got_a = _normalize_strings(np.asarray(got))
    want_a = np.asarray(want)
    if got_a.shape != want_a.shape:
        return f"{where}: shape {got_a.shape} != expected {want_a.shape}"
    if want_a.dtype == object or got_a.dtype == object:
        if got_a.dtype != want_a.dtype:
            return f"{where}: dtype {got_a.dtype} != expected {want_a.dtype}"
        return None if np.array_equal(got_a, want_a) else f"{where}: strings differ"
    if got_a.dtype != want_a.dtype:
        return f"{where}: dtype {got_a.dtype} != expected {want_a.dtype}"
    if _float_like(want_a.dtype):
        if _is_ml_dtype(want_a.dtype):
            got_a, want_a = got_a.astype(np.float64), want_a.astype(np.float64)
        try:
            np.testing.assert_allclose(got_a, want_a, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            return f"{where}: values differ ({_mismatch_summary(got_a, want_a, rtol, atol)})"
        return None
    if _is_ml_dtype(want_a.dtype):  # int4/uint4/int2...: compare the integer values
        got_a, want_a = got_a.astype(np.int64), want_a.astype(np.int64)
    if np.array_equal(got_a, want_a):
        return None
    bad = int(np.count_nonzero(got_a != want_a))
    return f"{where}: {bad} of {want_a.size} elements differ (exact comparison)"


def compare_outputs(
    got: Sequence[Any],
    want: Sequence[Any],
    names: Sequence[str],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> str | None:
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for g, w, name in zip(got, want, names):
        reason = compare_value(_to_python(g), w, rtol=rtol, atol=atol, where=f"output '{name}'")
        if reason:
            return reason
    return None


# ---------------------------------------------------------------------------- one model
@dataclasses.dataclass
class ModelResult:
    name: str
    status: str  # OK, ORT_FAIL, REFUSED or FAIL
    reasons: list[str] = dataclasses.field(default_factory=list)
    not_idempotent: list[str] = dataclasses.field(default_factory=list)  # pass names
    seconds: float = 0.0

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:limit]}"


def _ort_load_error(exc: BaseException, limit: int = 300) -> str:
    """The gist of why ORT refused a model, from the original exception's full text.

    graphopt's RuntimeFailure keeps one line; ORT's own message (its ``__cause__``) names the
    reason after a source location, e.g. "... model.cc:256 ...) Unsupported model IR version".
    """
    text = " ".join(str(exc.__cause__ or exc).split())
    text = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\)\s(?=[A-Z])", "", text)
    text = re.sub(r"Load model from \S+ failed:\s*", "", text)
    return text[:limit]


def _run_once(sess: Any, feeds: dict[str, Any], expected: Sequence[Any]) -> list[Any]:
    """Runs through OrtValues where a feed or an expected output has an ml_dtypes type
    (bfloat16, float8, int4), with graphopt's own conversions."""
    from graphopt import runtime

    if not any(runtime._is_ml_dtype(v) for v in [*feeds.values(), *expected]):
        return list(sess.run(None, feeds))
    ort_feeds = {k: runtime.to_ortvalue(v) for k, v in feeds.items()}
    return [runtime.from_ortvalue(v) for v in sess.run_with_ort_values(None, ort_feeds)]


def _run_session(
    sess: Any, data_sets: Sequence[DataSet], output_names: Sequence[str], rtol: float, atol: float
) -> str | None:
    """Run every data set; None when all outputs match, else the first reason."""
    names = [o.name for o in sess.get_outputs()]
    if list(names) != list(output_names):
        return f"graph outputs {names} != the original model's {list(output_names)}"
    for i, ds in enumerate(data_sets):
        try:
            got = _run_once(sess, ds.feeds, ds.expected)
        except Exception as exc:  # onnxruntime's own exception types
            return f"data set {i}: ORT failed to run: {_short(exc)}"
        reason = compare_outputs(got, ds.expected, names, rtol=rtol, atol=atol)
        if reason:
            return f"data set {i}: {reason}"
    return None


def check_model(
    model_dir: Path,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    threads: int = 1,
    pipeline: str = "cleanup",
) -> ModelResult:
    """Check one case: ORT as is, then the cleaned-up model, then idempotence."""
    from graphopt import ir as gir
    from graphopt.core import run_pipeline
    from graphopt.errors import UnsupportedModelError
    from graphopt.runtime import Snapshot, make_session

    started = time.perf_counter()
    result = ModelResult(model_dir.name, OK)

    def done(status: str, reason: str | None = None) -> ModelResult:
        result.status = status
        if reason:
            result.reasons.append(reason)
        result.seconds = time.perf_counter() - started
        return result

    path = model_dir / "model.onnx"
    # 1. does ORT run the model correctly as it is?
    try:
        proto = onnx.load_model(str(path))
        data_sets = read_data_sets(model_dir, proto.graph)
    except Exception as exc:
        return done(ORT_FAIL, f"cannot read the case: {_short(exc)}")
    output_names = [o.name for o in proto.graph.output]
    source: Any = path
    if proto.ir_version > gir.MAX_IR_VERSION:
        # onnx 1.23 stamps IR 14 on every generated case, even old opsets; ORT 1.31 refuses
        # it. graphopt writes IR <= 13, so judge these cases in the form graphopt delivers.
        proto.ir_version = gir.MAX_IR_VERSION
        source = Snapshot(data=proto.SerializeToString())
    try:
        sess = make_session(source, ep="cpu", optimize=False, threads=threads)
    except Exception as exc:
        return done(ORT_FAIL, f"ORT cannot load it: {_ort_load_error(exc)}")
    reason = _run_session(sess, data_sets, output_names, rtol, atol)
    if reason:
        return done(ORT_FAIL, reason)
    del sess

    # 2. cleanup, then the same check on the result
    try:
        model = gir.load_model(path)
    except UnsupportedModelError as exc:
        return done(REFUSED, exc.message)
    except Exception as exc:
        return done(FAIL, f"graphopt.ir.load_model failed: {_short(exc)}")
    try:
        run = run_pipeline(model, pipeline, verify_each=False)
    except Exception as exc:
        return done(FAIL, f"{pipeline} failed: {_short(exc, 500)}")
    try:
        data = gir.serialize(run.model)
    except Exception as exc:
        return done(FAIL, f"cannot serialize the cleaned model: {_short(exc)}")
    try:
        sess = make_session(Snapshot(data=data), ep="cpu", optimize=False, threads=threads)
    except Exception as exc:
        result.reasons.append(f"ORT cannot load the cleaned model: {_ort_load_error(exc, 500)}")
    else:
        reason = _run_session(sess, data_sets, output_names, rtol, atol)
        if reason:
            result.reasons.append(f"after {pipeline}: {reason}")
        del sess

    # 3. idempotence: a second run changes nothing
    try:
        again = run_pipeline(run.model, pipeline, verify_each=False)
    except Exception as exc:
        result.reasons.append(f"second {pipeline} run failed: {_short(exc, 500)}")
    else:
        modified = [r["pass"] for r in again.report["passes"] if r["modified"]]
        if modified:
            result.not_idempotent = sorted(set(modified))
            result.reasons.append(
                f"not idempotent: second {pipeline} run modified by "
                + ", ".join(result.not_idempotent)
            )
    return done(FAIL if result.reasons else OK)


def exclusion_kind(reason: str) -> str:
    """A short category for why ORT does not run a case correctly as it is."""
    rules = [
        ("Unsupported model IR version", "IR version newer than ORT supports"),
        ("*guarantees* support", "opset newer than ORT supports"),
        ("locale", "system locale missing (StringNormalizer)"),
        ("is not a registered function/op", "op or opset unknown to ORT"),
        ("NOT_IMPLEMENTED", "no ORT CPU kernel"),
        ("INVALID_GRAPH", "ORT rejects the graph"),
        ("MLDataType", "input type ORT's Python API cannot take"),
        ("ORT cannot load", "ORT cannot load it (other)"),
        ("ORT failed to run", "ORT fails while running it"),
        ("cannot read the case", "case unreadable"),
    ]
    return next((kind for key, kind in rules if key in reason), "ORT gives wrong outputs")


# ---------------------------------------------------------------------------- the pool
def _quiet(*, stderr: bool = False) -> None:
    """Silence warnings and logging; with ``stderr``, also ORT's C++ log lines (fd 2)."""
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    if stderr:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def _worker_main(
    conn: multiprocessing.connection.Connection, suite: str, rtol: float, atol: float, pipeline: str
) -> None:
    _quiet(stderr=True)
    while True:
        try:
            name = conn.recv()
        except EOFError:
            return
        if name is None:
            return
        try:
            res = check_model(Path(suite) / name, rtol=rtol, atol=atol, pipeline=pipeline)
        except BaseException as exc:  # a checker bug must not take the worker down
            res = ModelResult(
                name,
                FAIL,
                [
                    f"checker raised {_short(exc)}: "
                    + traceback.format_exc(limit=-3).replace("\n", " | ")
                ],
            )
        conn.send(res)


class _Worker:
    def __init__(self, ctx: Any, suite: Path, rtol: float, atol: float, pipeline: str) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, str(suite), rtol, atol, pipeline), daemon=True
        )
        self.proc.start()
        child.close()
        self.current: str | None = None
        self.since = 0.0

    def assign(self, name: str) -> None:
        self.current = name
        self.since = time.monotonic()
        self.conn.send(name)

    def stop(self, *, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)
        self.conn.close()


def check_suite(
    suite: Path,
    names: Iterable[str],
    *,
    processes: int = 2,
    rtol: float = RTOL,
    atol: float = ATOL,
    timeout_s: float = MODEL_TIMEOUT_S,
    pipeline: str = "cleanup",
    progress: Callable[[ModelResult], None] | None = None,
) -> list[ModelResult]:
    """Check every named case in ``processes`` spawned workers.

    A worker that dies (segfault, abort) or runs one model longer than ``timeout_s`` is
    replaced; the model it was on is recorded as a FAIL with the reason.
    """
    ctx = multiprocessing.get_context("spawn")
    pending = collections.deque(names)
    results: list[ModelResult] = []
    workers = [_Worker(ctx, suite, rtol, atol, pipeline) for _ in range(max(1, processes))]

    def record(res: ModelResult) -> None:
        results.append(res)
        if progress is not None:
            progress(res)

    try:
        while True:
            for w in workers:
                if w.current is None and pending:
                    w.assign(pending.popleft())
            busy = [w for w in workers if w.current is not None]
            if not busy:
                break
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0
            )
            for i, w in enumerate(workers):
                if w.current is None:
                    continue
                if w.conn in ready or w.proc.sentinel in ready:
                    try:
                        res = w.conn.recv() if w.conn.poll() else None
                    except (EOFError, OSError):
                        res = None
                    if res is not None:
                        w.current = None
                        record(res)
                        continue
                    if w.proc.is_alive():
                        continue
                    record(
                        ModelResult(
                            w.current,
                            FAIL,
                            [f"worker process died (exit code {w.proc.exitcode}) on this model"],
                        )
                    )
                    w.stop(kill=True)
                    workers[i] = _Worker(ctx, suite, rtol, atol, pipeline)
                elif time.monotonic() - w.since > timeout_s:
                    record(ModelResult(w.current, FAIL, [f"timed out after {timeout_s:.0f} s"]))
                    w.stop(kill=True)
                    workers[i] = _Worker(ctx, suite, rtol, atol, pipeline)
    finally:
        for w in workers:
            w.stop(kill=w.current is not None)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check node-suite cases by hand")
    parser.add_argument("suite", type=Path, help="generated suite dir ('-' for the cache)")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    suite = cache_dir() if str(args.suite) == "-" else args.suite
    _quiet()
    for name in args.names:
        res = check_model(suite / name)
        print(f"{res.name}: {res.status} ({res.seconds:.2f} s) {res.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
