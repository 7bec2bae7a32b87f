"""Instruments around every pass run, and the typed record a pass run yields.

The runner runs passes; what happens around each one (showing progress, verifying the outputs,
keeping dumps, leaving a reproducer when a pass fails) is an :class:`Instrument` with hooks
the runner calls in order, as MLIR's PassInstrumentation does. An instrument sees the run
(:class:`RunState`: the model, its current snapshot, the DATA) and the pass's
:class:`PassRecord`; the record becomes one entry of the report's ``passes``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from graphopt.accuracy import verify
from graphopt.accuracy.budget import Budget
from graphopt.core.pass_base import GraphoptPass, PassContext
from graphopt.core.pipeline import PassStep, Pipeline
from graphopt.errors import DataError, GraphoptError, RuntimeFailure, VerificationError
from graphopt.inputs.data import Samples
from graphopt.runtime import Snapshot

#: what to do when a lossy pass loses more than its tolerance allows
LOSSY_HINT = (
    "the pass is lossy by design and this model loses more at these settings: ask for less "
    "(lower sparsity or ratio, more clusters), leave sensitive layers out (exclude=[...], "
    "skip_sensitive), or add reconstruct; a cosine near 0 means a graphopt bug: report the "
    "reproducer"
)
Listener = Callable[[str, dict[str, Any]], None]


@dataclasses.dataclass
class PassRecord:
    """One pass run: what it was, what it did and what the instruments found after it. The
    report holds :meth:`to_dict` of each (``graphopt.report/1``'s ``passes`` entries)."""

    index: int
    name: str
    step: str
    round: str | None
    tolerance: dict[str, Any]
    modified: bool = False
    seconds: float = 0.0
    stats: dict[str, int] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    left_alone: dict[str, Any] = dataclasses.field(default_factory=dict)
    inserted: str | None = None  # why the runner put this pass in
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    delta: dict[str, Any] = dataclasses.field(default_factory=dict)
    unchanged: str | None = None  # why a pass that changed nothing did not act
    silent: bool = False  # changed nothing and gave no reason (a graphopt bug)
    verify: dict[str, Any] | None = None  # against the previous model
    vs_reference: dict[str, float] | None = None  # against the input model, worst output
    dump: str | None = None

    @classmethod
    def of(cls, pass_: GraphoptPass, index: int, step: PassStep, round_info: str | None):
        return cls(index, step.name, str(step), round_info, pass_.tolerance.to_dict())

    def take_findings(self, pass_: GraphoptPass) -> None:
        """The pass's counters and findings, as it left them."""
        self.stats = dict(pass_.stats)
        findings = pass_.findings
        self.details = dict(findings.data)
        self.notes = list(findings.notes)
        self.left_alone = dict(findings.left_alone)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "pass": self.name,
            "step": self.step,
            "round": self.round,
            "modified": self.modified,
            "seconds": self.seconds,
            "stats": self.stats,
            "tolerance": self.tolerance,
        }
        optional = {
            "details": self.details,
            "notes": self.notes,
            "left_alone": self.left_alone,
            "inserted": self.inserted,
        }
        out.update({k: v for k, v in optional.items() if v})
        out["summary"] = self.summary
        out["delta"] = self.delta
        later = {
            "unchanged": self.unchanged,
            "silent": self.silent,
            "verify": self.verify,
            "vs_reference": self.vs_reference,
            "dump": self.dump,
        }
        out.update({k: v for k, v in later.items() if v})
        return out


class RunState(Protocol):
    """What instruments see of a run (the runner)."""

    pipeline: Pipeline
    context: PassContext
    snapshot: Snapshot  # the model as it was before the pass now running


class Instrument:
    """Hooks around a pipeline run; each does nothing unless overridden."""

    def run_started(self, run: RunState) -> None:
        """Before the first pass: ``run.snapshot`` is the input model."""

    def before_pass(self, run: RunState, record: PassRecord) -> None:
        """A pass is about to run."""

    def after_modified(
        self, run: RunState, record: PassRecord, pass_: GraphoptPass, snap: Snapshot
    ) -> None:
        """A pass changed the model, now ``snap``; ``run.snapshot`` is still the one before.
        Raising stops the run."""

    def after_pass(self, run: RunState, record: PassRecord) -> None:
        """A pass ran (changed or not); its record is complete."""


