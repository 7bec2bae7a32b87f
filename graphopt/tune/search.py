"""The tune's search: its phases (independent candidates, those that follow from them,
pruning then int8), the latency evidence and the final runoff among the fastest."""

from __future__ import annotations

import dataclasses
import itertools
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from graphopt import errors
from graphopt.tune.build import (
    runoff,
)
from graphopt.tune.candidates import (
    PRUNE_BELOW,
    PRUNE_RATIOS,
    Candidate,
)
from graphopt.tune.engine import Store

TUNE_SCHEMA = "graphopt.tune/1"
#: a lossy candidate must be at least this much faster than the original to be worth shipping;
#: the float form (the same arithmetic, cleaned up) only has to be faster
PAYS = 0.97


def pays(cand: Candidate) -> float:
    return 1.0 if cand.family == "fp32" else PAYS


#: the fastest candidates within budget that meet again, together, for the final choice
RUNOFF = 4

Say = Callable[[str], None]


# ----------------------------------------------------------------------------- the search
@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` returns: the winner (None when nothing paid), every candidate, and
    the report."""

    winner: Candidate | None
    candidates: list[Candidate]
    report: dict[str, Any]
    output: Path | None


def parse_time(text: str | float | int) -> float:
    """``"20m"``, ``"90s"``, ``"1h"`` or seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([\d.]+)\s*([smh]?)\s*", text)
    if not m:
        raise errors.UsageError(f"--time {text!r}: expected e.g. 90s, 20m or 1h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


@dataclasses.dataclass
class Search:
    """One tune's state: the candidates, where their files go, and the clock."""

    model_path: Path
    original: Any  # the original model's session on the target EP, built once
    target: str
    spec: dict[str, Any]  # what every build shares (calib, eval, judge, ...)
    store: Store
    backend: Any
    feed: dict[str, Any]
    rounds: int
    limit: float
    started: float
    say: Say
    candidates: list[Candidate]

    @property
    def ep(self) -> str:
        return "cpu" if self.target == "cpu" else "cuda"

    def session(self, path: Path) -> Any:
        from graphopt import runtime

        return runtime.make_session(path, ep=self.ep, optimize=True)

    def get(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def run(self, batch: Sequence[Candidate]) -> None:
        """Build, score and (within budget) time the pending candidates of one phase: one by
        one here, all at once on Ray; the time limit stops a build still running."""
        todo = []
        for cand in batch:
            if cand.status != "pending":
                continue
            kept = self.store.load(cand)
            if kept is not None:
                for k, v in kept.items():
                    setattr(cand, k, v)
                self._before_runoff(cand)
                self.say(f"{cand.name}: kept from an earlier run ({cand.status})")
            else:
                todo.append(cand)
        chunks = [todo] if self.backend.name == "ray" else [[c] for c in todo]
        for chunk in chunks:
            if time.perf_counter() - self.started > self.limit:
                for cand in chunk:
                    cand.status, cand.why = "skipped", f"time limit ({self.limit:.0f} s) reached"
                continue
            specs = []
            for cand in chunk:
                self.say(f"{cand.name}: building {cand.pipeline}")
                specs.append(
                    {
                        **self.spec,
                        "pipeline": cand.pipeline,
                        "budget": cand.budget,
                        "float_form": cand.family == "fp32",
                        "output": str(self.store.model_path(cand.name)),
                    }
                )
            results = self.backend.map(specs, self.started + self.limit, self.limit)
            for cand, result in zip(chunk, results, strict=True):
                for k, v in result.items():
                    setattr(cand, k, v)
                if cand.status == "within-budget":
                    self._time(cand)
                if cand.why:
                    self.say(f"{cand.name}: {cand.why}")
                self.store.save(cand)

    def _time(self, cand: Candidate) -> None:
        path = self.store.model_path(cand.name)
        cand.ratio_rounds = runoff(self.original, [self.session(path)], self.feed, self.rounds)[0]
        cand.ratio = statistics.median(cand.ratio_rounds)
        if cand.ratio < pays(cand):
            cand.status = "meets-budget"
            self.say(f"{cand.name}: accuracy {cand.accuracy:.6g}, latency {cand.ratio:.3f}x")
        else:
            cand.status = "slower"
            cand.why = f"{cand.ratio:.3f}x the original's latency: does not pay"

    @staticmethod
    def _before_runoff(cand: Candidate) -> None:
        """A kept candidate goes back to what its own paired rounds said: the runoff (and so
        the winner) is decided again, on this run's machine state."""
        if cand.status in ("winner", "slower") and cand.ratio_rounds:
            cand.ratio = statistics.median(cand.ratio_rounds)
            cand.runoff_rounds = []
            if cand.ratio < pays(cand):
                cand.status, cand.why = "meets-budget", ""
            else:
                cand.status = "slower"
                cand.why = f"{cand.ratio:.3f}x the original's latency: does not pay"

    def skip(self, cand: Candidate, why: str) -> None:
        if cand.status == "pending":
            cand.status, cand.why = "skipped", why


def phases(search: Search, target: str, absolute: str) -> None:
    """The search: independent candidates, then what their results call for."""
    c = search.get
    prune = [c(f"prune-{r:g}") for r in PRUNE_RATIOS]
    below = c(f"prune-{PRUNE_BELOW:g}")
    second = ("int8-static-fallback", "int8-static-percentile", "int8-static-lean")
    first = [x for x in search.candidates if x.family != "prune" and x.name not in second]
    search.run([*first, prune[0]])
    # phase 2: int8 variants in the direction plain int8 calls for: more accurate ones when
    # it misses the budget, the leaner one (no SmoothQuant Muls) when it meets it
    int8 = c("int8-static")
    within = ("meets-budget", "slower", "within-budget")
    safer = [c("int8-static-fallback")] + ([c("int8-static-percentile")] if target == "cpu" else [])
    lean = [c("int8-static-lean")] if target == "cpu" else []
    later: list[Candidate] = []
    if int8.status in within:
        for x in safer:
            search.skip(x, "dominated: int8-static meets the budget with every node in int8")
        later = lean
        if int8.smoothed == 0:  # nothing to take out: the lean build would be the same model
            for x in lean:
                search.skip(x, "the same as int8-static: SmoothQuant smoothed no MatMul input")
            later = []
    elif int8.status == "failed" and "latency guard" in int8.why:
        for x in [*safer, *lean]:
            search.skip(x, "dominated: the latency guard found int8 does not pay on this model")
    else:
        for x in lean:
            search.skip(x, "dominated: int8-static, smoothed, already misses the budget")
        later = safer
    step2 = list(later)
    if prune[0].status in within:
        step2.append(prune[1])
        search.skip(below, f"{prune[0].name} met the budget")
    elif prune[0].status == "over-budget":
        step2.append(below)
    search.run(step2)
    # phase 3: a higher ratio while the lower one met the budget, then pruning + int8
    for lower, higher in itertools.pairwise(prune[1:]):
        if lower.status in within:
            search.run([higher])
    tried = [p for p in [below, *prune] if p.status in (*within, "over-budget")]
    best = max((p for p in tried if p.status in within), key=ratio_of, default=None)
    over = [p for p in tried if p.status == "over-budget" and best and ratio_of(p) > ratio_of(best)]
    if best is not None and over:  # one bisection step inside the bracket
        hi = min(over, key=ratio_of)
        mid = round((ratio_of(best) + ratio_of(hi)) / 2, 2)
        if ratio_of(hi) - ratio_of(best) > 0.1:
            float_form = "cpu-fp32" if target == "cpu" else "cleanup"
            pipeline = f"cleanup,prune-channels{{ratio={mid:g}}},reconstruct,{float_form}"
            cand = Candidate(f"prune-{mid:g}", "prune", pipeline)
            search.candidates.append(cand)
            search.run([cand])
            if cand.status in within:
                best = cand
    for p in [below, *prune]:
        if p.status == "pending":
            failed = next((q for q in prune if q.status not in within), None)
            if failed is None:
                why = "not needed"
            elif failed.status == "over-budget":
                why = f"dominated: {failed.name} did not meet the budget"
            else:
                why = f"dominated: {failed.name} {failed.status} ({failed.why})"
            search.skip(p, why)
    if best is not None:
        ratio = best.name.split("-", 1)[1]
        int8_preset = "cpu-int8" if target == "cpu" else "cuda-int8"
        combo = Candidate(
            f"prune-{ratio}+int8",
            "prune+int8",
            f"cleanup,prune-channels{{ratio={ratio}}},reconstruct,{int8_preset}",
            budget=absolute,
        )
        search.candidates.append(combo)
        search.run([combo])
    for x in search.candidates:
        search.skip(x, "not reached")


def ratio_of(cand: Candidate) -> float:
    """The pruning ratio of a ``prune-<ratio>`` candidate."""
    return float(cand.name.split("-", 1)[1])


def evidence(cand: Candidate) -> float:
    """The latency ratio from every measurement of ``cand``: the geometric mean of the medians
    of its paired rounds and its runoff rounds (either alone when the other is missing)."""
    medians = [statistics.median(r) for r in (cand.ratio_rounds, cand.runoff_rounds) if r]
    return float(statistics.geometric_mean(medians))


def final_runoff(search: Search) -> Candidate | None:
    """The fastest few within budget, timed together again (twice the rounds); the fastest
    that still pays wins. One noisy measurement never picks the winner alone: a finalist's
    ratio is the geometric mean of its paired median and its runoff median, two measurements
    in different company (on a 2-core VM the same file moved by 5-10 % between them)."""
    paying = sorted(
        (x for x in search.candidates if x.status == "meets-budget" and x.ratio is not None),
        key=lambda x: x.ratio,  # type: ignore[arg-type, return-value]
    )
    finalists = paying[:RUNOFF]
    if finalists:  # a second, longer measurement, even of a lone finalist
        search.say("runoff: " + ", ".join(x.name for x in finalists))
        paths = [search.store.model_path(x.name) for x in finalists]
        sessions = [search.session(p) for p in paths]
        per = runoff(search.original, sessions, search.feed, 2 * search.rounds)
        for cand, rounds in zip(finalists, per, strict=True):
            cand.runoff_rounds = rounds
            cand.ratio = evidence(cand)
            if cand.ratio >= pays(cand):
                cand.status = "slower"
                cand.why = (
                    f"{cand.ratio:.3f}x the original's latency, paired and runoff rounds "
                    "together: does not pay"
                )
            search.store.save(cand)
        finalists = [x for x in finalists if x.status == "meets-budget"]
    if not finalists:
        return None
    winner = min(finalists, key=lambda x: x.ratio)  # type: ignore[arg-type, return-value]
    winner.status = "winner"
    search.store.save(winner)
    return winner
