"""The runner: instruments, verify-each, dumps, reproducers, repeat groups."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import ir as gir
from graphopt import runtime
from graphopt.cli.demo import demo_files
from graphopt.core import registry
from graphopt.core.pass_base import GraphoptPass, PassContext, Tolerance
from graphopt.core.report import REPORT_SCHEMA
from graphopt.core.runner import run_pipeline
from graphopt.errors import PassFailure, PipelineError, VerificationError
from graphopt.inputs.data import load_data, random_feeds


@pytest.fixture
def demo_model() -> ir.Model:
    return gir.load_model(demo_files()[0])


class PerturbWeightsPass(GraphoptPass):
    """Test pass: adds 0.5 to the first Conv weight (a silent numerical bug)."""

    name = "perturb-weights-test"
    tolerance = Tolerance.reassociation()

    def run(self, model: ir.Model) -> bool:
        for node in model.graph:
            if node.op_type == "Conv":
                w = node.inputs[1]
                w.const_value = ir.tensor(w.const_value.numpy() + 0.5, name=w.name)
                return True
        return False


class NoisyLossyPass(GraphoptPass):
    """Test pass: lossy by design, with a cosine tolerance it misses (noise on a weight)."""

    name = "noisy-lossy-test"
    tolerance = Tolerance(max_abs=math.inf, max_rel=math.inf, min_cosine=0.999999)

    def run(self, model: ir.Model) -> bool:
        for node in model.graph:
            if node.op_type == "Gemm":
                w = node.inputs[1]
                a = w.const_value.numpy()
                noise = np.random.default_rng(0).standard_normal(a.shape) * 0.05 * np.abs(a).max()
                w.const_value = ir.tensor((a + noise).astype(a.dtype), name=w.name)
                return True
        return False


class CrashPass(GraphoptPass):
    """Test pass: raises like a buggy pass would."""

    name = "crash-test"

    def run(self, model: ir.Model) -> bool:
        raise KeyError("boom")


class BreakGraphPass(GraphoptPass):
    """Test pass: rewires a node to a value no one produces (ORT refuses the model)."""

    name = "break-graph-test"

    def run(self, model: ir.Model) -> bool:
        node = next(iter(model.graph))
        model.graph.remove(node)  # its consumers now read a dangling value
        return True


class NeedsDataPass(GraphoptPass):
    name = "needs-data-test"
    needs: ClassVar[frozenset[str]] = frozenset({"data"})

    def run(self, model: ir.Model) -> bool:
        return False


@pytest.fixture(autouse=True)
def _test_passes() -> Iterator[None]:
    classes = (PerturbWeightsPass, CrashPass, BreakGraphPass, NeedsDataPass, NoisyLossyPass)
    for cls in classes:
        registry.register_pass(cls)
    yield
    for cls in classes:
        registry._REGISTRY.pop(cls.name, None)


def test_report_holds_every_instrument(demo_model: ir.Model, tmp_path: Path) -> None:
    _model_path, data_path = demo_files()
    samples = load_data(demo_model, data_path, batch=50).head(3)
    result = run_pipeline(demo_model, "cleanup", samples=samples, dump_dir=tmp_path / "dump")
    rep = result.report
    assert rep["schema"] == REPORT_SCHEMA
    assert rep["pipeline"].startswith("remove-initializer-inputs,repeat<4>(lift-constants,")
    assert rep["verify"]["enabled"] and rep["verify"]["feeds"] == 3
    assert rep["before"]["ops"]["BatchNormalization"] == 4
    assert "BatchNormalization" not in rep["after"]["ops"]
    assert 0 <= rep["after"]["sparsity"] < 0.01
    modified = [r for r in rep["passes"] if r["modified"]]
    assert {r["pass"] for r in modified} >= {"fold-batchnorm", "eliminate-dead-code"}
    for rec in rep["passes"]:
        assert rec["seconds"] >= 0
        s = rec["summary"]
        for key in (
            "nodes",
            "ops",
            "initializer_bytes",
            "initializer_bytes_by_dtype",
            "value_dtypes",
            "serialized_bytes",
        ):
            assert key in s
        assert set(rec["tolerance"]) == {"max_abs", "max_rel", "min_cosine", "exact_ints"}
    bn = next(r for r in modified if r["pass"] == "fold-batchnorm")
    assert bn["stats"] == {"folded:BatchNormalization": 4}
    assert bn["delta"]["ops"] == {"BatchNormalization": -4}
    assert bn["verify"]["passed"] and bn["verify"]["outputs"]["logits"]["cosine"] > 0.99999
    dce = next(r for r in modified if r["pass"] == "eliminate-dead-code")
    assert dce["delta"]["initializer_bytes"] < 0
    # rounds: the repeat group stopped once a round changed nothing
    rounds = {r["round"] for r in rep["passes"] if r["round"]}
    assert rounds == {"repeat<4> round 1", "repeat<4> round 2"}
    # dumps: the input and one model per modified pass, each loadable
    dumps = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumps[0] == "00-input.onnx"
    assert len(dumps) == 1 + len(modified)
    for r in modified:
        onnx.checker.check_model(onnx.load(r["dump"]))
    json.dumps(rep)  # JSON-serializable as is


def test_running_twice_changes_nothing(demo_model: ir.Model) -> None:
    run_pipeline(demo_model, "cleanup", verify_each=False)
    second = run_pipeline(demo_model, "cleanup", verify_each=False)
    assert [r["pass"] for r in second.report["passes"] if r["modified"]] == []


def test_verify_each_names_the_pass_and_writes_a_reproducer(
    demo_model: ir.Model, tmp_path: Path
) -> None:
    samples = random_feeds(demo_model, count=2, dims={"batch": 2})
    with pytest.raises(VerificationError) as info:
        run_pipeline(
            demo_model,
            "fold-batchnorm,perturb-weights-test,eliminate-dead-code",
            samples=samples,
            dump_dir=tmp_path,
        )
    err = info.value
    assert err.pass_name == "perturb-weights-test"
    assert "changed the outputs beyond its tolerance" in str(err)
    assert "logits" in str(err)
    repro = Path(err.reproducer or "")
    assert repro.parent == tmp_path
    assert (repro / "pipeline.txt").read_text().strip() == "perturb-weights-test"
    assert "perturb-weights-test" in (repro / "full-pipeline.txt").read_text()
    assert "graphopt optimize input.onnx" in (repro / "README.txt").read_text()
    # the reproducer's model is the failing pass's input: BatchNorm already folded
    saved = onnx.load(repro / "input.onnx")
    assert not any(n.op_type == "BatchNormalization" for n in saved.graph.node)
    inputs = np.load(repro / "inputs.npz")
    assert inputs["input"].shape == (2, 2, 1, 8, 8)
    # and the reproducer reproduces: its model runs, with the same inputs
    sess = runtime.make_session(repro / "input.onnx", optimize=False)
    assert sess.run(None, {"input": inputs["input"][0]})[0].shape == (2, 10)


def test_crashing_pass_is_a_pass_failure_with_reproducer(demo_model: ir.Model) -> None:
    with pytest.raises(PassFailure) as info:
        run_pipeline(demo_model, "eliminate-identity,crash-test", verify_each=False)
    assert info.value.pass_name == "crash-test"
    assert "KeyError" in str(info.value)
    repro = Path(info.value.reproducer or "")
    failure = json.loads((repro / "failure.json").read_text())
    assert failure["pass"] == "crash-test" and "Traceback" in failure["traceback"]


def test_debug_shows_the_failing_pass_own_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Where users look: ``--debug`` after the command prints the pass's own frames (the
    chained exception), not only the runner's; without it, one line with the reproducer."""
    from cli_testing import cli

    model = demo_files()[0]
    args = ("optimize", model, "-o", tmp_path / "o.onnx", "-p", "crash-test", "--no-verify")
    plain = cli(capsys, *args)
    assert plain.code != 0 and "Traceback" not in plain.err
    assert "pass 'crash-test' failed: KeyError" in plain.err and "reproducer" in plain.err
    debug = cli(capsys, *args, "--debug")
    assert debug.code == plain.code
    assert 'raise KeyError("boom")' in debug.err  # CrashPass.run's frame
    assert "The above exception was the direct cause" in debug.err


