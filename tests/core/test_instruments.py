"""Instruments around pass runs: the hooks come in order, each pass run yields a typed record,
and the report's ``passes`` are those records' dicts."""

from __future__ import annotations

from typing import Any

import graphopt
from graphopt import ir as gir
from graphopt.core.instruments import Instrument, PassRecord
from graphopt.core.pipeline import parse
from graphopt.core.runner import Runner


class _Log(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def run_started(self, run: Any) -> None:
        self.events.append(("started", run.snapshot.size > 0))

    def before_pass(self, run: Any, record: PassRecord) -> None:
        self.events.append(("before", record.name))

    def after_modified(self, run: Any, record: PassRecord, pass_: Any, snap: Any) -> None:
        assert snap is not run.snapshot  # the new model, not yet the current one
        self.events.append(("modified", record.name))

    def after_pass(self, run: Any, record: PassRecord) -> None:
        assert record.summary and record.delta is not None
        self.events.append(("after", record.name))


def test_hooks_come_in_order_around_every_pass(demo_paths) -> None:
    model = gir.load_model(demo_paths[0])
    runner = Runner(parse("fold-batchnorm,eliminate-dead-code,sort-topologically"))
    log = _Log()
    runner.instruments.append(log)
    result = runner.run(model)
    names = [r.name for r in result.records]
    assert names == ["fold-batchnorm", "eliminate-dead-code", "sort-topologically"]
    expected: list[tuple[str, Any]] = [("started", True)]
    for rec in result.records:
        expected.append(("before", rec.name))
        if rec.modified:
            expected.append(("modified", rec.name))
        expected.append(("after", rec.name))
    assert log.events == expected
    assert result.records[0].modified and result.records[0].stats  # BatchNorms folded
    assert [r.to_dict() for r in result.records] == result.report["passes"]


def test_a_record_lists_only_what_it_holds() -> None:
    rec = PassRecord(3, "p", "p{x=1}", None, {"max_abs": 0.0})
    d = rec.to_dict()
    assert d["index"] == 3 and d["pass"] == "p" and d["modified"] is False
    for absent in ("details", "notes", "left_alone", "inserted", "unchanged", "silent", "dump"):
        assert absent not in d
    rec.notes.append("did a thing")
    rec.unchanged, rec.silent = "no reason", True
    d = rec.to_dict()
    assert d["notes"] == ["did a thing"] and d["unchanged"] == "no reason" and d["silent"]


def test_optimize_returns_the_typed_records(demo_paths) -> None:
    res = graphopt.optimize(demo_paths[0], "cleanup", data=str(demo_paths[1]))
    assert res.records and all(isinstance(r, PassRecord) for r in res.records)
    assert [r.to_dict()["pass"] for r in res.records] == [p["pass"] for p in res.passes]
    modified = [r for r in res.records if r.modified]
    assert modified and all(r.verify is not None and r.verify["passed"] for r in modified)
