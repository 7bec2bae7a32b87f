"""The pass contract, checked on every registered pass.

Declaration: kebab-case name, a class named ``...Pass``, a frozen options dataclass whose
every field is documented and has a default, a declared tolerance and a summary. Behaviour on
the demo model: within the declared tolerance of ONNX Runtime's outputs, idempotent, and the
findings are typed (notes are strings, what was left alone has a reason).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir
import pytest
from pass_testing import assert_same_outputs, copy_model, op_counts, run_pass

from graphopt import ir as gir
from graphopt.cli.demo import demo_files
from graphopt.core import Tolerance, all_passes
from graphopt.core.findings import Findings
from graphopt.core.pass_base import GraphoptPass
from graphopt.errors import DataError
from graphopt.inputs.data import random_feeds as samples_for

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
ALL_PASSES = all_passes()


def test_all_cleanup_passes_are_registered() -> None:
    expected = {
        "lift-constants",
        "fold-constants",
        "eliminate-dead-code",
        "eliminate-common-subexpressions",
        "eliminate-identity",
        "deduplicate-initializers",
        "infer-shapes",
        "sort-topologically",
        "fold-batchnorm",
    }
    assert expected <= set(ALL_PASSES)


@pytest.mark.parametrize("name", sorted(ALL_PASSES))
def test_pass_declaration(name: str) -> None:
    cls = ALL_PASSES[name]
    assert issubclass(cls, GraphoptPass)
    assert cls.name == name and _KEBAB.match(name)
    assert cls.__name__.endswith("Pass")
    opts = cls.Options
    assert dataclasses.is_dataclass(opts)
    assert opts.__dataclass_params__.frozen  # type: ignore[attr-defined]
    for f in dataclasses.fields(opts):
        doc = f.metadata.get("doc")
        assert isinstance(doc, str) and doc.strip(), f"{name}: option {f.name} has no doc"
    default = opts()  # every option has a default
    fields = dataclasses.fields(opts)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(default, fields[0].name, getattr(default, fields[0].name))
    assert isinstance(cls.tolerance, Tolerance)
    assert cls.summary.strip(), f"{name} has no summary"


def _demo_model(shapes: bool) -> ir.Model:
    model = gir.load_model(demo_files()[0])
    if shapes:  # a second variant where value shapes are known, as inside the cleanup preset
        run_pass(model, "infer-shapes")
    return model


@pytest.fixture(scope="module")
def demo_feeds() -> list[dict[str, np.ndarray]]:
    model = gir.load_model(demo_files()[0])
    return samples_for(model, count=2, seed=7, dims={"batch": 4}).feeds


@pytest.mark.parametrize("shapes", [False, True], ids=["as-exported", "shapes-inferred"])
# passes that need calibration data are tested with it in their own modules
@pytest.mark.parametrize("name", sorted(n for n, c in ALL_PASSES.items() if not c.needs))
def test_pass_on_demo_model_is_idempotent_and_within_tolerance(
    name: str, shapes: bool, demo_feeds: list[dict[str, np.ndarray]]
) -> None:
    cls = ALL_PASSES[name]
    model = _demo_model(shapes)
    original = copy_model(model)
    first = cls(cls.Options())(model)
    assert first.model is model
    assert_same_outputs(original, model, cls.tolerance, demo_feeds)
    fp = gir.fingerprint(model)
    second_pass = cls(cls.Options())
    second = second_pass(model)
    assert second.modified is False, f"{name}: second run modified the model"
    assert not second_pass.stats
    assert gir.fingerprint(model) == fp
    if name == "fold-batchnorm":
        assert first.modified and "BatchNormalization" not in op_counts(model)


@pytest.mark.parametrize("name", sorted(n for n, c in ALL_PASSES.items() if not c.needs))
def test_findings_are_typed(name: str) -> None:
    """After a run: ``findings`` is a Findings, notes are one-line strings, every subject
    left alone has a non-empty reason, and ``details`` is the findings' data."""
    model = _demo_model(True)
    _, p = run_pass(model, name)
    assert isinstance(p.findings, Findings)
    assert all(isinstance(n, str) and n and "\n" not in n for n in p.findings.notes)
    assert all(isinstance(r, str) and r for r in p.findings.left_alone.values())
    assert p.details is p.findings.data


def test_findings_left_alone_note() -> None:
    f = Findings()
    assert f.left_alone_note("kept in float") == "" and not f
    f.leave("a", "unfused")
    f.leave("b", "unfused")
    f.leave("c", "sensitivity")
    assert f.left_alone_note("kept in float") == "kept in float: 3 nodes (1 sensitivity, 2 unfused)"
    f.note("x")
    f.note("x")
    assert f.notes == ["x"]


def test_the_harness_runs_a_pass_with_context_and_data() -> None:
    """run_pass hands DATA (here a plain list of feeds) and the context to the pass."""
    from graphopt.core.pass_base import PassContext

    model = _demo_model(True)
    feeds = samples_for(model, count=4, seed=1, dims={"batch": 2}).feeds
    result, p = run_pass(
        model, "qdq-insert", data=feeds, context=PassContext(target="cpu"), guard=False
    )
    assert result.modified and p.stats["quantized:Conv"] == 3
    assert p.context.data.source == "feeds given in Python"
    with pytest.raises(DataError, match="needs calibration data"):
        run_pass(_demo_model(True), "qdq-insert")
