"""The runner: runs a pipeline pass by pass with instruments between the passes.

It owns the loop (instead of onnx_ir's PassManager) so that after every pass it can time it,
count ops, bytes and dtypes, serialize the model once, check it still loads and computes the
same outputs within the pass's tolerance, keep a dump, and on failure leave a reproducer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import ir as gir
from graphopt.accuracy import verify
from graphopt.accuracy.budget import Budget
from graphopt.core import registry
from graphopt.core.pass_base import GraphoptPass, PassContext
from graphopt.core.pipeline import PassStep, Pipeline, RepeatGroup
from graphopt.core.report import pipeline_report
from graphopt.errors import (
    DataError,
    GraphoptError,
    PassFailure,
    PipelineError,
    RuntimeFailure,
    VerificationError,
)
from graphopt.inputs.data import Samples
from graphopt.runtime import Snapshot

#: the pass the runner inserts before a pass that needs a newer opset
CONVERT = "convert-opset"
#: what to do when a lossy pass loses more than its tolerance allows
LOSSY_HINT = (
    "the pass is lossy by design and this model loses more at these settings: ask for less "
    "(lower sparsity or ratio, more clusters), leave sensitive layers out (exclude=[...], "
    "skip_sensitive), or add reconstruct; a cosine near 0 means a graphopt bug: report the "
    "reproducer"
)
#: the passes it inserts before a pass that needs constant-initializer weights
LIFT = ("remove-initializer-inputs", "lift-constants")
Listener = Callable[[str, dict[str, Any]], None]


def _step(name: str, **options: Any) -> PassStep:
    """A step the runner inserts (its options validated like parsed ones)."""
    return PassStep(name, registry.get_pass(name).Options(**options))


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    ops = {}
    for op in sorted(set(before["ops"]) | set(after["ops"])):
        d = after["ops"].get(op, 0) - before["ops"].get(op, 0)
        if d:
            ops[op] = d
    return {
        "nodes": after["nodes"] - before["nodes"],
        "initializers": after["initializers"] - before["initializers"],
        "initializer_bytes": after["initializer_bytes"] - before["initializer_bytes"],
        "serialized_bytes": after.get("serialized_bytes", 0) - before.get("serialized_bytes", 0),
        "ops": ops,
    }


@dataclasses.dataclass
class RunResult:
    model: ir.Model
    report: dict[str, Any]

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.report["passes"]


class Runner:
    """Runs a :class:`Pipeline` on a model, in place, with verify-each and dumps."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        context: PassContext | None = None,
        samples: Samples | None = None,
        verify_each: bool = True,
        dump_dir: str | os.PathLike[str] | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.context = context or PassContext()
        self.samples = samples
        self.verify_each = verify_each and samples is not None
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.listener = listener or (lambda event, info: None)
        self._records: list[dict[str, Any]] = []
        self._index = 0

    def _reference_failure(self, exc: RuntimeFailure) -> GraphoptError:
        """Why the input model did not run on the verification feeds. Feeds graphopt made up
        are blamed before the model: they may hold indices, counts or axes it cannot know."""
        assert self.samples is not None
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

    # ------------------------------------------------------------------ entry point
    def run(self, model: ir.Model, *, source: str | None = None) -> RunResult:
        self._check_needs()
        self._model = model  # every pass mutates this one object in place
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._snapshot = Snapshot.of(model)
        before = gir.summarize(model, sparsity=True)
        before["serialized_bytes"] = self._snapshot.size
        self._summary = before
        self._reference: verify.Outputs | None = None
        self._noise: dict[str, float] = {}
        if self.verify_each:
            assert self.samples is not None
            try:
                self._reference = verify.run_reference(self._snapshot, self.samples.feeds)
                self._noise = verify.noise_floor(
                    self._snapshot, self.samples.feeds, self._reference
                )
            except RuntimeFailure as exc:
                raise self._reference_failure(exc) from exc
        self._previous = self._reference
        if self.dump_dir is not None:
            self._snapshot.write(self.dump_dir / "00-input.onnx")
        self._own_reference = False
        try:
            self._run_items(self.pipeline.items, round_info=None)
        finally:
            if self._own_reference:  # the runner set it for this run only
                if self.context.reference is not self._snapshot:
                    self.context.reference.close()
                self.context.reference = None
        after = gir.summarize(model, sparsity=True)
        after["serialized_bytes"] = self._snapshot.size
        self._snapshot.close()
        report = pipeline_report(
            source=source,
            pipeline=str(self.pipeline),
            target=self.context.target,
            verify={
                "enabled": self.verify_each,
                "inputs": self.samples.source if self.samples is not None else None,
                "feeds": len(self.samples) if self.samples is not None else 0,
                "reference": "onnxruntime CPUExecutionProvider, graph optimizations disabled",
                # per output: how far ORT's own optimizations move it (widens reassociation
                # tolerances to NOISE_FACTOR times this)
                "noise_floor": self._noise,
            },
            seconds=time.perf_counter() - started,
            before=before,
            after=after,
            passes=self._records,
        )
        if self._reference is not None and self._records:
            last = next((r for r in reversed(self._records) if "vs_reference" in r), None)
            report["verify"]["final_vs_reference"] = last["vs_reference"] if last else None
        return RunResult(model, report)

    def _check_needs(self) -> None:
        for step in self.pipeline.steps():
            needs = step.pass_class.needs
            if "data" in needs and self.context.data is None:
                raise PipelineError(f"pass '{step.name}' needs calibration data: give --data DATA")

    # ------------------------------------------------------------------ the loop
    def _run_items(self, items: tuple[Any, ...], round_info: str | None) -> bool:
        changed = False
        for item in items:
            if isinstance(item, RepeatGroup):
                changed |= self._run_group(item, round_info)
            else:
                changed |= self._run_step(item, round_info)
        return changed

    def _run_group(self, group: RepeatGroup, outer: str | None) -> bool:
        changed_any = False
        for k in range(1, group.times + 1):
            label = f"repeat<{group.times}> round {k}"
            if outer:
                label = f"{outer} / {label}"
            changed = self._run_items(group.items, label)
            changed_any |= changed
            if not changed:
                break
        return changed_any

    def _run_step(
        self, step: PassStep, round_info: str | None, *, inserted_for: str | None = None
    ) -> bool:
        pass_ = step.build(self.context)
        if pass_.constant_weights and inserted_for is None:
            self._lift_weights(step.name, round_info)
        need, have = pass_.required_opset(self._model), gir.ai_onnx_opset(self._model)
        if need > have and step.name != CONVERT:
            converted = self._upgrade(need, step.name, round_info)
            if not converted:
                return self._skip(step, pass_, round_info, need, have)
        self._index += 1
        index = self._index
        if step.pass_class.tolerance.lossy and self.context.reference is None:
            # what reconstruct fits back to: the model before the first lossy pass
            self.context.reference = self._snapshot
            self._own_reference = True
        self.listener("start", {"index": index, "pass": step.name, "step": str(step)})
        model_before = self._model
        t0 = time.perf_counter()
        try:
            result = pass_(model_before)
        except GraphoptError:
            raise
        except Exception as exc:  # a pass bug: name the pass and keep its input
            repro = self._write_reproducer(
                index, step, f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
            raise PassFailure(
                f"pass '{step.name}' failed: {type(exc).__name__}: {exc} (reproducer: {repro})",
                pass_name=step.name,
                reproducer=str(repro),
            ) from exc
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "index": index,
            "pass": step.name,
            "step": str(step),
            "round": round_info,
            "modified": bool(result.modified),
            "seconds": seconds,
            "stats": dict(pass_.stats),
            "tolerance": pass_.tolerance.to_dict(),
        }
        findings = pass_.findings
        if findings.data:
            record["details"] = findings.data
        if findings.notes:
            record["notes"] = list(findings.notes)
        if findings.left_alone:
            record["left_alone"] = dict(findings.left_alone)
        if inserted_for:
            record["inserted"] = inserted_for
        if result.modified:
            self._after_modified(index, step, pass_, record)
        else:
            record["summary"] = self._summary
            record["delta"] = _delta(self._summary, self._summary)
            self._explain_unchanged(pass_, record)
        self._records.append(record)
        self.listener("end", record)
        return bool(result.modified)

    @staticmethod
    def _explain_unchanged(pass_: GraphoptPass, record: dict[str, Any]) -> None:
        """A lossy pass asked to act that changed nothing says why; one without a reason is
        marked ``silent`` (a graphopt bug the zoo matrix fails on)."""
        if pass_.declined:
            record["unchanged"] = pass_.declined
        elif pass_.tolerance.lossy:
            record["unchanged"] = "changed nothing and gave no reason"
            record["silent"] = True

    def _lift_weights(self, for_pass: str, round_info: str | None) -> None:
        """Make weights constant initializers before a pass that reads them as such."""
        graph = self._model.graph
        why = f"{for_pass} reads weights as constant initializers"
        if any(v.is_initializer() for v in graph.inputs):
            self._run_step(_step(LIFT[0]), round_info, inserted_for=why)
        if any(
            n.op_type == "Constant" and n.domain in ("", "ai.onnx")
            for n in gir.iter_nodes(self._model)  # If/Loop bodies too: passes enter them
        ):
            self._run_step(_step(LIFT[1]), round_info, inserted_for=why)

    def _upgrade(self, need: int, for_pass: str, round_info: str | None) -> bool:
        """Convert the model to ai.onnx ``need`` before a pass that needs it (verified like any
        pass); False when the conversion is not possible."""
        why = f"{for_pass} needs ai.onnx opset {need}"
        before = len(self._records)
        self._run_step(_step(CONVERT, opset=need), round_info, inserted_for=why)
        record = self._records[before]
        return bool(record["modified"])

    def _skip(
        self, step: PassStep, pass_: GraphoptPass, round_info: str | None, need: int, have: int
    ) -> bool:
        self._index += 1
        conversion = self._records[-1].get("unchanged", "") if self._records else ""
        pass_.declined = (
            f"needs ai.onnx opset {need}; the model is at {have} and could not be converted"
            + (f" ({conversion})" if conversion else "")
        )
        record: dict[str, Any] = {
            "index": self._index,
            "pass": step.name,
            "step": str(step),
            "round": round_info,
            "modified": False,
            "seconds": 0.0,
            "stats": {},
            "tolerance": pass_.tolerance.to_dict(),
            "summary": self._summary,
            "delta": _delta(self._summary, self._summary),
            "unchanged": pass_.declined,
        }
        self.listener("start", {"index": self._index, "pass": step.name, "step": str(step)})
        self._records.append(record)
        self.listener("end", record)
        return False

    def _after_modified(
        self, index: int, step: PassStep, pass_: GraphoptPass, record: dict[str, Any]
    ) -> None:
        model = self._model
        try:
            snap = Snapshot.of(model)
        except Exception as exc:
            repro = self._write_reproducer(index, step, f"cannot serialize: {exc}", None)
            raise PassFailure(
                f"pass '{step.name}' produced a model that cannot be serialized: {exc}"
                f" (reproducer: {repro})",
                pass_name=step.name,
                reproducer=str(repro),
            ) from exc
        summary = gir.summarize(model)
        summary["serialized_bytes"] = snap.size
        record["summary"] = summary
        record["delta"] = _delta(self._summary, summary)
        if self.verify_each:
            assert self.samples is not None and self._previous is not None
            try:
                outputs = verify.run_reference(snap, self.samples.feeds)
            except RuntimeFailure as exc:
                repro = self._write_reproducer(index, step, exc.message, None)
                raise VerificationError(
                    f"after pass '{step.name}' the model no longer runs on ONNX Runtime: "
                    f"{exc.message} (reproducer: {repro})",
                    pass_name=step.name,
                    reproducer=str(repro),
                ) from exc
            vs_prev = verify.compare(outputs, self._previous, pass_.tolerance, self._noise)
            assert self._reference is not None
            if not vs_prev["passed"] and pass_.tolerance.lossy and self.context.budget:
                self._judge_by_budget(vs_prev, outputs)
                held = vs_prev.get("budget")
                if held and held["met"]:
                    cos = verify.worst(vs_prev)["cosine"]
                    record.setdefault("notes", []).append(
                        f"verified by the run's budget {held['budget']} ({held['value']:.6g} on "
                        f"the verification feeds): outputs moved past the pass's own tolerance "
                        f"(cosine {_fmt(cos)})"
                    )
            record["verify"] = vs_prev
            record["vs_reference"] = verify.worst(verify.compare(outputs, self._reference))
            if not vs_prev["passed"]:
                bad = [n for n, m in vs_prev["outputs"].items() if not m.get("passed")]
                worst = verify.worst(vs_prev)
                detail = vs_prev.get("error") or (
                    f"output{'s' if len(bad) > 1 else ''} {', '.join(bad)}: "
                    f"max_abs={_fmt(worst['max_abs'])} max_rel={_fmt(worst['max_rel'])} "
                    f"cosine={_fmt(worst['cosine'])}"
                )
                repro = self._write_reproducer(index, step, detail, None)
                raise VerificationError(
                    f"pass '{step.name}' changed the outputs beyond its tolerance: {detail}"
                    f" (tolerance {pass_.tolerance.to_dict()}; reproducer: {repro})",
                    pass_name=step.name,
                    reproducer=str(repro),
                    hint=LOSSY_HINT if pass_.tolerance.lossy else None,
                )
            self._previous = outputs
        if self.dump_dir is not None:
            path = snap.write(self.dump_dir / f"{index:02d}-{step.name}.onnx")
            record["dump"] = str(path)
        if self._snapshot is not self.context.reference:
            self._snapshot.close()
        self._snapshot = snap
        self._summary = summary

    def _judge_by_budget(self, vs_prev: dict[str, Any], outputs: verify.Outputs) -> None:
        """A lossy pass beyond its generic tolerance passes if the run's budget holds.

        The user's budget (a task metric: detections, top-1) says what accuracy means for
        this model; a detector's raw box outputs can lose cosine where its detections do not.
        Measured against the original model's outputs on the verification feeds.
        """
        assert self._reference is not None and self.samples is not None
        try:
            budget = Budget.parse(self.context.budget)
        except ValueError:  # a form only tune resolves (relative to the original)
            return
        value = budget.measure(self._reference.per_feed, outputs.per_feed, self.samples)
        held = budget.holds(value)
        vs_prev["budget"] = {"budget": str(budget), "value": value, "met": held}
        if held:
            vs_prev["passed"] = True

    def _write_reproducer(self, index: int, step: PassStep, reason: str, trace: str | None) -> Path:
        """The failing pass's input model, its pipeline string, inputs and how to rerun."""
        base = self.dump_dir or Path(tempfile.mkdtemp(prefix="graphopt-repro-"))
        folder = base / f"reproducer-{index:02d}-{step.name}"
        folder.mkdir(parents=True, exist_ok=True)
        model_path = self._snapshot.write(folder / "input.onnx")
        (folder / "pipeline.txt").write_text(str(step) + "\n")
        (folder / "full-pipeline.txt").write_text(str(self.pipeline) + "\n")
        data_arg = ""
        if self.samples is not None:
            try:
                arrays = {
                    name: np.stack([f[name] for f in self.samples.feeds])
                    for name in self.samples.feeds[0]
                }
                np.savez(folder / "inputs.npz", **arrays)
                data_arg = " --data inputs.npz"
            except ValueError:
                pass
        info = {"pass": step.name, "step": str(step), "reason": reason, "traceback": trace}
        (folder / "failure.json").write_text(json.dumps(info, indent=2) + "\n")
        (folder / "README.txt").write_text(
            f"Pass '{step.name}' failed: {reason}\n\nRerun it alone:\n"
            f"  graphopt optimize {model_path.name} -o out.onnx -p '{step}'{data_arg}\n"
        )
        return folder


def _fmt(v: float) -> str:
    return str(v) if math.isinf(v) or math.isnan(v) else f"{v:.3g}"


def run_pipeline(
    model: ir.Model,
    pipeline: Pipeline | str,
    **kwargs: Any,
) -> RunResult:
    """Convenience: parse if needed and run; see :class:`Runner` for the keyword arguments."""
    if isinstance(pipeline, str):
        from graphopt.core.pipeline import parse

        pipeline = parse(pipeline)
    source = kwargs.pop("source", None)
    return Runner(pipeline, **kwargs).run(model, source=source)