class Progress(Instrument):
    """Tells a listener (the CLI's progress bar) which pass runs and when it ends."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def before_pass(self, run: RunState, record: PassRecord) -> None:
        self.listener("start", {"index": record.index, "pass": record.name, "step": record.step})

    def after_pass(self, run: RunState, record: PassRecord) -> None:
        self.listener("end", record.to_dict())


class Reproducers(Instrument):
    """Leaves, for a pass that fails, its input model, pipeline, inputs and the command that
    reruns it alone (in the dump folder, else a temp folder)."""

    def __init__(self, folder: Path | None, samples: Samples | None) -> None:
        self.folder = folder
        self.samples = samples

    def write(
        self, run: RunState, record: PassRecord, reason: str, trace: str | None = None
    ) -> Path:
        base = self.folder or Path(tempfile.mkdtemp(prefix="graphopt-repro-"))
        folder = base / f"reproducer-{record.index:02d}-{record.name}"
        folder.mkdir(parents=True, exist_ok=True)
        model_path = run.snapshot.write(folder / "input.onnx")
        (folder / "pipeline.txt").write_text(record.step + "\n")
        (folder / "full-pipeline.txt").write_text(str(run.pipeline) + "\n")
        data_arg = ""
        if self.samples is not None:
            try:
                feeds = self.samples.feeds
                arrays = {name: np.stack([f[name] for f in feeds]) for name in feeds[0]}
                np.savez(folder / "inputs.npz", **arrays)
                data_arg = " --data inputs.npz"
            except ValueError:
                pass
        info = {"pass": record.name, "step": record.step, "reason": reason, "traceback": trace}
        (folder / "failure.json").write_text(json.dumps(info, indent=2) + "\n")
        (folder / "README.txt").write_text(
            f"Pass '{record.name}' failed: {reason}\n\nRerun it alone:\n"
            f"  graphopt optimize {model_path.name} -o out.onnx -p '{record.step}'{data_arg}\n"
        )
        return folder


class Dumps(Instrument):
    """Keeps the input model and the model after every pass that changed it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def run_started(self, run: RunState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        run.snapshot.write(self.folder / "00-input.onnx")

    def after_modified(
        self, run: RunState, record: PassRecord, pass_: GraphoptPass, snap: Snapshot
    ) -> None:
        path = snap.write(self.folder / f"{record.index:02d}-{record.name}.onnx")
        record.dump = str(path)


class VerifyEach(Instrument):
    """After every pass that changed the model: it still runs on ONNX Runtime CPU and its
    outputs on DATA's verification feeds are within the pass's tolerance of the previous
    model's (a lossy pass past it passes where the run's budget holds); else the run stops
    with a reproducer."""

    def __init__(self, samples: Samples, reproducers: Reproducers) -> None:
        self.samples = samples
        self.reproducers = reproducers
        self.reference: verify.Outputs | None = None
        self.previous: verify.Outputs | None = None
        self.noise: dict[str, float] = {}

    def run_started(self, run: RunState) -> None:
        try:
            self.reference = verify.run_reference(run.snapshot, self.samples.feeds)
            self.noise = verify.noise_floor(run.snapshot, self.samples.feeds, self.reference)
        except RuntimeFailure as exc:
            raise self._reference_failure(exc) from exc
        self.previous = self.reference

    def after_modified(
        self, run: RunState, record: PassRecord, pass_: GraphoptPass, snap: Snapshot
    ) -> None:
        assert self.previous is not None and self.reference is not None
        try:
            outputs = verify.run_reference(snap, self.samples.feeds)
        except RuntimeFailure as exc:
            repro = self.reproducers.write(run, record, exc.message)
            raise VerificationError(
                f"after pass '{record.name}' the model no longer runs on ONNX Runtime: "
                f"{exc.message} (reproducer: {repro})",
                pass_name=record.name,
                reproducer=str(repro),
            ) from exc
        vs_prev = verify.compare(outputs, self.previous, pass_.tolerance, self.noise)
        if not vs_prev["passed"] and pass_.tolerance.lossy and run.context.budget:
            self._judge_by_budget(run.context.budget, vs_prev, outputs)
            held = vs_prev.get("budget")
            if held and held["met"]:
                cos = verify.worst(vs_prev)["cosine"]
                record.notes.append(
                    f"verified by the run's budget {held['budget']} ({held['value']:.6g} on "
                    f"the verification feeds): outputs moved past the pass's own tolerance "
                    f"(cosine {_fmt(cos)})"
                )
        record.verify = vs_prev
        record.vs_reference = verify.worst(verify.compare(outputs, self.reference))
        if not vs_prev["passed"]:
            bad = [n for n, m in vs_prev["outputs"].items() if not m.get("passed")]
            worst = verify.worst(vs_prev)
            detail = vs_prev.get("error") or (
                f"output{'s' if len(bad) > 1 else ''} {', '.join(bad)}: "
                f"max_abs={_fmt(worst['max_abs'])} max_rel={_fmt(worst['max_rel'])} "
                f"cosine={_fmt(worst['cosine'])}"
            )
            repro = self.reproducers.write(run, record, detail)
            raise VerificationError(
                f"pass '{record.name}' changed the outputs beyond its tolerance: {detail}"
                f" (tolerance {pass_.tolerance.to_dict()}; reproducer: {repro})",
                pass_name=record.name,
                reproducer=str(repro),
                hint=LOSSY_HINT if pass_.tolerance.lossy else None,
            )
        self.previous = outputs

    def _judge_by_budget(self, text: str, vs_prev: dict[str, Any], outputs: verify.Outputs) -> None:
        """A lossy pass beyond its generic tolerance passes if the run's budget holds.

        The user's budget (a task metric: detections, top-1) says what accuracy means for
        this model; a detector's raw box outputs can lose cosine where its detections do not.
        Measured against the original model's outputs on the verification feeds.
        """
        assert self.reference is not None
        try:
            budget = Budget.parse(text)
        except ValueError:  # a form only tune resolves (relative to the original)
            return
        value = budget.measure(self.reference.per_feed, outputs.per_feed, self.samples)
        held = budget.holds(value)
        vs_prev["budget"] = {"budget": str(budget), "value": value, "met": held}
        if held:
            vs_prev["passed"] = True

    def _reference_failure(self, exc: RuntimeFailure) -> GraphoptError:
        """Why the input model did not run on the verification feeds. Feeds graphopt made up
        are blamed before the model: they may hold indices, counts or axes it cannot know."""
        source = self.samples.source
        if source.startswith("random("):
            return DataError(
                f"the model does not run on graphopt's random inputs ({source}): {exc.message}",
                hint="give real inputs with --data DATA (integer inputs may be indices, "
                "counts or axes graphopt cannot guess), sizes with --dim NAME=N, "
                "or use --no-verify",
            )
        return RuntimeFailure(
            f"the input model does not run on ONNX Runtime CPU with the verification inputs "
            f"({source}), so it cannot be verified: {exc.message}",
            hint="check that the inputs match the model (names, dtypes, shapes, index "
            "ranges); if they do, the model itself fails in ONNX Runtime: re-export it, or "
            "use --no-verify",
        )

    def section(self) -> dict[str, Any]:
        """The report's ``verify`` section."""
        return {
            "enabled": True,
            "inputs": self.samples.source,
            "feeds": len(self.samples),
            "reference": "onnxruntime CPUExecutionProvider, graph optimizations disabled",
            # per output: how far ORT's own optimizations move it (widens reassociation
            # tolerances to NOISE_FACTOR times this)
            "noise_floor": self.noise,
        }


def _fmt(v: float) -> str:
    return str(v) if math.isinf(v) or math.isnan(v) else f"{v:.3g}"
