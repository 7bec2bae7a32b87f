"""Check that a ``graphopt bench``/``sweep`` HTML page really renders, in headless Chromium.

Why: the page embeds its plots as base64 PNGs. A broken data URI, a blank figure or a CSS
rule that hides or squeezes the images all give a page that *looks* fine as text but shows
no plots. This asks a real browser:

1. a copy of the page with a small script is loaded with ``--dump-dom`` (at the screenshot's
   width, so the layout is the same); the script records, for every ``<img>``, whether it
   decoded (natural size) and where it was laid out;
2. the page is screenshotted at its full height (``--force-device-scale-factor=1``, so CSS
   pixels are screenshot pixels);
3. each image's box is cut out of the screenshot and must show the plot: enough non-white and
   coloured pixels, in proportion to what the embedded PNG itself holds, and a high
   correlation with the embedded PNG (so it is this plot, in this place, not a blank box).

Usage: ``python -m graphopt.bench.render PAGE.html [--png SHOT.png] [--json]`` (exit 1 when a
check fails). Needs a Chromium binary (Debian: ``apt-get install chromium``; or set
``GRAPHOPT_CHROMIUM``) and Pillow (comes with matplotlib).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from graphopt.errors import GraphoptError, UsageError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WIDTH = 1280
MAX_HEIGHT = 16000
# a pixel is "white" above this on every channel (page background and antialiasing halo)
WHITE = 245
# a pixel is "coloured" when its channels differ by more than this (text and borders are grey)
COLOUR = 60
# the screenshot's box must correlate with the embedded plot at least this much
MATCH = 0.8

_PROBE = """
<script>
window.addEventListener('load', () => {
  document.querySelectorAll('img').forEach((img, i) => {
    const r = img.getBoundingClientRect();
    img.setAttribute('data-graphopt-check', JSON.stringify({
      index: i, complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
      box: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height],
      alt: img.alt}));
  });
  document.body.setAttribute('data-graphopt-height',
    String(Math.ceil(document.body.getBoundingClientRect().bottom + window.scrollY) + 16));
});
</script>
"""


def find_chromium() -> str | None:
    """A Chromium/Chrome binary: $GRAPHOPT_CHROMIUM, else the first on PATH."""
    env = os.environ.get("GRAPHOPT_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _flags(profile: Path) -> list[str]:
    flags = [
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return flags


def _run(browser: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="graphopt-chromium-") as profile:
        try:
            proc = subprocess.run(
                [browser, *_flags(Path(profile)), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise GraphoptError(f"{browser} did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise GraphoptError(f"cannot run {browser}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise GraphoptError(f"{browser} failed with exit code {proc.returncode}: {tail}")
    return proc.stdout


def _pixels(png: bytes) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def ink(rgb: Any) -> dict[str, float]:
    """Fractions of non-white and of coloured pixels in an RGB array."""
    if rgb.size == 0:
        return {"nonwhite": 0.0, "coloured": 0.0}
    nonwhite = (rgb < WHITE).any(axis=-1)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > COLOUR
    return {"nonwhite": float(nonwhite.mean()), "coloured": float(coloured.mean())}


def match(shot: Any, plot: Any, x: int, y: int, w: int, h: int, slack: int = 2) -> float:
    """How much the screenshot's box looks like the embedded plot: the best correlation of
    their grey levels over shifts of up to ``slack`` pixels (the browser may place an image at
    a fractional position, which blurs it by a pixel). 1 is identical; a blank box gives 0."""
    import numpy as np
    from PIL import Image

    if plot.shape[:2] != (h, w):  # shown scaled (max-width): compare at the shown size
        plot = np.asarray(
            Image.fromarray(plot.astype(np.uint8)).resize((w, h), Image.BILINEAR), np.int16
        )
    ref = plot.mean(axis=-1)
    ref = ref - ref.mean()
    best = 0.0
    for dy in range(-slack, slack + 1):
        for dx in range(-slack, slack + 1):
            y0, x0 = y + dy, x + dx
            if y0 < 0 or x0 < 0 or y0 + h > shot.shape[0] or x0 + w > shot.shape[1]:
                continue
            got = shot[y0 : y0 + h, x0 : x0 + w].mean(axis=-1)
            got = got - got.mean()
            denom = float(np.sqrt((ref * ref).sum() * (got * got).sum()))
            if denom > 0:
                best = max(best, float((ref * got).sum()) / denom)
    return best


def embedded_images(page: str) -> list[dict[str, Any]]:
    """Each ``<img>`` with a base64 PNG data URI: its alt text and the PNG's own ink."""
    out = []
    for m in re.finditer(r"<img\b[^>]*>", page):
        tag = m.group(0)
        alt = re.search(r'alt="([^"]*)"', tag)
        src = re.search(r'src="data:image/png;base64,([^"]*)"', tag)
        item: dict[str, Any] = {"alt": html.unescape(alt.group(1)) if alt else ""}
        if src is None:
            item["error"] = "not an embedded PNG"
        else:
            try:
                rgb = _pixels(base64.b64decode(src.group(1), validate=True))
                item["size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
                item.update(ink(rgb))
                item["pixels"] = rgb
            except Exception as exc:  # bad base64 or not a PNG
                item["error"] = f"does not decode: {type(exc).__name__}: {exc}"
        out.append(item)
    return out


def check_page(
    page_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str] | None = None,
    *,
    browser: str | None = None,
    timeout: float = 90,
) -> dict[str, Any]:
    """Render ``page_path`` in headless Chromium and check every plot is on the screenshot.

    Returns the findings; ``ok`` is False with ``problems`` listing what is wrong.
    """
    src = Path(page_path)
    if not src.is_file():
        raise UsageError(f"page not found: {src}")
    browser = browser or find_chromium()
    if browser is None:
        raise UsageError("no Chromium found: apt-get install chromium, or set GRAPHOPT_CHROMIUM")
    page = src.read_text(encoding="utf-8")
    images = embedded_images(page)
    problems = [
        f"img {i} ({im['alt']}): {im['error']}" for i, im in enumerate(images) if "error" in im
    ]
    with tempfile.TemporaryDirectory(prefix="graphopt-render-") as tmp:
        probe = Path(tmp) / src.name
        probe.write_text(
            page.replace("</body>", _PROBE + "</body>", 1) if "</body>" in page else page + _PROBE,
            encoding="utf-8",
        )
        url = probe.resolve().as_uri()
        dom = _run(
            browser,
            [f"--window-size={WIDTH},2000", "--virtual-time-budget=5000", "--dump-dom", url],
            timeout,
        )
        height = re.search(r'data-graphopt-height="(\d+)"', dom)
        laid_out = [
            json.loads(html.unescape(m.group(1)))
            for m in re.finditer(r'data-graphopt-check="([^"]*)"', dom)
        ]
        page_height = int(height.group(1)) if height else 2000
        shot_height = max(600, min(page_height, MAX_HEIGHT))
        shot = Path(png_path) if png_path else Path(tmp) / "shot.png"
        _run(
            browser,
            [f"--screenshot={shot.resolve()}", f"--window-size={WIDTH},{shot_height}", url],
            timeout,
        )
        if not shot.is_file():
            raise GraphoptError(f"{browser} wrote no screenshot")
        rgb = _pixels(shot.read_bytes())
    if len(laid_out) != len(images):
        problems.append(f"the browser laid out {len(laid_out)} images, the page has {len(images)}")
    for info in laid_out:
        i = info["index"]
        em = images[i] if i < len(images) else {}
        x, y, w, h = (round(v) for v in info["box"])
        info["embedded"] = em
        name = f"img {i} ({info.get('alt', '')})"
        if not info["complete"] or info["natural"][0] == 0:
            problems.append(f"{name}: the browser could not decode it")
            continue
        if w < 1 or h < 1:
            info["on_screenshot"] = False
            problems.append(f"{name}: not displayed (a {w}x{h} px box): the page shows no plot")
            continue
        if w < 100 or h < 100:
            problems.append(f"{name}: shown at {w}x{h} px, too small to read")
        if y + h > rgb.shape[0]:
            info["on_screenshot"] = False
            problems.append(f"{name}: below the screenshot (page taller than {MAX_HEIGHT} px)")
            continue
        info["on_screenshot"] = True
        info["shown"] = ink(rgb[max(0, y) : y + h, max(0, x) : x + w])
        info["match"] = match(rgb, em.get("pixels"), x, y, w, h) if "pixels" in em else None
        if em.get("nonwhite", 0.0) < 0.01 or em.get("coloured", 0.0) < 0.0002:
            problems.append(f"{name}: the embedded plot itself is (nearly) blank")
        if info["shown"]["nonwhite"] < 0.5 * em.get("nonwhite", 0.0):
            problems.append(f"{name}: the screenshot is (nearly) blank where the plot should be")
        if info["shown"]["coloured"] < 0.3 * em.get("coloured", 0.0):
            problems.append(f"{name}: the plot's coloured marks are missing on the screenshot")
        if info["match"] is not None and info["match"] < MATCH:
            problems.append(
                f"{name}: the screenshot there does not look like the embedded plot "
                f"(correlation {info['match']:.2f} < {MATCH})"
            )
    for em in images:
        em.pop("pixels", None)
    return {
        "page": str(src),
        "browser": browser,
        "screenshot": str(png_path) if png_path else None,
        "screenshot_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "page_height": page_height,
        "page_ink": ink(rgb),
        "images": laid_out,
        "ok": not problems,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m graphopt.bench.render",
        description="Render a graphopt bench/sweep HTML page in headless Chromium and check "
        "that its plots show.",
    )
    ap.add_argument("page", help="the HTML file")
    ap.add_argument("--png", help="keep the screenshot here")
    ap.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = ap.parse_args(argv)
    try:
        found = check_page(args.page, args.png)
    except GraphoptError as exc:
        print(f"graphopt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(f"{found['page']}: {len(found['images'])} image(s), page {found['page_height']} px")
        for info in found["images"]:
            shown = info.get("shown", {})
            print(
                f"  img {info['index']} {info.get('alt', '')!r}: natural "
                f"{info['natural'][0]}x{info['natural'][1]}, shown {info['box'][2]:.0f}x"
                f"{info['box'][3]:.0f} at y={info['box'][1]:.0f}, non-white "
                f"{shown.get('nonwhite', 0):.1%}, coloured {shown.get('coloured', 0):.1%}, "
                f"match {info.get('match') or 0:.3f}"
            )
        for p in found["problems"]:
            print(f"  PROBLEM: {p}")
        print("ok" if found["ok"] else "FAILED")
    return 0 if found["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
