"""Building and scoring one ``graphopt tune`` candidate, and timing it against the original.

:func:`build_and_score` is a plain function of a JSON-able spec and file contents, so it runs
the same in this process and as a Ray task on another machine: it optimizes the model with
the calibration DATA, runs the result on the held-out feeds and measures the budget's metric
there. Latency is never measured here: it is taken on the target machine, against the
original, by :func:`runoff`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import errors

#: how long each model runs in one round of a paired measurement: long enough that a round's
#: median is steady for a model of tens of microseconds
ROUND_SECONDS = 0.2

#: passes that every pipeline runs; a candidate whose other passes all declined is not one
CLEANUP_PASSES = frozenset(
    {
        "remove-initializer-inputs",
        "lift-constants",
        "capture-loop-invariants",
        "fold-constants",
        "eliminate-identity",
        "fold-batchnorm",
        "fuse-hardswish",
        "eliminate-common-subexpressions",
        "deduplicate-initializers",
        "eliminate-dead-code",
        "infer-shapes",
        "sort-topologically",
        "fold-attention-biases",
        "avoid-slow-fusions",
        "convert-opset",
        "move-stride-to-channels",
    }
)


# ----------------------------------------------------------------------------- samples files
def save_samples(path: Path, samples: Any, outputs: Sequence[Sequence[np.ndarray]] = ()) -> None:
    """Feeds (one key per feed and input), extras and optional reference outputs in one .npz,
    read back exactly by :func:`load_samples`: feeds may differ in shape (a DATA .npz stacks
    them, so it cannot hold images of several widths), and labels stay with their feeds."""
    arrays: dict[str, np.ndarray] = {}
    for i, feed in enumerate(samples.feeds):
        for name, arr in feed.items():
            arrays[f"feed/{i}/{name}"] = np.asarray(arr)
    for key, arr in samples.extras.items():
        arrays[f"extra/{key}"] = np.asarray(arr)
    for i, outs in enumerate(outputs):
        for k, arr in enumerate(outs):
            arrays[f"out/{i}/{k}"] = np.asarray(arr)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_samples(path: Path, source: str) -> tuple[Any, list[list[np.ndarray]]]:
    """(Samples, reference outputs) from :func:`save_samples`'s file."""
    from graphopt.inputs.data import Samples

    feeds: dict[int, dict[str, np.ndarray]] = {}
    outs: dict[int, dict[int, np.ndarray]] = {}
    extras: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            kind, _, rest = key.partition("/")
            if kind == "feed":
                i, _, name = rest.partition("/")
                feeds.setdefault(int(i), {})[name] = npz[key]
            elif kind == "out":
                i, _, k = rest.partition("/")
                outs.setdefault(int(i), {})[int(k)] = npz[key]
            else:
                extras[rest] = npz[key]
    samples = Samples([feeds[i] for i in sorted(feeds)], source, extras)
    reference = [[o[k] for k in sorted(o)] for _, o in sorted(outs.items())]
    return samples, reference


# ----------------------------------------------------------------------------- one candidate
def build_and_score(spec: dict[str, Any], files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Build ``spec['pipeline']`` on ``spec['model']`` with ``spec['calib']`` and score it on
    ``spec['eval']`` (held-out feeds and the original's outputs on them) with
    ``spec['judge']`` (an absolute budget). With ``files`` (name -> bytes) the inputs are
    shipped, not shared: they are written to a temp folder first and the model comes back as
    ``result['model_bytes']``. Returns the candidate's fields to update."""
    if files:
        with tempfile.TemporaryDirectory(prefix="graphopt-tune-") as tmp:
            local = dict(spec)
            for key in ("model", "calib", "eval"):
                p = Path(tmp) / Path(spec[key]).name
                p.write_bytes(files[key])
                local[key] = str(p)
            local["output"] = str(Path(tmp) / "candidate.onnx")
            result = build_and_score(local)
            out = Path(local["output"])
            if out.is_file():
                result["model_bytes"] = out.read_bytes()
            return result
    from graphopt import runtime
    from graphopt.accuracy.budget import Budget
    from graphopt.optimize import optimize

    judge = Budget.parse(spec["judge"])
    calib, _ = load_samples(Path(spec["calib"]), "calibration feeds")
    t0 = time.perf_counter()
    try:
        res = optimize(
            spec["model"],
            spec["pipeline"],
            data=calib,
            target=spec["target"],
            budget=spec.get("budget") or None,
            output=spec["output"],
            verify=False,
            calib_cache=spec.get("calib_cache"),
        )
    except errors.GraphoptError as exc:
        return {"status": "failed", "why": exc.message}
    out: dict[str, Any] = {
        "build_seconds": time.perf_counter() - t0,
        "notes": res.notes,
        "file_bytes": res.report.get("output", {}).get("bytes"),
    }
    for rec in res.records:
        macs = rec.details.get("macs")
        if rec.name == "prune-channels" and isinstance(macs, dict):
            out["macs"] = [macs.get("before"), macs.get("after")]
        if rec.name == "qdq-insert":
            out["smoothed"] = int(rec.stats.get("smoothed_matmuls", 0))
    acted = [r for r in res.records if r.modified and r.name not in CLEANUP_PASSES]
    if not acted and not spec.get("float_form"):
        declined = [f"{r.name}: {r.unchanged}" for r in res.records if r.unchanged]
        out["status"] = "failed"
        out["why"] = "not applicable: " + ("; ".join(declined) or "no pass changed the model")
        return out
    evaluation, reference = load_samples(Path(spec["eval"]), "held-out feeds")
    ep = "cpu" if spec["target"] == "cpu" else "cuda"
    try:
        sess = runtime.make_session(spec["output"], ep=ep, optimize=True)
        got = runtime.run_feeds(sess, evaluation.feeds)
    except errors.GraphoptError as exc:
        out["status"], out["why"] = "failed", f"does not run on {ep}: {exc.message}"
        return out
    out["accuracy"] = float(judge.measure(reference, got, evaluation))
    if judge.holds(out["accuracy"]):
        out["status"] = "within-budget"
    else:
        out["status"] = "over-budget"
        out["why"] = f"{judge.metric} {out['accuracy']:.6g} misses {judge} on held-out data"
    return out


def build_shipped(
    spec: dict[str, Any], model: bytes, calib: bytes, evaluation: bytes
) -> dict[str, Any]:
    """:func:`build_and_score` on inputs shipped as bytes (each its own argument, so Ray
    resolves them from its object store); the model comes back as ``model_bytes``."""
    return build_and_score(spec, {"model": model, "calib": calib, "eval": evaluation})


# ----------------------------------------------------------------------------- latency
def runoff(
    original: Any, candidates: Sequence[Any], feed: dict[str, np.ndarray], rounds: int
) -> list[list[float]]:
    """Latency ratio of each candidate session to the original one, all taking turns in the
    same rounds, the order rotated every round and reversed every other one (so no session
    always follows the same one: a model run right after a large one can find the caches
    cold); one list of per-round ratios per candidate (a single candidate makes a paired
    measurement)."""
    from graphopt import runtime

    sessions = [original, *candidates]
    n = len(sessions)
    ratios: list[list[float]] = [[] for _ in candidates]
    for r in range(rounds):
        order = [(i + r) % n for i in range(n)]
        if r % 2:
            order.reverse()
        per = runtime.interleaved_latency(
            [sessions[i] for i in order], feed, rounds=1, min_round_seconds=ROUND_SECONDS
        )[0]
        times = dict(zip(order, per, strict=True))
        for k in range(len(candidates)):
            ratios[k].append(times[k + 1] / times[0])
    return ratios
