"""The corpus entries of zoo.exported: each builds, its DATA loads and runs on ONNX
Runtime CPU, its tags are true of the file, and trained models reach their measured metric.

Slow (exports with torch, trains small scikit-learn and torch models): run with -m slow.
Every entry is built once per module into a temporary cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow

NAMES = [
    "digits-tf2onnx",
    "digits-transformer-tf2onnx",
    "mtcnn-pnet",
    "mtcnn-rnet",
    "mtcnn-onet",
    "gpt2-past-torchscript",
    "gpt2-dynamo",
    "minilm-dynamo",
    "vit-dynamo",
    "whisper-encoder-torchscript",
    "minilm-opset12",
    "crepe-tiny-opset11",
    "mtcnn-pnet-opset11-vc",
    "sklearn-logreg-zipmap",
    "sklearn-forest",
    "sklearn-mlp",
    "control-flow",
    "constant-weights",
    "fp16-cnn",
    "external-data",
    "scalar-input",
    "unnamed-nodes",
]

#: Float model metrics measured when the entries were written, less a margin.
THRESHOLDS = {
    "mtcnn-pnet": ("face-top1", 0.95),  # measured 0.987 (150 held-out crops)
    "mtcnn-rnet": ("face-top1", 0.97),  # 1.000
    "mtcnn-onet": ("face-top1", 0.97),  # 1.000
    "external-data": ("face-top1", 0.97),  # 1.000 (ONet)
    "crepe-tiny-opset11": ("pitch@50c", 0.9),  # 1.000
    "constant-weights": ("pitch@50c", 0.9),  # 1.000
    "fp16-cnn": ("pitch@50c", 0.9),  # 1.000
    "scalar-input": ("pitch@50c", 0.9),  # 1.000
    "sklearn-logreg-zipmap": ("top1", 0.93),  # 1.000 (48 wine samples)
    "sklearn-forest": ("top1", 0.9),  # 0.938 (160 breast-cancer samples)
    "sklearn-mlp": ("top1", 0.95),  # 0.979 (528 digits)
    "control-flow": ("top1", 0.93),  # 0.971 (450 digits)
    "unnamed-nodes": ("top1", 0.97),  # 0.996 (450 digits)
    "digits-tf2onnx": ("top1", 0.97),  # 0.996 (450 digits, NHWC)
    "digits-transformer-tf2onnx": ("top1", 0.94),  # 0.962 (450 digits, 64 pixel tokens)
}


def _has_everything(entry) -> bool:
    return not entry.missing()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture(scope="module")
def corpus():
    from zoo import corpus

    return corpus


def _entry(corpus, name: str):
    entry = corpus.entries([name])[0]
    if not _has_everything(entry):
        pytest.skip(f"{name} needs {', '.join(entry.missing())}")
    return entry


def _built(corpus, name: str, cache: Path) -> tuple[Path, Path, Path]:
    model = corpus.model_path(name, cache)
    return model, corpus.data_path(name, "calib", cache), corpus.data_path(name, "eval", cache)


def test_all_registered(corpus) -> None:
    from zoo import exported  # noqa: F401

    known = {e.name for e in corpus.entries()}
    assert set(NAMES) <= known
    assert set(THRESHOLDS) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs_on_ort(corpus, cache: Path, name: str) -> None:

    entry = _entry(corpus, name)
    model, calib, evaluation = _built(corpus, name, cache)
    proto = onnx.load(str(model))
    assert proto.ir_version <= 10
    onnx.checker.check_model(str(model))
    for data in (calib, evaluation):
        with np.load(data) as npz:
            inputs = [i.name for i in proto.graph.input]
            assert set(inputs) <= set(npz.files)
            counts = {len(npz[k]) for k in inputs}
            assert len(counts) == 1  # one leading sample axis
            if entry.batch > 1:
                assert counts.pop() % entry.batch == 0
    feeds, _ = corpus.feeds_of(model, evaluation, batch=entry.batch)
    outs = corpus.run_model(model, feeds[:1])[0]
    assert len(outs) == len(proto.graph.output)
    for out in outs:
        if isinstance(out, np.ndarray) and out.dtype.kind == "f":
            assert np.isfinite(out.astype(np.float32)).all()


@pytest.mark.parametrize("name", NAMES)
def test_data_loads_with_graphopt(corpus, cache: Path, name: str) -> None:
    from graphopt import ir as gir
    from graphopt.inputs import data as gdata

    entry = _entry(corpus, name)
    model, calib, evaluation = _built(corpus, name, cache)
    loaded = gir.load_model(model)
    for data in (calib, evaluation):
        samples = gdata.load_data(loaded, data, batch=entry.batch)
        assert len(samples) > 0
    outs = corpus.run_model(model, samples.feeds[:1])[0]
    assert len(outs) == len(loaded.graph.outputs)


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_metric(corpus, cache: Path, name: str) -> None:
    entry = _entry(corpus, name)
    model, _, evaluation = _built(corpus, name, cache)
    assert entry.evaluate is not None
    metric, threshold = THRESHOLDS[name]
    result = entry.evaluate(model, evaluation)
    assert result[metric] >= threshold, result


def test_entries_without_labels_have_no_metric(corpus) -> None:
    for name in NAMES:
        entry = corpus.entries([name])[0]
        assert (entry.evaluate is not None) == (name in THRESHOLDS), name


# --------------------------------------------------------------------------- tags are true


def _float_types() -> set[int]:
    return {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _dims(value: onnx.ValueInfoProto) -> list:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _tag_holds(tag: str, model: onnx.ModelProto, folder: Path) -> bool:
    graph = model.graph
    inputs = list(graph.input)
    default = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    tensor_inputs = [i for i in inputs if i.type.HasField("tensor_type")]
    checks = {
        "opset<13": lambda: default < 13,
        "dynamic-spatial": lambda: any(
            len(_dims(i)) == 4 and not any(isinstance(d, int) for d in _dims(i)[2:])
            for i in tensor_inputs
        ),
        "dynamic-batch": lambda: all(
            _dims(i) and not isinstance(_dims(i)[0], int)
            for i in tensor_inputs
            if len(_dims(i)) > 0
        ),
        "unnamed-nodes": lambda: all(not n.name for n in _all_nodes(graph)),
        "constant-weights": lambda: (
            not graph.initializer and any(n.op_type == "Constant" for n in graph.node)
        ),
        "ml-domain": lambda: any(n.domain == "ai.onnx.ml" for n in _all_nodes(graph)),
        "sequence-output": lambda: any(o.type.HasField("sequence_type") for o in graph.output),
        "control-flow": lambda: any(n.op_type in ("If", "Loop", "Scan") for n in graph.node),
        "fp16": lambda: (
            all(
                v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
                for v in [*inputs, *graph.output]
                if v.type.tensor_type.elem_type in _float_types()
            )
            and all(
                t.data_type == onnx.TensorProto.FLOAT16
                for t in graph.initializer
                if t.data_type in _float_types()
            )
        ),
        "external-data": lambda: (
            any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
            and (folder / "model.onnx.data").is_file()
        ),
        "scalar-input": lambda: any(
            i.type.tensor_type.HasField("shape") and len(_dims(i)) == 0 for i in tensor_inputs
        ),
        "integer-inputs": lambda: any(
            i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
            for i in tensor_inputs
        ),
        "several-outputs": lambda: len(graph.output) > 1,
        "past-key-values": lambda: (
            any("past" in i.name for i in inputs) and any("present" in o.name for o in graph.output)
        ),
    }
    return checks[tag]()


@pytest.mark.parametrize("name", NAMES)
def test_tags_are_true(corpus, cache: Path, name: str) -> None:
    entry = _entry(corpus, name)
    model_file = corpus.model_path(name, cache)
    model = onnx.load(str(model_file), load_external_data=False)
    for tag in entry.tags:
        assert _tag_holds(tag, model, model_file.parent), f"{name}: tag {tag} does not hold"
    # and the structural tags that are not claimed do not hold either
    for tag in (
        "opset<13",
        "constant-weights",
        "control-flow",
        "fp16",
        "external-data",
        "scalar-input",
        "unnamed-nodes",
        "sequence-output",
        "ml-domain",
    ):
        if tag not in entry.tags:
            assert not _tag_holds(tag, model, model_file.parent), f"{name}: untagged {tag}"


# --------------------------------------------------------------------------- specifics


def test_pnet_runs_at_other_sizes(corpus, cache: Path) -> None:
    _entry(corpus, "mtcnn-pnet")
    model = corpus.model_path("mtcnn-pnet", cache)
    x = np.random.default_rng(0).standard_normal((2, 3, 31, 45)).astype(np.float32)
    boxes, prob = corpus.run_model(model, [{"input": x}])[0]
    assert boxes.shape == (2, 4, 11, 18) and prob.shape == (2, 2, 11, 18)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_version_converted_pnet_keeps_weights(corpus, cache: Path) -> None:
    """The converted PNet matches the opset-17 one except face_prob's Softmax (see notes)."""
    _entry(corpus, "mtcnn-pnet-opset11-vc")
    old = corpus.model_path("mtcnn-pnet-opset11-vc", cache)
    new = corpus.model_path("mtcnn-pnet", cache)
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    a = corpus.run_model(old, [{"input": x}])[0]
    b = corpus.run_model(new, [{"input": x}])[0]
    for got, want in zip(a, b):  # on a 1x1 map both Softmax semantics agree
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gpt2_past_grows_the_cache(corpus, cache: Path) -> None:

    entry = _entry(corpus, "gpt2-past-torchscript")
    model, _, evaluation = _built(corpus, "gpt2-past-torchscript", cache)
    feeds, _ = corpus.feeds_of(model, evaluation, batch=entry.batch)
    outs = corpus.run_model(model, feeds[:1])[0]
    past = feeds[0]["past_key_values.0.key"]
    assert outs[0].shape == (entry.batch, 1, 256)
    assert outs[1].shape == (past.shape[0], past.shape[1], past.shape[2] + 1, past.shape[3])
    np.testing.assert_allclose(outs[1][:, :, :-1], past, rtol=1e-5, atol=1e-6)


