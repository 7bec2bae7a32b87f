"""Measurement for ``graphopt bench``: latency, throughput, memory and accuracy of models.

How the numbers are taken, and why:

* Every model gets the same inputs: the first rows of DATA (or seeded random feeds) cut or
  repeated along the batch axis to each batch size.
* Per execution provider, one session per model is built (timed). Per batch size, every model
  is warmed up, then ``rounds`` rounds run in which the models take turns (round-robin, the
  starting model rotating each round), each doing ``repeat`` timed runs. Slow drift of the
  machine (another job, thermal state) so hits every model alike.
* p50/p90/p99 are over all timed runs of a model; the spread is the min/max of the per-round
  medians. The ratio to the reference (the first model) is taken round by round, then the
  median of those ratios is reported: never a ratio of numbers from different moments.
* Memory: ``rss_build_delta_bytes`` is the growth of the process RSS while a model's session
  was built; ``peak_rss_delta_bytes`` is the process high-water mark during a batch's warm-up
  runs above the RSS just before them (the mark is reset through /proc/self/clear_refs where
  the kernel allows it, else it is None). The process peak over the whole run is reported too.
  These are process-wide numbers: allocator and arena memory kept from earlier work is not
  counted again.
* On GPU providers, inputs are bound on the device once (IO binding) so the timed runs do not
  include host-to-device copies; device memory in use by this process is read from NVML or
  ``nvidia-smi`` when present.
* Accuracy: every model's outputs against the reference model's on the same provider and the
  same inputs (all of DATA, or ``samples`` rows of it, run in chunks of the largest batch).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import ir as gir
from graphopt import runtime
from graphopt.bench.compare import compare, task_metric
from graphopt.bench.machine import (
    gpu_memory_bytes,
    machine,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)
from graphopt.bench.timing import (
    latency_stats,
    ratio_to_reference,
    time_round_robin,
)
from graphopt.errors import DataError, GraphoptError, RuntimeFailure, UsageError
from graphopt.inputs import data as gdata

SCHEMA = "graphopt.bench/1"
Feed = dict[str, np.ndarray]
TOPK = (1, 5)


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass
class BenchSettings:
    """What ``graphopt bench`` was asked to do (recorded in the report as given)."""

    models: list[Path]
    eps: list[str] = dataclasses.field(default_factory=lambda: ["cpu"])
    batches: list[int] = dataclasses.field(default_factory=lambda: [1])
    threads: int | None = None
    data: str | None = None
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    warmup: int = 5
    repeat: int = 20
    rounds: int = 3
    seed: int = 0
    metric: str | None = None
    samples: int = 0  # rows of DATA for accuracy (0: all)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = [str(p) for p in self.models]
        return d


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; anything else is a UsageError naming the bad item."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise UsageError(f"--batch expects positive integers separated by commas, got {text!r}")
        if int(item) not in out:
            out.append(int(item))
    return out


def check_metric(metric: str | None, data: str | None) -> None:
    """Fail early on an unknown metric name or one that needs labels without DATA."""
    if not metric:
        return
    from graphopt.accuracy.budget import _BUILTIN, Budget

    op = _BUILTIN.get(metric, ">=")
    try:
        Budget.parse(f"{metric}{op}0")
    except ValueError as exc:
        raise UsageError(f"--metric: {exc}".replace(f"{op}0", "")) from None
    if metric == "top1" and not data:
        raise UsageError("--metric top1 needs labels: pass --data with a 'label' array")


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class Inputs:
    """The rows every model sees: a pool along the batch axis, cut to each batch size."""

    pool: Feed  # each batch-axis input holds at least max(batches) rows
    batch_inputs: list[str]  # inputs whose first dim is symbolic (the batch axis)
    accuracy: gdata.Samples  # feeds (chunks of the pool rows) for accuracy and the task metric
    source: str

    def feed(self, batch: int) -> Feed:
        return {k: _rows(v, batch) if k in self.batch_inputs else v for k, v in self.pool.items()}


def _rows(arr: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of ``arr``, repeating it cyclically where it has fewer."""
    if arr.shape[0] >= n:
        return arr[:n]
    return arr[np.arange(n) % arr.shape[0]]


