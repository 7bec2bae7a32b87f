"""The demo's model and data: CREPE tiny ships in the package, its tones carry exact pitches,
and its budget metric scores what the model says against them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphopt import runtime
from graphopt.accuracy.budget import Budget
from graphopt.cli import demo
from graphopt.inputs import data
from graphopt.models import crepe


def test_shipped_model_hears_the_tones() -> None:
    frames, freqs = crepe.tones(np.geomspace(90.0, 900.0, 24), seed=3)
    assert frames.shape == (24, crepe.WINDOW) and frames.dtype == np.float32
    np.testing.assert_allclose(frames.mean(axis=1), 0.0, atol=1e-5)
    sess = runtime.make_session(crepe.model_path())
    (probs,) = sess.run(None, {"frames": frames})
    assert probs.shape == (24, crepe.PITCH_BINS)
    assert crepe.pitch_accuracy(probs, freqs) == 1.0
    # a fifth away is not within 50 cents: the metric can fail
    assert crepe.pitch_accuracy(probs, freqs * 1.5) == 0.0
    # the decoded pitch is near the bin whose centre frequency is the tone's
    centre = crepe.bin_frequencies()[probs.argmax(axis=1)]
    assert np.all(np.abs(1200 * np.log2(centre / freqs)) < 30)


def test_pitch50_is_a_budget_metric(tmp_path: Path) -> None:
    path = tmp_path / "tones.npz"
    np.savez(path, **crepe.tone_set(8, 150.0, 600.0, seed=0))
    model = crepe.model_path()
    from graphopt import ir as gir

    samples = data.load_data(gir.load_model(model), path)
    assert len(samples.feeds) == 8 and samples.feeds[0]["frames"].shape == (1, crepe.WINDOW)
    sess = runtime.make_session(model)
    outputs = runtime.run_feeds(sess, samples.feeds)
    assert crepe.pitch50(outputs, samples) == 1.0
    metric = Budget.parse(demo.BUDGET)
    assert metric.threshold == pytest.approx(0.99)
    wrong = [[np.roll(o[0], 20, axis=-1)] for o in outputs]  # every pitch 400 cents up
    assert crepe.pitch50(wrong, samples) == 0.0


def test_zoo_uses_the_same_tones() -> None:
    import zoo
    from zoo import metrics

    assert zoo.crepe_frames is crepe.tones and metrics.crepe_pitch50 is crepe.pitch50
    assert zoo.CREPE_PITCH_BINS == crepe.PITCH_BINS


def test_setup_writes_two_disjoint_tone_sets(tmp_path: Path) -> None:
    setup = demo.Setup.create(tmp_path / "d")
    calib, test = np.load(setup.calib), np.load(setup.test)
    assert calib["frames"].shape == (64, 1, crepe.WINDOW)
    assert test["frames"].shape == (128, 1, crepe.WINDOW)
    assert not set(np.round(calib["label"], 6)) & set(np.round(test["label"], 6))
    assert setup.model.read_bytes() == crepe.model_path().read_bytes()
    cmd = setup.tune_command()
    assert cmd.startswith(f"cd {setup.folder} && graphopt tune {setup.model.name} ")
    assert f"--data {setup.calib.name} --eval-data {setup.test.name} " in cmd
    assert f"--budget '{demo.TUNE_BUDGET}'" in cmd
