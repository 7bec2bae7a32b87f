"""Timing for benchmarks: models in turns, ratios taken round by round, latency statistics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from graphopt import runtime


class Runnable(Protocol):
    """A model ready to run on its bound feed (the harness's Runner)."""

    def run(self) -> Any: ...


def time_round_robin(
    runners: Sequence[Runnable], *, warmup: int, repeat: int, rounds: int
) -> list[list[list[float]]]:
    """Seconds of every timed run: ``[model][round][run]``; models take turns each round."""
    for r in runners:
        for _ in range(warmup):
            r.run()
    times: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in runners]
    n = len(runners)
    clock = time.perf_counter
    for rnd in range(rounds):
        for k in range(n):
            i = (rnd + k) % n  # rotate who goes first
            run = runners[i].run
            bucket = times[i][rnd]
            for _ in range(repeat):
                t0 = clock()
                run()
                bucket.append(clock() - t0)
    return times


def rotated_ratios(
    sessions: dict[str, Any], feed: dict[str, np.ndarray], rounds: int, base: str
) -> list[dict[str, float]]:
    """Per round, each session's median seconds per run divided by ``base``'s, the order of
    the sessions rotated every round (the benchmarks' side-by-side protocol); each round's
    dict also holds ``base``'s own seconds under ``"seconds"``."""

    names = list(sessions)
    out = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        secs = runtime.interleaved_latency([sessions[k] for k in order], feed, rounds=1)[0]
        times = dict(zip(order, secs, strict=True))
        out.append({k: times[k] / times[base] for k in names} | {"seconds": times[base]})
    return out


def latency_stats(per_round: list[list[float]], batch: int) -> dict[str, Any]:
    flat = np.asarray([t for rnd in per_round for t in rnd]) * 1000.0
    medians = [float(np.median(rnd)) * 1000.0 for rnd in per_round]
    p50, p90, p99 = (float(x) for x in np.percentile(flat, [50, 90, 99]))
    mid = float(np.median(medians))
    return {
        "latency_ms": {
            "p50": p50,
            "p90": p90,
            "p99": p99,
            "mean": float(flat.mean()),
            "min": float(flat.min()),
            "max": float(flat.max()),
            "round_medians": medians,
            "spread": {
                "min": min(medians),
                "max": max(medians),
                "rel": (max(medians) - min(medians)) / mid if mid > 0 else 0.0,
            },
        },
        "runs": int(flat.size),
        "throughput_per_s": batch / (p50 / 1000.0) if p50 > 0 else None,
    }


def ratio_to_reference(per_round: list[list[float]], ref: list[list[float]]) -> dict[str, Any]:
    ratios = [
        float(np.median(m)) / float(np.median(r))
        for m, r in zip(per_round, ref, strict=True)
        if np.median(r) > 0
    ]
    return {
        "median": float(np.median(ratios)) if ratios else None,
        "per_round": ratios,
    }
