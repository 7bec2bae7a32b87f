"""Task metrics of corpus models in the form accuracy budgets call: ``f(outputs, samples)``.

``outputs`` is one list of output arrays per feed, ``samples`` the DATA they came from (its
extras carry the labels). Use them as ``--budget python:graphopt.zoo.metrics:NAME>=X`` in
``graphopt optimize`` and ``graphopt tune`` (``>=-1pt`` there: at most a point below the
original model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphopt import zoo
from graphopt.zoo.wheels import ctc_greedy, doclaynet_scores, glyph_scores

Outputs = Sequence[Sequence[np.ndarray]]


def crepe_pitch50(outputs: Outputs, samples: Any) -> float:
    """CREPE: fraction of frames whose decoded pitch is within 50 cents of ``label`` (Hz)."""
    probs = np.concatenate([np.asarray(o[0]).reshape(-1, zoo.CREPE_PITCH_BINS) for o in outputs])
    freqs = np.asarray(samples.extras["label"], np.float64).reshape(-1)
    return zoo.crepe_pitch_accuracy(probs, freqs[: len(probs)])


def ocr_exact_match(outputs: Outputs, samples: Any) -> float:
    """ddddocr: fraction of feeds whose greedy-CTC text equals ``text``, ignoring case (the
    model mixes up cases); the charset (blank first) is DATA's ``charset``."""
    charset = [str(c) for c in samples.extras["charset"]]
    texts = [str(t) for t in samples.extras["text"]]
    hits = [
        ctc_greedy(out[0], charset).lower() == text.lower()
        for out, text in zip(outputs, texts, strict=False)
    ]
    return float(np.mean(hits)) if hits else 0.0


def glyph_f1(outputs: Outputs, samples: Any) -> float:
    """ddddocr's glyph detector (YOLOX): F1 of its detections against DATA's ``boxes``."""
    return glyph_scores(outputs, samples.extras)["hmean"]


def doclaynet_f1(outputs: Outputs, samples: Any) -> float:
    """The DocLayNet YOLOv8: F1 of its layout blocks against DATA's ``boxes``/``classes``."""
    return doclaynet_scores(outputs, samples.extras)["hmean"]
