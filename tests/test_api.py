"""The Python API: ``graphopt.optimize``, ``graphopt.bench``, ``graphopt.passes``.

The model goes in as a path, an ``onnx.ModelProto`` or an ``ir.Model`` and is never changed;
DATA as a path, a dict of arrays, an ONNX Runtime-style ``CalibrationDataReader`` or any
iterable of feed dicts; a ``Result`` comes out with the model and the report.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import ir as gir
from graphopt.cli.demo import demo_files
from graphopt.errors import DataError, UsageError
from graphopt.inputs import data as gdata


def _demo_feeds(n: int = 8, batch: int = 10) -> list[dict[str, np.ndarray]]:
    model_path, data_path = demo_files()
    samples = gdata.load_data(gir.load_model(model_path), data_path, batch=batch)
    return samples.feeds[:n]


def _ops(model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph)


class _Reader:
    """What ONNX Runtime's quantizer takes: ``get_next()`` returns a feed, then None."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def test_an_iterable_of_feeds_calibrates_qdq_insert() -> None:
    model_path, _ = demo_files()
    feeds = _demo_feeds()
    result = graphopt.optimize(model_path, "cleanup,qdq-insert{guard=false}", data=iter(feeds))
    assert isinstance(result, graphopt.optimize.Result)
    assert _ops(result.model)["QuantizeLinear"] > 0
    step = next(r for r in result.passes if r["pass"] == "qdq-insert")
    assert step["modified"] and step["stats"]
    assert step.get("left_alone", {}) == step["details"].get("kept_float", {})
    assert result.report["verify"]["inputs"] == "feeds given in Python"
    assert any(n.startswith("qdq-insert: ONNX Runtime fuses") for n in result.notes)
    assert result.output is None


def test_a_calibration_data_reader_is_data() -> None:
    model_path, _ = demo_files()
    result = graphopt.optimize(
        model_path, "cleanup,qdq-insert{guard=false}", data=_Reader(_demo_feeds(4))
    )
    assert _ops(result.model)["QuantizeLinear"] > 0
    assert result.report["verify"]["inputs"] == "_Reader"


def test_an_ir_model_in_a_result_out_and_the_input_untouched(tmp_path: Path) -> None:
    model = gir.load_model(demo_files()[0])
    before = gir.fingerprint(model)
    out = tmp_path / "out.onnx"
    result = graphopt.optimize(model, "cleanup", output=out, report_path=tmp_path / "r.json")
    assert gir.fingerprint(model) == before  # the caller's object is not the one rewritten
    assert result.model is not model
    assert _ops(model)["BatchNormalization"] == 4
    assert "BatchNormalization" not in _ops(result.model)
    assert result.output == out and out.is_file() and (tmp_path / "r.json").is_file()
    assert result.report["output"]["bytes"] == out.stat().st_size
    assert result.report["model"] == {"path": None, "sha256": None}
    assert result.report["verify"]["enabled"] and result.report["verify"]["feeds"] >= 1


def test_a_model_proto_and_a_dict_of_arrays(tmp_path: Path) -> None:
    model_path, data_path = demo_files()
    proto = onnx.load(str(model_path))
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    with np.load(data_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    result = graphopt.optimize(proto, "cleanup", data=arrays, batch=50)
    assert proto == copy
    assert result.report["verify"]["inputs"] == "arrays given in Python"
    saved = result.save(tmp_path / "m.onnx")
    assert onnx.load(str(saved)).graph.node


def test_bad_inputs_are_graphopt_errors_naming_the_fix() -> None:
    model_path, _ = demo_files()
    with pytest.raises(UsageError, match=r"cannot optimize a int"):
        graphopt.optimize(42, "cleanup")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"unknown key.*'img'"):
        graphopt.optimize(model_path, "cleanup", data=[{"input": _demo_feeds(1)[0]["input"],
                                                        "img": np.zeros(1)}])  # fmt: skip
    with pytest.raises(DataError, match="dtype float64"):
        graphopt.optimize(model_path, "cleanup", data=[{"input": np.zeros((1, 1, 8, 8))}])
    with pytest.raises(UsageError, match="budget"):
        graphopt.optimize(model_path, "cleanup", budget="accuracy>0.9")
    with pytest.raises(DataError, match="no samples"):
        graphopt.optimize(model_path, "cleanup", data=[])


def test_passes_lists_every_registered_pass() -> None:
    listing = graphopt.passes()
    names = [p["name"] for p in listing]
    assert "qdq-insert" in names and "fuse-hardswish" in names
    qdq = next(p for p in listing if p["name"] == "qdq-insert")
    assert qdq["needs"] == ["data"] and any(o["name"] == "budget" for o in qdq["options"])
    from graphopt.passes import cleanup  # the package stays a package

    assert cleanup.__name__ == "graphopt.passes.cleanup"


def test_bench_measures_models_side_by_side(tmp_path: Path) -> None:
    model_path, _ = demo_files()
    optimized = graphopt.optimize(model_path, "cleanup", output=tmp_path / "c.onnx").output
    report = graphopt.bench([model_path, optimized], repeat=3, rounds=2, warmup=1)
    rows = report["results"]
    assert len(rows) == 2
    assert rows[1]["ratio_to_reference"]["median"] > 0