def make_inputs(model: Any, settings: BenchSettings) -> Inputs:
    specs = gdata.input_specs(model)
    batch_inputs = [s.name for s in specs if s.dims and not isinstance(s.dims[0], int)]
    biggest = max(settings.batches)
    if not batch_inputs and settings.batches != [1]:
        raise UsageError(
            "--batch: the model has no input with a symbolic first dimension, so its batch "
            "size is fixed; leave --batch at 1"
        )
    batch_names = {gdata.dim_key(s, 0) for s in specs if s.name in batch_inputs and s.dims}
    clash = sorted(n for n in batch_names if n and n in settings.dims)
    if clash:
        raise UsageError(f"--dim {clash[0]}: that is the batch dimension; set it with --batch")
    if settings.data:
        loaded = gdata.load_data(model, settings.data, batch=1)
        pool: Feed = {}
        for s in specs:
            parts = [f[s.name] for f in loaded.feeds]
            if s.name in batch_inputs:
                pool[s.name] = np.concatenate(parts, axis=0)
            else:
                pool[s.name] = parts[0]
        extras = dict(loaded.extras)
        source = f"{loaded.source} ({len(loaded.feeds)} feeds)"
    else:
        # sizes the model runs with for its other dynamic dims (a detector's height and
        # width), then the batch
        from graphopt.inputs import probe

        found = probe.choose(model, dims=settings.dims, count=1, seed=settings.seed).dims
        dims = {**found, **settings.dims, **dict.fromkeys(batch_names, biggest)}
        pool = gdata.random_feeds(model, count=1, seed=settings.seed, dims=dims).feeds[0]
        extras = {}
        source = f"random(seed={settings.seed})"
    rows = min((pool[n].shape[0] for n in batch_inputs), default=1)
    if settings.samples and batch_inputs:
        rows = min(rows, settings.samples)
        pool = {k: v[:rows] if k in batch_inputs else v for k, v in pool.items()}
        extras = {k: v[:rows] if v.ndim and v.shape[0] >= rows else v for k, v in extras.items()}
    # accuracy feeds: all pool rows (at least the largest batch) in chunks of the largest batch
    total = max(rows, biggest) if batch_inputs else 1
    full = {k: _rows(v, total) if k in batch_inputs else v for k, v in pool.items()}
    step = biggest if batch_inputs else 1
    chunks = [
        {k: v[start : start + step] if k in batch_inputs else v for k, v in full.items()}
        for start in range(0, total, step)
    ]
    label = extras.get("label")
    if label is not None and label.ndim and label.shape[0] == rows and total > rows:
        extras["label"] = _rows(label, total)
    pool = {k: _rows(v, biggest) if k in batch_inputs else v for k, v in pool.items()}
    return Inputs(pool, batch_inputs, gdata.Samples(chunks, source, extras), source)


# ----------------------------------------------------------------------------- sessions


