"""What ``graphopt tune`` tries and how it judges: the budget, the candidates a model can
take, the calibration/evaluation split of DATA, and the Pareto front of the results."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from graphopt import errors
from graphopt.core.pipeline import PRESETS

#: pruning ratios tried, lowest first; a higher one only after a lower one met the budget
PRUNE_RATIOS = (0.3, 0.5, 0.7)
PRUNE_BELOW = 0.15  # tried when the lowest ratio misses the budget
_RELATIVE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.:]*)\s*(?P<op>>=|<=)\s*(?P<sign>[-+])(?P<value>[\d.]+)"
    r"\s*(?P<unit>pt|%)\s*$"
)


# ----------------------------------------------------------------------------- budget
@dataclasses.dataclass(frozen=True)
class TuneBudget:
    """The accuracy a tuned model must keep: absolute (``cosine>=0.99``) or relative to the
    original's value on the evaluation data (``top1>=-0.5pt``: at most half a point lower)."""

    text: str
    metric: str
    op: str
    threshold: float | None  # absolute threshold, or None when relative
    delta: float = 0.0  # relative: allowed change (in metric units; 1pt = 0.01)

    @classmethod
    def parse(cls, text: str) -> TuneBudget:
        from graphopt.accuracy.budget import Budget

        m = _RELATIVE.match(text)
        if m:
            value = float(m["value"]) / 100.0  # a point of accuracy, a percent: both 0.01
            delta = value if m["sign"] == "+" else -value
            Budget.parse(f"{m['metric']}{m['op']}0")  # the metric and op are known
            return cls(text, m["metric"], m["op"], None, delta)
        try:
            b = Budget.parse(text)
        except ValueError as exc:
            raise errors.UsageError(
                f"--budget: {exc}",
                hint="e.g. cosine>=0.99, top1>=-0.5pt (relative to the original), "
                "python:my.metrics:pitch>=0.95",
            ) from None
        return cls(text, b.metric, b.op, b.threshold)

    def resolve(self, original: float) -> str:
        """The absolute budget text, given the original model's metric value."""
        if self.threshold is not None:
            return self.text
        if self.metric in ("cosine",):  # the original's cosine to itself is 1
            original = 1.0
        return f"{self.metric}{self.op}{original + self.delta:.6g}"


# ----------------------------------------------------------------------------- candidates
@dataclasses.dataclass
class Candidate:
    """One pipeline tried, and what became of it."""

    name: str
    family: str
    pipeline: str
    budget: str = ""  # handed to optimize (the passes' own float fallback)
    status: str = "pending"  # skipped | failed | over-budget | meets-budget | slower | winner
    why: str = ""
    accuracy: float | None = None
    #: latency ratio to the original: the median of the paired rounds, and for finalists the
    #: geometric mean of that and the runoff's median
    ratio: float | None = None
    ratio_rounds: list[float] = dataclasses.field(default_factory=list)
    runoff_rounds: list[float] = dataclasses.field(default_factory=list)  # the final rounds
    build_seconds: float | None = None
    file_bytes: int | None = None
    macs: list[int] | None = None  # Conv/Gemm/MatMul MACs per sample before, after (pruning)
    smoothed: int | None = None  # MatMul inputs qdq-insert smoothed (SmoothQuant)
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_facts(model: ir.Model) -> dict[str, Any]:
    """What decides which candidates can apply."""
    ops = [n.op_type for n in model.graph]
    const_matmul = sum(
        1
        for n in model.graph
        if n.op_type in ("MatMul", "Gemm")
        and len(n.inputs) > 1
        and n.inputs[1] is not None
        and (
            n.inputs[1].const_value is not None
            or (n.inputs[1].producer() is not None and n.inputs[1].producer().op_type == "Constant")
        )
    )
    return {
        "ops": len(ops),
        "conv": ops.count("Conv"),
        "matmul": ops.count("MatMul") + ops.count("Gemm"),
        "const_matmul": const_matmul,
        "lstm": ops.count("LSTM"),
    }


