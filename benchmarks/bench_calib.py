"""Benchmark: calibration time and peak memory, graphopt.calib vs ONNX Runtime's calibrator.

The model is a BERT-base-shaped encoder with random weights built with ``onnx.helper``
(default 12 layers, hidden 768, 12 heads, FFN 3072, sequence 128, batch 1, word and position
embeddings, attention mask, erf GELU as exported by PyTorch). The data is random token ids
with random padding. Every measurement runs in its own subprocess so peak memory is that
run's alone: ``VmHWM`` from ``/proc/self/status`` after resetting it (``clear_refs``) once
the data is in memory, so model loading, augmentation, session, collection and range
computation are all counted, and nothing before.

* ``graphopt``: :func:`graphopt.calib.collect_stats` (one augmented run, streamed) then
  asymmetric entropy ranges for every tensor (ONNX Runtime's entropy default is asymmetric).
* ``onnxruntime``: ``create_calibrator(..., CalibrationMethod.Entropy)``, ``collect_data``
  then ``compute_data``, with its defaults (128 histogram bins, 128 quantized bins). It keeps
  every output of every sample until ``compute_data``; a run whose estimated footprint
  (samples x calibrated activation bytes per sample) exceeds ``--ort-max-gb`` is skipped and
  reported with the estimate instead of driving the machine out of memory.

    python benchmarks/bench_calib.py [--layers 12] [--samples 32,128] [--ort-max-gb 12]
                                     [--ort-bins 128] [--no-ort] [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shaped_models import bert_inputs, build_bert_encoder

# ---------------------------------------------------------------------------------- model

# The encoder builder lives in shaped_models.py (shared with bench_quant.py).
build_encoder = build_bert_encoder
make_data = bert_inputs


def activation_bytes(model_path: Path) -> tuple[int, int]:
    """(float node outputs, their bytes per batch-1 sample), from ONNX shape inference."""
    proto = onnx.load(str(model_path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(proto)
    outputs = {o for n in inferred.graph.node for o in n.output}
    count = total = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if vi.name not in outputs or t.elem_type != TensorProto.FLOAT:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        count += 1
        total += 4 * int(np.prod(dims))
    return count, total


# -------------------------------------------------------------------------------- workers


def _peak_reset() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def worker(args: argparse.Namespace) -> None:
    """One measured run; writes a JSON result to ``args.result``."""
    with np.load(args.data) as npz:
        arrays = {k: npz[k][: args.n] for k in npz.files}
    if args.tool == "graphopt":
        from graphopt import ir as gir
        from graphopt.calib import collect_stats, compute_ranges
        from graphopt.inputs.data import from_arrays
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            create_calibrator,
        )
    base_mb = (_status_kb("VmRSS") or 0) / 1024
    reset = _peak_reset()
    result: dict[str, Any] = {"tool": args.tool, "samples": args.n, "peak_reset": reset}
    t0 = time.perf_counter()
    if args.tool == "graphopt":
        model = gir.load_model(args.model)
        samples = from_arrays(model, arrays, source=str(args.data), batch=1)
        t1 = time.perf_counter()
        stats = collect_stats(model, samples, progress=False)
        t2 = time.perf_counter()
        ranges = compute_ranges(stats, "entropy", symmetric=False)
        t3 = time.perf_counter()
    else:

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.i >= args.n:
                    return None
                self.i += 1
                return {k: v[self.i - 1 : self.i] for k, v in arrays.items()}

        with tempfile.TemporaryDirectory() as tmp:
            cal = create_calibrator(
                Path(args.model),
                None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={"num_bins": args.ort_bins},
            )
            t1 = time.perf_counter()
            cal.collect_data(Reader())
            t2 = time.perf_counter()
            data = cal.compute_data()
            t3 = time.perf_counter()
            ranges = {k: tuple(float(x) for x in v.range_value) for k, v in data.items()}
    result.update(
        setup_s=t1 - t0,
        collect_s=t2 - t1,
        compute_s=t3 - t2,
        total_s=t3 - t0,
        tensors=len(ranges),
        base_mb=base_mb,
        peak_mb=_peak_mb(),
        ranges={k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()},
    )
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------- driver


def _run(tool: str, n: int, model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = model.parent / f"result-{tool}-{n}.json"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        tool,
        "--model",
        str(model),
        "--data",
        str(data),
        "--n",
        str(n),
        "--ort-bins",
        str(args.ort_bins),
        "--result",
        str(out),
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "samples": n, "error": f"timed out after {args.timeout} s"}
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"tool": tool, "samples": n, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def _agreement(a: dict[str, list[float]], b: dict[str, list[float]]) -> str:
    """Median and range of hi/hi and lo/lo over the tensors both calibrated."""
    ratios = []
    for name in set(a) & set(b):
        for i in (0, 1):
            x, y = a[name][i], b[name][i]
            if abs(y) > 1e-6 and abs(x) > 1e-6:
                ratios.append(x / y)
    if not ratios:
        return "n/a"
    q = np.quantile(ratios, [0.1, 0.5, 0.9])
    return f"{q[1]:.2f} (p10 {q[0]:.2f}, p90 {q[2]:.2f}; {len(set(a) & set(b))} tensors)"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    import onnxruntime

    return f"{cpu}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}, numpy " + (
        f"{np.__version__}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--samples", default="32,128")
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime's calibrator")
    parser.add_argument("--ort-bins", type=int, default=128, help="its num_bins (default 128)")
    parser.add_argument("--ort-max-gb", type=float, default=None, help="skip ORT runs above")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    # worker mode (internal)
    parser.add_argument("--worker", choices=["graphopt", "onnxruntime"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.tool = args.worker
        worker(args)
        return

    counts = [int(x) for x in args.samples.split(",")]
    if args.ort_max_gb is None:
        avail_kb = 0
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail_kb = int(line.split()[1])
        args.ort_max_gb = 0.6 * avail_kb / 2**20
    with tempfile.TemporaryDirectory(prefix="bench-calib-") as tmp:
        work = Path(tmp)
        model_path, data_path = work / "encoder.onnx", work / "data.npz"
        t0 = time.perf_counter()
        onnx.save_model(build_encoder(args.layers, seq=args.seq), str(model_path))
        np.savez(data_path, **make_data(max(counts), args.seq))
        n_act, act_bytes = activation_bytes(model_path)
        size_mb = model_path.stat().st_size / 2**20
        print(
            f"model: {args.layers}-layer encoder, seq {args.seq}, {size_mb:.0f} MB, "
            f"{n_act} float activations, {act_bytes / 2**20:.0f} MB of them per sample "
            f"(built in {time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
        rows = []
        for n in counts:
            res = {"graphopt": _run("graphopt", n, model_path, data_path, args)}
            need_gb = n * act_bytes / 2**30
            if args.no_ort:
                pass
            elif need_gb > args.ort_max_gb:
                res["onnxruntime"] = {
                    "error": f"skipped: keeps all outputs, ~{need_gb:.1f} GB "
                    f"> --ort-max-gb {args.ort_max_gb:.1f}"
                }
            else:
                res["onnxruntime"] = _run("onnxruntime", n, model_path, data_path, args)
            for tool, r in res.items():
                brief = {k: v for k, v in r.items() if k != "ranges"}
                print(f"{tool} x{n}: {json.dumps(brief)}", file=sys.stderr)
            rows.append((n, res))

    lines = [
        f"# Calibration (entropy): graphopt.calib vs onnxruntime.quantization, {args.layers}-layer "
        f"BERT-base-shaped encoder, seq {args.seq}, batch 1",
        "",
        f"Machine: {_machine()}. Model {size_mb:.0f} MB, {n_act} float activations "
        f"({act_bytes / 2**20:.0f} MB per sample). ONNX Runtime calibrator num_bins="
        f"{args.ort_bins}. Each run is a fresh process; peak RSS is VmHWM from the moment the "
        "data is loaded (model load included).",
        "",
        "| samples | tool | tensors | setup (s) | collect (s) | ranges (s) | total (s) | "
        "peak RSS (MB) | RSS before (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, res in rows:
        for tool, r in res.items():
            if "error" in r:
                lines.append(f"| {n} | {tool} | | | | | | {r['error']} | |")
                continue
            lines.append(
                f"| {n} | {tool} | {r['tensors']} | {r['setup_s']:.1f} | {r['collect_s']:.1f} | "
                f"{r['compute_s']:.2f} | {r['total_s']:.1f} | {r['peak_mb']:.0f} | "
                f"{r['base_mb']:.0f} |"
            )
    done = [(n, res["graphopt"]["collect_s"]) for n, res in rows if "collect_s" in res["graphopt"]]
    for n, res in rows:
        g, o = res["graphopt"], res.get("onnxruntime", {})
        if "ranges" in g and "ranges" in o:
            lines += ["", f"Ranges, graphopt / onnxruntime, {n} samples (lo and hi, median): "]
            lines[-1] += _agreement(g["ranges"], o["ranges"])
    if len(done) >= 2:
        (n0, t0), (n1, t1) = done[0], done[-1]
        lines += [
            "",
            f"graphopt collection, marginal cost: {(t1 - t0) / (n1 - n0) * 1000:.0f} ms per "
            f"sample (between {n0} and {n1} samples).",
        ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