def test_control_flow_data_takes_both_branches(corpus, cache: Path) -> None:
    from zoo import exported

    _entry(corpus, "control-flow")
    model = onnx.load(str(corpus.model_path("control-flow", cache)))
    ops = {n.op_type for n in model.graph.node}
    assert {"If", "Loop"} <= ops
    for node in model.graph.node:  # the subgraphs hold real compute
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                assert any(n.op_type == "Conv" for n in attr.g.node), node.op_type
    x_tr, x_te, _, _ = exported._digits_split()
    threshold = float(np.round(np.median(x_tr.mean(axis=(1, 2, 3))), 3))
    heavy = x_te.mean(axis=(1, 2, 3)) > threshold
    assert 0.2 < heavy.mean() < 0.8
    steps = np.clip((x_te > 0.5).sum(axis=(1, 2, 3)) // 6 - 1, 1, 3)
    assert set(np.unique(steps)) == {1, 2, 3}


def test_scalar_input_changes_the_result(corpus, cache: Path) -> None:
    _entry(corpus, "scalar-input")
    model, _, evaluation = _built(corpus, "scalar-input", cache)
    with np.load(evaluation) as npz:
        audio = npz["audio"][:1]
    feeds = [
        {"audio": audio, "sample_rate": np.array(rate, dtype=np.int64)} for rate in (16000, 44100)
    ]
    (a,), (b,) = corpus.run_model(model, feeds)
    assert np.abs(a - b).max() > 0.1


def test_external_data_layout(corpus, cache: Path) -> None:
    _entry(corpus, "external-data")
    model = corpus.model_path("external-data", cache)
    data = model.parent / "model.onnx.data"
    assert data.stat().st_size > 1_000_000
    assert model.stat().st_size < 100_000
    assert {p.name for p in model.parent.iterdir()} <= {
        "model.onnx",
        "model.onnx.data",
        "calib.npz",
        "eval.npz",
    }
