"""``graphopt bench --html`` and ``graphopt sweep`` pages rendered in headless Chromium.

The page of the demo model against a perturbed copy must show both plots: every ``<img>``
decodes in the browser, lies on the screenshot, and the screenshot there correlates with the
embedded PNG. Negative controls (a blank plot, hidden images, a broken data URI) prove the
check can fail. Slow; skipped where no Chromium, matplotlib or Pillow is installed. By hand:
``python -m graphopt.bench.render PAGE.html --png shot.png``.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from graphopt.bench import render
from graphopt.cli import main

pytestmark = pytest.mark.slow

FAST = ["--threads", "1", "--warmup", "1", "--repeat", "3", "--rounds", "2"]


@pytest.fixture(scope="module")
def browser() -> str:
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    found = render.find_chromium()
    if found is None:
        pytest.skip("no Chromium binary (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def bench_page(tmp_path_factory: pytest.TempPathFactory, browser: str) -> Path:
    from graphopt.cli.demo import demo_files

    tmp = tmp_path_factory.mktemp("render")
    model, data = demo_files()
    proto = onnx.load(str(model))
    for init in proto.graph.initializer:
        if init.name == "15.weight":
            w = onnx.numpy_helper.to_array(init)
            noisy = w + np.random.default_rng(0).normal(0, 0.05, w.shape).astype(w.dtype)
            init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
    perturbed = tmp / "perturbed.onnx"
    onnx.save(proto, str(perturbed))
    page = tmp / "bench.html"
    args = ["bench", str(model), str(perturbed), "--data", str(data), "--batch", "1,8"]
    assert main([*args, "--metric", "top1", *FAST, "--html", str(page)]) == 0
    return page


def test_bench_page_shows_its_plots(bench_page: Path, browser: str, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    found = render.check_page(bench_page, shot, browser=browser)
    assert found["ok"], found["problems"]
    assert len(found["images"]) == 2
    for img in found["images"]:
        assert img["complete"] and img["natural"][0] > 300 and img["natural"][1] > 200
        assert img["on_screenshot"]
        assert img["match"] > 0.95
        assert img["shown"]["nonwhite"] > 0.02
    # the screenshot is the whole page, and its lower part (the plots) holds colour
    from PIL import Image

    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert rgb.shape[0] == found["page_height"] and rgb.shape[1] == render.WIDTH
    top = min(int(img["box"][1]) for img in found["images"])
    assert render.ink(rgb[top:])["coloured"] > 0.01
    assert render.ink(rgb[:top])["coloured"] < 0.001  # tables and text are grey


def _blank_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (600, 400), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("sabotage", "words"),
    [
        (lambda p: re.sub(r"base64,[^\"]*", "base64," + _blank_png(), p, count=1), "blank"),
        (lambda p: p.replace("</style>", "img { visibility: hidden; }</style>"), "blank"),
        (lambda p: p.replace("</style>", "img { opacity: 0.03; }</style>"), "blank"),
        (lambda p: re.sub(r"base64,([^\"]{40})", "base64,!!!!\\1", p, count=1), "decode"),
    ],
    ids=["blank-plot", "hidden", "faded", "broken-uri"],
)
def test_the_check_can_fail(
    bench_page: Path, browser: str, tmp_path: Path, sabotage: Any, words: str
) -> None:
    page = tmp_path / "bad.html"
    page.write_text(sabotage(bench_page.read_text()))
    found = render.check_page(page, browser=browser)
    assert not found["ok"]
    assert any(words in p for p in found["problems"]), found["problems"]


def test_sweep_page_and_command_line(
    browser: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from graphopt.cli.demo import demo_files

    model, data = demo_files()
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[bench]\nbatches = [1, 8]\nthreads = 1\nwarmup = 1\nrepeat = 3\nrounds = 2\n"
        'metric = "top1"\n[pipelines]\nnone = ""\ncleanup = "cleanup"\n'
        f'[models.digits]\npath = "{model}"\ndata = "{data}"\n'
    )
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    page = tmp_path / "out" / "sweep.html"
    assert render.main([str(page), "--png", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("match 1.0") + out.count("match 0.9") == 2 and out.rstrip().endswith("ok")
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</style>", "img { display: none; }</style>"))
    assert render.main([str(bad)]) == 1
    assert "PROBLEM" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "out")