def test_unloadable_result_is_caught(demo_model: ir.Model) -> None:
    samples = random_feeds(demo_model, count=1)
    with pytest.raises(VerificationError, match="no longer runs on ONNX Runtime"):
        run_pipeline(demo_model, "break-graph-test", samples=samples)


def test_missing_data_is_refused_before_running(demo_model: ir.Model) -> None:
    with pytest.raises(PipelineError, match="needs calibration data"):
        run_pipeline(demo_model, "needs-data-test", verify_each=False)
    run_pipeline(
        demo_model, "needs-data-test", verify_each=False, context=PassContext(data=object())
    )


def test_model_that_does_not_run_is_reported_before_passes(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("idx", TensorProto.INT64, [1], [7])],  # out of range
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    model = ir.serde.deserialize_model(m)
    from graphopt.errors import DataError, RuntimeFailure
    from graphopt.inputs.data import Samples

    with pytest.raises(DataError, match="does not run on graphopt's random inputs"):
        run_pipeline(model, "eliminate-identity", samples=random_feeds(model))
    given = Samples(random_feeds(model).feeds, "data.npz")
    with pytest.raises(RuntimeFailure, match=r"input model does not run .* \(data\.npz\)"):
        run_pipeline(model, "eliminate-identity", samples=given)


def test_budget_notes_are_rendered_by_each_pass() -> None:
    """qdq-insert reports quantized_all, assign-precision converted_all (the report once read
    both from the details and crashed); each pass now renders its own notes."""
    from graphopt.core.registry import get_pass
    from graphopt.core.report import summary_lines

    qdq = get_pass("qdq-insert")()
    qdq.details["budget"] = {"budget": "cosine>=0.99", "quantized_all": 0.98, "final": 0.995}
    assert qdq.render_notes() == ["budget cosine>=0.99: all int8 0.98 → final 0.995"]
    fp16 = get_pass("assign-precision")()
    fp16.details["budget"] = {"budget": "cosine>=0.999", "converted_all": 0.9991, "met": False}
    assert fp16.render_notes() == [
        "budget cosine>=0.999: all converted 0.9991 → final 0.9991 (NOT met)"
    ]
    fp16.details["budget"] = "not measured: no DATA"
    assert fp16.render_notes() == []
    # the report prints the notes a pass rendered, as they are
    rep = run_pipeline(gir.load_model(demo_files()[0]), "eliminate-identity").report
    rep["passes"][0]["notes"] = ["a note"]
    assert "eliminate-identity: a note" in summary_lines(rep)


