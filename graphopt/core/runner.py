"""The runner: runs a pipeline pass by pass, with instruments around every pass.

It owns the loop (instead of onnx_ir's PassManager): it inserts the passes a pass needs first
(constant weights, a newer opset), keeps the model's snapshot and summary after every pass,
and hands each pass run to the instruments (:mod:`graphopt.core.instruments`: progress,
verify-each, dumps, reproducers), which fill the pass's typed record.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphopt import ir as gir
from graphopt.core import registry
from graphopt.core.instruments import (
    LOSSY_HINT,
    Dumps,
    Instrument,
    Listener,
    PassRecord,
    Progress,
    Reproducers,
    VerifyEach,
)
from graphopt.core.pass_base import GraphoptPass, PassContext
from graphopt.core.pipeline import PassStep, Pipeline, RepeatGroup
from graphopt.core.report import pipeline_report
from graphopt.errors import GraphoptError, PassFailure, PipelineError
from graphopt.inputs.data import Samples
from graphopt.runtime import Snapshot

__all__ = ["LOSSY_HINT", "PassRecord", "RunResult", "Runner", "run_pipeline"]

#: the pass the runner inserts before a pass that needs a newer opset
CONVERT = "convert-opset"
#: the passes it inserts before a pass that needs constant-initializer weights
LIFT = ("remove-initializer-inputs", "lift-constants")


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
    records: list[PassRecord] = dataclasses.field(default_factory=list)

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.report["passes"]


class Runner:
    """Runs a :class:`Pipeline` on a model, in place, with its instruments around each pass."""

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
        dumps = Path(dump_dir) if dump_dir is not None else None
        self.reproducers = Reproducers(dumps, samples)
        self.verifier = (
            VerifyEach(samples, self.reproducers) if verify_each and samples is not None else None
        )
        self.instruments: list[Instrument] = [
            *([Progress(listener)] if listener is not None else []),
            *([self.verifier] if self.verifier is not None else []),
            *([Dumps(dumps)] if dumps is not None else []),  # after verification: kept if it held
        ]
        self.records: list[PassRecord] = []
        self._index = 0

    # ------------------------------------------------------------------ entry point
    def run(self, model: ir.Model, *, source: str | None = None) -> RunResult:
        self._check_needs()
        self._model = model  # every pass mutates this one object in place
        started = time.perf_counter()
        self.snapshot = Snapshot.of(model)
        before = gir.summarize(model, sparsity=True)
        before["serialized_bytes"] = self.snapshot.size
        self._summary = before
        for instrument in self.instruments:
            instrument.run_started(self)
        self._own_reference = False
        try:
            self._run_items(self.pipeline.items, round_info=None)
        finally:
            if self._own_reference:  # the runner set it for this run only
                if self.context.reference is not self.snapshot:
                    self.context.reference.close()
                self.context.reference = None
        after = gir.summarize(model, sparsity=True)
        after["serialized_bytes"] = self.snapshot.size
        self.snapshot.close()
        report = pipeline_report(
            source=source,
            pipeline=str(self.pipeline),
            target=self.context.target,
            verify=self._verify_section(),
            seconds=time.perf_counter() - started,
            before=before,
            after=after,
            passes=[r.to_dict() for r in self.records],
        )
        if self.verifier is not None and self.records:
            last = next((r for r in reversed(self.records) if r.vs_reference), None)
            report["verify"]["final_vs_reference"] = last.vs_reference if last else None
        return RunResult(model, report, list(self.records))

    def _verify_section(self) -> dict[str, Any]:
        if self.verifier is not None:
            return self.verifier.section()
        return {
            "enabled": False,
            "inputs": self.samples.source if self.samples is not None else None,
            "feeds": len(self.samples) if self.samples is not None else 0,
            "reference": "onnxruntime CPUExecutionProvider, graph optimizations disabled",
            "noise_floor": {},
        }

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
        record = PassRecord.of(pass_, self._index, step, round_info)
        record.inserted = inserted_for
        if step.pass_class.tolerance.lossy and self.context.reference is None:
            # what reconstruct fits back to: the model before the first lossy pass
            self.context.reference = self.snapshot
            self._own_reference = True
        for instrument in self.instruments:
            instrument.before_pass(self, record)
        t0 = time.perf_counter()
        try:
            result = pass_(self._model)
        except GraphoptError:
            raise
        except Exception as exc:  # a pass bug: name the pass and keep its input
            why = f"{type(exc).__name__}: {exc}"
            repro = self.reproducers.write(self, record, why, traceback.format_exc())
            raise PassFailure(
                f"pass '{step.name}' failed: {why} (reproducer: {repro})",
                pass_name=step.name,
                reproducer=str(repro),
            ) from exc
        record.seconds = time.perf_counter() - t0
        record.modified = bool(result.modified)
        record.take_findings(pass_)
        if record.modified:
            self._after_modified(record, pass_)
        else:
            record.summary = self._summary
            record.delta = _delta(self._summary, self._summary)
            self._explain_unchanged(pass_, record)
        self.records.append(record)
        for instrument in self.instruments:
            instrument.after_pass(self, record)
        return record.modified

    @staticmethod
    def _explain_unchanged(pass_: GraphoptPass, record: PassRecord) -> None:
        """A lossy pass asked to act that changed nothing says why; one without a reason is
        marked ``silent`` (a graphopt bug the zoo matrix fails on)."""
        if pass_.declined:
            record.unchanged = pass_.declined
        elif pass_.tolerance.lossy:
            record.unchanged = "changed nothing and gave no reason"
            record.silent = True

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
        before = len(self.records)
        self._run_step(_step(CONVERT, opset=need), round_info, inserted_for=why)
        return self.records[before].modified

    def _skip(
        self, step: PassStep, pass_: GraphoptPass, round_info: str | None, need: int, have: int
    ) -> bool:
        self._index += 1
        conversion = (self.records[-1].unchanged or "") if self.records else ""
        pass_.declined = (
            f"needs ai.onnx opset {need}; the model is at {have} and could not be converted"
            + (f" ({conversion})" if conversion else "")
        )
        record = PassRecord.of(pass_, self._index, step, round_info)
        record.summary = self._summary
        record.delta = _delta(self._summary, self._summary)
        record.unchanged = pass_.declined
        for instrument in self.instruments:
            instrument.before_pass(self, record)
        self.records.append(record)
        for instrument in self.instruments:
            instrument.after_pass(self, record)
        return False

    def _after_modified(self, record: PassRecord, pass_: GraphoptPass) -> None:
        """The changed model's snapshot and summary, handed to the instruments; it becomes
        the model before the next pass once they all passed it."""
        try:
            snap = Snapshot.of(self._model)
        except Exception as exc:
            repro = self.reproducers.write(self, record, f"cannot serialize: {exc}")
            raise PassFailure(
                f"pass '{record.name}' produced a model that cannot be serialized: {exc}"
                f" (reproducer: {repro})",
                pass_name=record.name,
                reproducer=str(repro),
            ) from exc
        summary = gir.summarize(self._model)
        summary["serialized_bytes"] = snap.size
        record.summary = summary
        record.delta = _delta(self._summary, summary)
        for instrument in self.instruments:
            instrument.after_modified(self, record, pass_, snap)
        if self.snapshot is not self.context.reference:
            self.snapshot.close()
        self.snapshot = snap
        self._summary = summary


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
