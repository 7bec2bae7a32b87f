"""ONNX Runtime sessions on the CPU and GPU execution providers.

onnxruntime-gpu lists the CUDA and TensorRT providers even where no GPU is usable and then
falls back to CPU with a warning, so what ran is always read back from the session's
``get_providers()`` and reported, never assumed from what was asked.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.errors import RuntimeFailure, UsageError
from graphopt.runtime.snapshot import Snapshot as Snapshot  # re-exported: runtime.Snapshot

EP_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def ort() -> Any:
    """Import onnxruntime quietly (its default logger prints colour warnings to stderr)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # fatal only: errors come back as exceptions
    return onnxruntime


@functools.cache
def load_gpu_libraries() -> str:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu needs, once per process.

    onnxruntime-gpu finds them in the ``nvidia-*`` wheels (PyTorch's) only through
    ``onnxruntime.preload_dlls()``; without it the CUDA EP may fail to load and sessions fall
    back to the CPU. Returns what happened, for reports ("" when not applicable).
    """
    rt = ort()
    preload = getattr(rt, "preload_dlls", None)
    if preload is None or "CUDAExecutionProvider" not in rt.get_available_providers():
        return ""
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            preload()
    except Exception as exc:  # a missing library: the session will say more
        return f"preload failed: {_first_line(exc)}"
    return "preloaded"


def providers_for(ep: str) -> list[str]:
    """The provider list for a target; GPU targets keep CPU as the fallback for other ops
    (and get onnxruntime-gpu's CUDA libraries loaded, see :func:`load_gpu_libraries`)."""
    if ep not in EP_NAMES:
        raise UsageError(f"unknown execution provider '{ep}' (choose from {', '.join(EP_NAMES)})")
    names = [EP_NAMES[ep]]
    if ep != "cpu":
        load_gpu_libraries()  # before any session of a GPU provider is made
    if ep == "tensorrt":
        names.append(EP_NAMES["cuda"])
    if ep != "cpu":
        names.append(EP_NAMES["cpu"])
    return names


def session_options(
    *, optimize: bool = True, threads: int | None = None, spin: bool = False, **configs: str
) -> Any:
    """ORT session options. Intra-op threads do not spin after a run unless ``spin``: every
    session graphopt makes is timed or verified next to others, and on few cores a spinning
    session's idle threads steal the next one's cores (the same CREPE file timed against
    itself: 0.94-1.06 with spinning, 0.99-1.02 without)."""
    rt = ort()
    so = rt.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = (
        rt.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in configs.items():
        so.add_session_config_entry(key, value)
    return so


def make_session(
    model: ir.Model | Snapshot | str | os.PathLike[str],
    *,
    ep: str = "cpu",
    optimize: bool = True,
    threads: int | None = None,
    strict_ep: bool = False,
    spin: bool = False,
) -> Any:
    """Build an InferenceSession; ``strict_ep`` makes a silent CPU fallback an error;
    ``spin=True`` times as a lone deployed session would (see session_options)."""
    rt = ort()
    providers = providers_for(ep)
    available = rt.get_available_providers()
    if EP_NAMES[ep] not in available:
        raise RuntimeFailure(
            f"execution provider {EP_NAMES[ep]} is not available in this onnxruntime "
            f"({', '.join(available)})",
            hint="install onnxruntime-gpu on a machine with a GPU" if ep != "cpu" else None,
        )
    snap = model if isinstance(model, Snapshot) else None
    if isinstance(model, ir.Model):
        snap = Snapshot.of(model)
    source = snap.source if snap is not None else str(model)
    so = session_options(optimize=optimize, threads=threads, spin=spin)
    try:
        sess = rt.InferenceSession(source, sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RuntimeFailure(f"ONNX Runtime could not load the model: {_first_line(exc)}") from exc
    if strict_ep and EP_NAMES[ep] not in sess.get_providers():
        raise RuntimeFailure(
            f"{EP_NAMES[ep]} was requested but ONNX Runtime fell back to "
            f"{', '.join(sess.get_providers())} (no usable device?)"
        )
    return sess


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def run_checked(sess: Any, names: Sequence[str] | None, feed: dict[str, Any], what: str) -> list:
    """``sess.run`` whose failure is a RuntimeFailure naming ``what`` ("calibration feed 3")."""
    try:
        return run_one(sess, names, feed)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RuntimeFailure(f"ONNX Runtime failed on {what}: {_first_line(exc)}") from exc


def run_feeds(sess: Any, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Run every feed; returns outputs per feed in the session's output order."""
    names = [o.name for o in sess.get_outputs()]
    out = []
    for feed in feeds:
        try:
            out.append(run_one(sess, names, feed))
        except Exception as exc:
            raise RuntimeFailure(
                f"ONNX Runtime failed to run the model: {_first_line(exc)}"
            ) from exc
    return out


def _as_array(x: Any) -> np.ndarray:
    """An output as an array: a sequence of tensors of different shapes as an object array."""
    try:
        return np.asarray(x)
    except ValueError:  # ragged sequence output
        out = np.empty(len(x), dtype=object)
        out[:] = list(x)
        return out


def _is_ml_dtype(value: Any) -> bool:
    """bfloat16, float8, int4... (ml_dtypes types, numpy user types): ORT's numpy path refuses
    them, so they travel as OrtValues."""
    return isinstance(value, np.ndarray) and value.dtype.num >= 256  # numpy's user types


def run_one(sess: Any, names: Sequence[str] | None, feed: dict[str, Any]) -> list[Any]:
    """``sess.run`` that also takes and returns ml_dtypes arrays (bfloat16 inputs/outputs)."""
    wants_ml = any(
        o.type in ("tensor(bfloat16)",)
        or o.type.startswith("tensor(float8")
        or o.type.startswith(("tensor(int4", "tensor(uint4", "tensor(int2", "tensor(uint2"))
        for o in sess.get_outputs()
    )
    if not wants_ml and not any(_is_ml_dtype(v) for v in feed.values()):
        return [_as_array(x) for x in sess.run(names, feed)]
    ort_feed = {key: to_ortvalue(value) for key, value in feed.items()}
    return [from_ortvalue(v) for v in sess.run_with_ort_values(names, ort_feed)]


def to_ortvalue(value: np.ndarray) -> Any:
    """An array as an OrtValue; ml_dtypes arrays travel as their bits with the ONNX type."""
    import onnx

    arr = np.ascontiguousarray(value)
    if _is_ml_dtype(arr):
        raw = arr.view(np.uint16 if arr.dtype.itemsize == 2 else np.uint8)
        et = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        return ort().OrtValue.ortvalue_from_numpy_with_onnx_type(raw, et)
    return ort().OrtValue.ortvalue_from_numpy(arr)


#: sub-byte types ONNX Runtime stores packed, low bits first
_PACKED_BITS = {"int4": 4, "uint4": 4, "int2": 2, "uint2": 2}


def _unpack(raw: np.ndarray, bits: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Packed sub-byte elements as an ml_dtypes array of ``shape``."""
    per = 8 // bits
    parts = [(raw >> (bits * k)) & ((1 << bits) - 1) for k in range(per)]
    values = np.stack(parts, axis=1).reshape(-1)[: int(np.prod(shape))].astype(np.int8)
    if dtype.name.startswith("int"):  # sign-extend
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values.astype(dtype).reshape(shape)


def from_ortvalue(value: Any) -> Any:
    """A tensor OrtValue as numpy, ml_dtypes types included (read from its CPU buffer)."""
    import ctypes

    import onnx

    if not value.is_tensor():
        return value.numpy()
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.element_type()))
    try:
        arr = value.numpy()
    except Exception:  # "No corresponding Numpy type" (bfloat16): copy the raw bytes
        size = value.tensor_size_in_bytes()
        raw = bytes((ctypes.c_uint8 * size).from_address(value.data_ptr())) if size else b""
        shape = tuple(value.shape())
        bits = _PACKED_BITS.get(dtype.name)
        if bits is None:
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        return _unpack(np.frombuffer(raw, np.uint8), bits, dtype, shape)
    if arr.dtype != dtype and arr.dtype.itemsize == dtype.itemsize:
        arr = arr.view(dtype)  # float8 comes back as uint8 bits
    return arr


def interleaved_latency(
    sessions: Sequence[Any],
    feed: dict[str, np.ndarray],
    *,
    rounds: int = 5,
    iters: int = 10,
    min_round_seconds: float = 0.05,
    max_round_seconds: float | None = None,
    clear: Callable[[list[list[float]]], bool] | None = None,
    min_rounds: int = 3,
) -> list[list[float]]:
    """Median seconds per run of each session, per round, taking turns so noise hits all.

    Each session runs at least ``iters`` times per round, more for fast models so that a
    round lasts about ``min_round_seconds``, fewer (but 3) for slow ones where
    ``max_round_seconds`` caps a session's round; each round starts one session later than the
    last (the first to run after another's caches and clocks is not always the same one).
    Returns ``rounds`` lists with one median per session, in ``sessions`` order: compare
    sessions round by round (ratios), never across rounds. With ``clear``, timing ends after
    ``min_rounds`` or any later round once ``clear(rounds so far)`` says the answer cannot be
    in doubt (every ratio far from the caller's threshold).
    """
    import time

    slowest = 0.0
    for sess in sessions:  # warm-up: first runs allocate and tune
        for _ in range(2):
            t0 = time.perf_counter()
            sess.run(None, feed)
            slowest = max(slowest, time.perf_counter() - t0)
    if slowest > 0:
        iters = max(iters, min(1000, int(min_round_seconds / slowest) + 1))
        if max_round_seconds is not None:
            iters = max(3, min(iters, int(max_round_seconds / slowest) + 1))
    out = []
    n = len(sessions)
    for r in range(rounds):
        medians = [0.0] * n
        for k in [(r + j) % n for j in range(n)]:
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                sessions[k].run(None, feed)
                times.append(time.perf_counter() - t0)
            medians[k] = float(np.median(times))
        out.append(medians)
        if clear is not None and len(out) >= min_rounds and r + 1 < rounds and clear(out):
            break
    return out


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded in every report."""
    import platform

    import onnx
    import onnxscript

    import graphopt

    rt = ort()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "graphopt": graphopt.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": rt.__version__,
        "available_providers": rt.get_available_providers(),
        "numpy": np.__version__,
    }