def test_a_lossy_pass_past_its_tolerance_is_judged_by_the_run_budget(demo_model: ir.Model) -> None:
    """A task budget (top-1 here; detections for a detector) says what accuracy means: a
    lossy pass that moves raw outputs past its generic cosine tolerance passes when it
    holds on the verification feeds (whose labels stay with them), and fails when not."""
    _model_path, data_path = demo_files()
    samples = load_data(demo_model, data_path, batch=50).spread(4)
    with pytest.raises(VerificationError):
        run_pipeline(gir.load_model(demo_files()[0]), "noisy-lossy-test", samples=samples)
    with pytest.raises(VerificationError):  # a budget it misses: still an error
        run_pipeline(
            gir.load_model(demo_files()[0]),
            "noisy-lossy-test",
            samples=samples,
            context=PassContext(budget="top1>=1.01"),
        )
    result = run_pipeline(
        demo_model, "noisy-lossy-test", samples=samples, context=PassContext(budget="top1>=0.9")
    )
    rec = next(r for r in result.report["passes"] if r["pass"] == "noisy-lossy-test")
    assert rec["verify"]["passed"]
    held = rec["verify"]["budget"]
    assert held["met"] and held["value"] >= 0.9 and held["budget"] == "top1>=0.9"
    assert any("verified by the run's budget top1>=0.9" in n for n in rec["notes"])