def plan_candidates(facts: dict[str, Any], target: str, budget: str) -> list[Candidate]:
    """The candidates for a model, cheapest and likeliest first; those that cannot apply are
    returned as ``skipped`` with the reason."""
    int8 = "cpu-int8" if target == "cpu" else "cuda-int8"
    fp32 = "cpu-fp32" if target == "cpu" else "cleanup"
    # plain int8 is every planned node int8 (the guard still times it): without a budget
    # qdq-insert would judge it by its generic output-cosine floor, which a detector whose
    # detections are unchanged misses (the YOLOX glyph detector: 0.985), and its fallback
    # would hand tune a mostly float model; tune judges by its own budget on held-out feeds
    plain = PRESETS[int8].replace("qdq-insert{", "qdq-insert{budget=none,")
    assert plain != PRESETS[int8], "the int8 presets hold qdq-insert with options"
    c = [
        Candidate("float", "fp32", fp32),
        Candidate("int8-static", "int8", plain),
        Candidate("int8-static-fallback", "int8", int8, budget=budget),
    ]
    if target == "cpu":  # the cpu-int8 preset with percentile ranges, and without smoothing
        preset = PRESETS["cpu-int8"]
        percentile = preset.replace("qdq-insert{", "qdq-insert{calibration=percentile,")
        c.append(Candidate("int8-static-percentile", "int8", percentile, budget=budget))
        assert "smooth=" in preset, "the lean candidate is the cpu-int8 preset unsmoothed"
        lean = re.sub(r"smooth=[\d.]+", "smooth=0", preset)
        c.append(Candidate("int8-static-lean", "int8", lean, budget=budget))
    weighted = facts["conv"] + facts["matmul"]
    no_mm = "no MatMul/Gemm with a constant weight"
    dynamic = f"{fp32},quantize-dynamic" + (",quantize-recurrent" if facts.get("lstm") else "")
    for name, pipeline in (
        ("int8-dynamic", dynamic),
        ("weights-int8", f"{fp32},quantize-weights{{bits=8}}"),
        ("weights-int4", f"{fp32},quantize-weights{{bits=4}}"),
    ):
        cand = Candidate(name, "weight-only" if "weights" in name else "int8-dynamic", pipeline)
        if not facts["const_matmul"] and not (name == "int8-dynamic" and facts.get("lstm")):
            cand.status, cand.why = "skipped", no_mm
        c.append(cand)
    for ratio in (*PRUNE_RATIOS, PRUNE_BELOW):
        cand = Candidate(
            f"prune-{ratio:g}",
            "prune",
            f"cleanup,prune-channels{{ratio={ratio:g}}},reconstruct,{fp32}",
        )
        if not weighted:
            cand.status, cand.why = "skipped", "no Conv, Gemm or MatMul to prune"
        c.append(cand)
    if target != "cpu":
        for low in ("fp16", "bf16"):
            c.append(Candidate(low, "low-precision", f"cleanup,assign-precision{{target={low}}}"))
        c.append(Candidate("auto-precision", "low-precision", "cleanup,assign-precision"))
    return c


# ----------------------------------------------------------------------------- data
def split_data(samples: Any, eval_samples: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """(calibration, evaluation, how): every other feed when no evaluation data is given, so
    ordered DATA (by class, by clip) lands on both sides."""
    if eval_samples is not None:
        return (
            samples,
            eval_samples,
            {
                "calibration": f"{samples.source}: all {len(samples)} feeds",
                "evaluation": f"{eval_samples.source}: all {len(eval_samples)} feeds",
            },
        )
    n = len(samples)
    if n < 2:
        raise errors.DataError(
            f"tune needs at least 2 DATA feeds to hold some out for evaluation, got {n}",
            hint="give more samples, or --eval-data",
        )
    calib_idx = list(range(0, n, 2))
    eval_idx = list(range(1, n, 2))
    calib = samples.subset(calib_idx, f"{samples.source} (even feeds)")
    held = samples.subset(eval_idx, f"{samples.source} (odd feeds)")
    return (
        calib,
        held,
        {
            "calibration": f"{samples.source}: feeds {_ranges(calib_idx)} ({len(calib_idx)})",
            "evaluation": f"{samples.source}: feeds {_ranges(eval_idx)} ({len(eval_idx)})",
        },
    )


def _ranges(idx: Sequence[int]) -> str:
    if len(idx) > 2 and all(b - a == 2 for a, b in itertools.pairwise(idx)):
        return f"{idx[0]}, {idx[1]}, …, {idx[-1]}"
    return ", ".join(map(str, idx))


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Measured candidates no other beats on both accuracy and latency (accuracy higher is
    better for >= budgets, which all built-in accuracy metrics are)."""
    pts = [c for c in candidates if c.ratio is not None and c.accuracy is not None]
    front = []
    for c in pts:
        dominated = any(
            o is not c
            and o.ratio <= c.ratio  # type: ignore[operator]
            and o.accuracy >= c.accuracy  # type: ignore[operator]
            and (o.ratio < c.ratio or o.accuracy > c.accuracy)  # type: ignore[operator]
            for o in pts
        )
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: c.ratio)  # type: ignore[arg-type, return-value]
