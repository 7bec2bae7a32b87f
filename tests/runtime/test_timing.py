"""Interleaved timing ends early only where its answer cannot be in doubt.

Why: the latency guard, quantize-attention's timing and fuse-ort-kernels' pairs were a third
of MiniLM's ``cpu-int8`` run, mostly rounds that could not change a ratio of 0.86 against a
threshold of 0.97. Sessions here are fakes on a fake clock, so the counts are exact.
"""

from __future__ import annotations

import time

import graphopt.passes.target.fuse_ort_kernels as fok
import pytest

from graphopt import runtime
from graphopt.accuracy import acceptance


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class _Session:
    """A session whose run takes ``ms`` on the fake clock; counts its runs."""

    def __init__(self, clock: _Clock, ms: float) -> None:
        self.clock, self.ms, self.runs = clock, ms, 0

    def run(self, names, feed):
        self.clock.now += self.ms / 1e3
        self.runs += 1
        return []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


@pytest.mark.parametrize(("ms", "rounds"), [(5.0, 3), (9.6, 5), (11.0, 3)])
def test_compare_latency_stops_early_only_far_from_the_threshold(clock, ms, rounds) -> None:
    base, cand = _Session(clock, 10.0), _Session(clock, ms)
    timing = acceptance.compare_latency(base, [cand], {}, threshold=0.97)
    assert len(timing.rounds) == rounds
    assert timing.ratios[0] == pytest.approx(ms / 10.0)


def test_without_a_threshold_every_round_runs(clock) -> None:
    timing = acceptance.compare_latency(_Session(clock, 10.0), [_Session(clock, 5.0)], {})
    assert len(timing.rounds) == 5


def test_every_candidate_must_be_clear(clock) -> None:
    sessions = [_Session(clock, 10.0), _Session(clock, 5.0), _Session(clock, 9.8)]
    rows = runtime.interleaved_latency(sessions, {}, clear=acceptance.far_from(0.97))
    assert len(rows) == 5


@pytest.mark.parametrize(
    ("without", "with_", "clear"),
    [
        (10.0, 11.0, True),  # GELU at 1.1: not kept, surely
        (10.0, 7.0, True),  # attention at 0.7: kept, surely
        (10.0, 9.7, False),  # near the 0.98 margin: all rounds
    ],
)
def test_fuse_ort_kernels_pairs_end_early_when_clear(clock, without, with_, clear) -> None:
    a, b = _Session(clock, without), _Session(clock, with_)
    _, _, ratio, timed = fok._time_pair(a, b, {}, rounds=5, margin=0.02)
    assert timed == (3 if clear else 5)
    assert ratio == pytest.approx(with_ / without, abs=1e-3)


def test_fuse_ort_kernels_clear_needs_the_medians_to_agree() -> None:
    """A median ratio far below the margin while the median times say slower (noise in one
    round) is not clear: the pair is timed in full and then doubled."""
    disagree = [[0.010, 0.009], [0.004, 0.003], [0.004, 0.012]]  # ratio 0.9, times 4 vs 9 ms
    assert not fok._clear(0.98)(disagree)
    agree = [[0.010, 0.009], [0.010, 0.007], [0.004, 0.012]]  # ratio 0.9, times 10 vs 9 ms
    assert fok._clear(0.98)(agree)