@dataclasses.dataclass
class Runner:
    """One model's session on one provider, with a timed ``run`` for a bound feed."""

    name: str
    session: Any
    ep: str
    build_s: float
    rss_build_delta_bytes: int | None
    io_binding: bool = False
    _run: Callable[[], Any] | None = None

    def bind(self, feed: Feed) -> None:
        """Prepare ``run()`` for ``feed``: IO binding with device-resident inputs on GPU."""
        sess = self.session
        if self.ep == "cpu":
            names = [o.name for o in sess.get_outputs()]
            self._run = lambda: sess.run(names, feed)
            return
        rt = runtime.ort()
        binding = sess.io_binding()
        for name, arr in feed.items():
            binding.bind_ortvalue_input(name, rt.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cuda")

        def run() -> None:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        self.io_binding = True
        self._run = run

    def run(self) -> Any:
        assert self._run is not None, "bind() a feed first"
        return self._run()

    def outputs(self, feeds: Sequence[Feed]) -> list[list[np.ndarray]]:
        return runtime.run_feeds(self.session, feeds)


def absorb_first_session(ep: str, threads: int | None) -> None:
    """Build a throwaway one-node session so that one-time provider setup (thread pools,
    CUDA context) is not charged to the first model's build time and memory."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "warm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    rt = runtime.ort()
    try:
        sess = rt.InferenceSession(
            proto.SerializeToString(),
            sess_options=runtime.session_options(threads=threads),
            providers=runtime.providers_for(ep),
        )
        sess.run(None, {"x": np.zeros(1, np.float32)})
    except Exception:  # only a warm-up: the real builds report real failures
        pass


def build_runner(path: Path, name: str, ep: str, threads: int | None) -> Runner:
    before = rss_bytes()
    t0 = time.perf_counter()
    sess = runtime.make_session(path, ep=ep, threads=threads, strict_ep=True)
    build_s = time.perf_counter() - t0
    after = rss_bytes()
    delta = after - before if before is not None and after is not None else None
    return Runner(name, sess, ep, build_s, delta)


def ep_unavailable(ep: str) -> str | None:
    """Why ``ep`` cannot run here, or None when onnxruntime offers it."""
    available = runtime.ort().get_available_providers()
    if runtime.EP_NAMES[ep] not in available:
        return (
            f"{runtime.EP_NAMES[ep]} is not available in this onnxruntime "
            f"(it has {', '.join(available)})"
        )
    return None


# ----------------------------------------------------------------------------- corpus benchmarks


def corpus_bench_main(
    argv: list[str] | None,
    *,
    doc: str,
    stem: str,
    models: Sequence[str],
    run_model: Callable[[str, Path, int], dict[str, Any]],
    markdown: Callable[[list[dict[str, Any]], dict[str, Any], int], str],
    out: Path,
) -> int:
    """The command line the corpus benchmarks share: ``--models a,b --rounds N --work DIR
    --out DIR``; one ``run_model`` per model, ``<stem>.json`` and ``<stem>.md`` rewritten
    after every model (a later model's failure keeps what was measured)."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--models", default=",".join(models))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--work", type=Path, default=Path(f"/tmp/graphopt-bench-{stem}"))
    ap.add_argument("--out", type=Path, default=out)
    args = ap.parse_args(argv)
    env = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    md = ""
    for name in args.models.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        results.append(run_model(name, args.work, args.rounds))
        record = {"env": env, "rounds": args.rounds, "results": results}
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str))
        md = markdown(results, env, args.rounds)
        (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


# ----------------------------------------------------------------------------- the run


def model_names(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique with ``#2``, ``#3`` where they repeat."""
    names: list[str] = []
    for p in paths:
        base = p.name.removesuffix(".onnx") or p.name
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def run_bench(
    settings: BenchSettings, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure every model on every EP and batch size; returns the report (schema below)."""
    say = log or (lambda _msg: None)
    if not settings.models:
        raise UsageError("bench needs at least one MODEL")
    check_metric(settings.metric, settings.data)
    models = [gir.load_model(p) for p in settings.models]
    ref_inputs = [(s.name, s.dtype) for s in gdata.input_specs(models[0])]
    for path, m in zip(settings.models[1:], models[1:], strict=True):
        got = [(s.name, s.dtype) for s in gdata.input_specs(m)]
        if got != ref_inputs:
            raise DataError(
                f"{path}: inputs {[n for n, _ in got]} differ from the reference model's "
                f"{[n for n, _ in ref_inputs]}; bench feeds every model the same inputs"
            )
    names = model_names(settings.models)
    inputs = make_inputs(models[0], settings)
    del models
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "settings": settings.to_dict(),
        "inputs": {
            "source": inputs.source,
            "batch_inputs": inputs.batch_inputs,
            "accuracy_feeds": len(inputs.accuracy.feeds),
            "accuracy_rows": int(
                sum(f[inputs.batch_inputs[0]].shape[0] for f in inputs.accuracy.feeds)
            )
            if inputs.batch_inputs
            else len(inputs.accuracy.feeds),
        },
        "models": [
            {"name": n, "path": str(p), "bytes": _model_bytes(p), "reference": i == 0}
            for i, (n, p) in enumerate(zip(names, settings.models, strict=True))
        ],
        "eps": [],
        "results": [],
        "memory": {},
    }
    peak_reset = reset_peak_rss()
    for ep in settings.eps:
        why = ep_unavailable(ep)
        runners: list[Runner] = []
        if why is None:
            try:
                absorb_first_session(ep, settings.threads)
                for p, n in zip(settings.models, names, strict=True):
                    say(f"{ep}: building session for {n}")
                    runners.append(build_runner(p, n, ep, settings.threads))
            except RuntimeFailure as exc:
                if ep == "cpu":
                    raise
                why = str(exc).splitlines()[0]
        if why is not None:
            say(f"{ep}: skipped ({why})")
            report["eps"].append({"ep": ep, "status": "skipped", "reason": why})
            continue
        sess0 = runners[0].session
        report["eps"].append(
            {
                "ep": ep,
                "status": "ok",
                "providers": sess0.get_providers(),
                "provider_options": sess0.get_provider_options(),
                "io_binding": ep != "cpu",
            }
        )
        report["results"].extend(_bench_ep(ep, runners, inputs, settings, say, peak_reset))
        del runners
    report["memory"] = {
        "process_peak_rss_bytes": peak_rss_bytes(),
        "peak_reset_supported": peak_reset,
        "note": "process-wide numbers from /proc/self/status; see graphopt.bench.harness",
    }
    if not report["results"]:
        skipped = "; ".join(f"{e['ep']}: {e['reason']}" for e in report["eps"])
        raise RuntimeFailure(f"no execution provider could run ({skipped})")
    return report


def _model_bytes(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _bench_ep(
    ep: str,
    runners: list[Runner],
    inputs: Inputs,
    settings: BenchSettings,
    say: Callable[[str], None],
    peak_reset: bool,
) -> list[dict[str, Any]]:
    # accuracy first: every model on the same accuracy feeds, against the reference
    say(f"{ep}: accuracy over {len(inputs.accuracy.feeds)} feed(s)")
    out_names = [o.name for o in runners[0].session.get_outputs()]
    outs = [r.outputs(inputs.accuracy.feeds) for r in runners]
    accuracy = []
    for i in range(len(runners)):
        acc = compare(out_names, outs[0], outs[i])
        if settings.metric:
            try:
                acc["metric"] = {
                    "name": settings.metric,
                    "value": task_metric(settings.metric, outs[0], outs[i], inputs.accuracy),
                }
            except GraphoptError:
                raise
            except Exception as exc:  # a user callback failed: say which, keep going
                acc["metric"] = {"name": settings.metric, "error": f"{type(exc).__name__}: {exc}"}
        accuracy.append(acc)
    rows = []
    for batch in settings.batches:
        feed = inputs.feed(batch)
        mem: list[dict[str, Any]] = []
        for r in runners:
            r.bind(feed)
            before = rss_bytes()
            if peak_reset:
                reset_peak_rss()
            r.run()  # first run at this batch size: allocations happen here
            hwm = peak_rss_bytes() if peak_reset else None
            mem.append(
                {
                    "rss_build_delta_bytes": r.rss_build_delta_bytes,
                    "peak_rss_delta_bytes": hwm - before
                    if hwm is not None and before is not None
                    else None,
                    "gpu_bytes": gpu_memory_bytes() if ep != "cpu" else None,
                }
            )
        say(f"{ep}: batch {batch}: {settings.rounds} round(s) x {settings.repeat} run(s)")
        times = time_round_robin(
            runners, warmup=settings.warmup, repeat=settings.repeat, rounds=settings.rounds
        )
        for i, r in enumerate(runners):
            row: dict[str, Any] = {
                "model": r.name,
                "model_index": i,
                "ep": ep,
                "batch": batch,
                "build_s": r.build_s,
                "io_binding": r.io_binding,
            }
            row.update(latency_stats(times[i], batch))
            row["ratio_to_reference"] = ratio_to_reference(times[i], times[0])
            row["memory"] = mem[i]
            row["accuracy"] = accuracy[i]
            rows.append(row)
    return rows
