"""``graphopt sweep`` on the shipped demo model: recipes, keys, a real sweep, resume, failures.

Sweeps here are small (the digits CNN, few timed runs, 1 thread). Latencies are not asserted;
cell structure, accuracy against the original (which must equal a direct computation), what is
stored and what is run again are. Slower cases (SIGKILL and resume against a direct run, Ray,
Chromium) are in test_sweep_slow.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from cli_testing import cli
from onnx import TensorProto, helper

from graphopt.bench import sweep as sw
from graphopt.bench.recipe import load_recipe
from graphopt.bench.sweep_store import Store
from graphopt.cli import main
from graphopt.errors import EXIT_INPUT, EXIT_USAGE

FAST = "threads = 1\nwarmup = 1\nrepeat = 3\nrounds = 2\n"


def recipe_text(
    model: Path,
    data: Path | None,
    *,
    pipelines: str = 'none = ""\ncleanup = "cleanup"\n',
    batches: str = "[1, 4]",
    bench_extra: str = 'metric = "top1"\n',
    model_extra: str = "calib_batch = 50\n",
    extra: str = "",
) -> str:
    data_line = f'data = "{data}"\n' if data else ""
    return (
        '[sweep]\nname = "t"\n\n'
        f'[bench]\neps = ["cpu"]\nbatches = {batches}\n{FAST}{bench_extra}\n'
        f"[pipelines]\n{pipelines}\n"
        f'[models.digits]\npath = "{model}"\n{data_line}{model_extra}\n{extra}'
    )


def write(tmp: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def top1(model: Path, data: Path) -> float:
    z = np.load(data)
    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"input": z["input"]})[0].argmax(-1) == z["label"]))


# ----------------------------------------------------------------------------- recipes


@pytest.fixture
def fixed_batch_model(tmp_path: Path) -> Path:
    """A model whose input has a fixed first dimension (so it only runs at batch 1)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "fixed.onnx"
    onnx.save(proto, str(path))
    return path


BAD_RECIPES = [
    # (change to the good recipe, exit code, words in the one-line error)
    (lambda t: t.replace("[bench]", "[benchh]"), EXIT_USAGE, ["unknown key 'benchh'"]),
    (
        lambda t: t.replace("batches =", "batch ="),
        EXIT_USAGE,
        ["[bench]", "unknown key 'batch'", "did you mean batches"],
    ),
    (
        lambda t: t.replace('cleanup = "cleanup"', 'bad = "fold-constant,cleanup"'),
        EXIT_USAGE,
        ["[pipelines] bad", "unknown pass 'fold-constant'", "column 1", "^^^"],
    ),
    (
        lambda t: t.replace('cleanup = "cleanup"', 'q = "cleanup,qdq-insert{calibraton=minmax}"'),
        EXIT_USAGE,
        ["[pipelines] q", "qdq-insert", "calibraton"],
    ),
    (
        lambda t: t.replace(
            'cleanup = "cleanup"', 'again = "repeat<4>(cleanup)"\ncleanup = "cleanup"'
        ),
        EXIT_USAGE,
        [],  # a different pipeline: accepted (see the next case for a real duplicate)
    ),
    (lambda t: t.replace('eps = ["cpu"]', 'eps = ["gpu"]'), EXIT_USAGE, ["eps", "'gpu'"]),
    (lambda t: t.replace("batches = [1, 4]", "batches = [0]"), EXIT_USAGE, ["batches", ">= 1"]),
    (lambda t: t.replace("threads = 1", 'threads = "two"'), EXIT_USAGE, ["threads", "integer"]),
    (lambda t: t.replace("[sweep]", "[sweep\n"), EXIT_USAGE, ["invalid TOML", "line"]),
    (lambda t: t + "[ray]\ngpu = { num_gpus = 1 }\n", EXIT_USAGE, ["[ray]", "unknown key 'gpu'"]),
    (
        lambda t: t + "[ray]\ncuda = { num_gpu = 1 }\n",
        EXIT_USAGE,
        ["[ray.cuda]", "did you mean num_gpus"],
    ),
    (
        lambda t: t.replace("calib_batch = 50", "calib_batch = 50\nsampels = 3"),
        EXIT_USAGE,
        ["[models.digits]", "unknown key 'sampels'", "did you mean samples"],
    ),
    (
        lambda t: t.replace('metric = "top1"', 'metric = "top3"'),
        EXIT_USAGE,
        ["[models.digits]", "unknown metric"],
    ),
]


@pytest.mark.parametrize(("change", "code", "words"), BAD_RECIPES)
def test_bad_recipes_fail_up_front(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path, change, code, words
) -> None:
    model, data = demo_paths
    recipe = write(tmp_path, change(recipe_text(model, data)))
    res = cli(capsys, "sweep", recipe, "--dry-run", "--out", tmp_path / "o")
    if not words:
        assert res.code == 0, res.err
        return
    assert res.code == code, res.err
    assert res.err.startswith("graphopt: error: recipe "), res.err
    assert "Traceback" not in res.err
    for w in words:
        assert w in res.err, (w, res.err)
    assert not (tmp_path / "o").exists()  # nothing ran, nothing was written


def test_same_pipeline_twice_is_refused(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path
) -> None:
    from graphopt.core.pipeline import PRESETS

    model, data = demo_paths
    text = recipe_text(
        model, data, pipelines=f'cleanup = "cleanup"\nexpanded = "{PRESETS["cleanup"]}"\n'
    )
    res = cli(capsys, "sweep", write(tmp_path, text), "--dry-run")
    assert res.code == EXIT_USAGE
    assert "'cleanup' and 'expanded' are the same pipeline" in res.err


@pytest.mark.parametrize(
    ("what", "code", "words"),
    [
        ("missing model", EXIT_INPUT, ["[models.digits] path", "not found"]),
        ("corrupt model", EXIT_INPUT, ["[models.digits] path", "not a valid ONNX model"]),
        ("missing data", EXIT_INPUT, ["[models.digits] data", "not found"]),
        ("no data for int8", EXIT_USAGE, ["pipeline 'int8' needs calibration data"]),
        ("top1 without data", EXIT_USAGE, ["needs labels"]),
        ("fixed batch", EXIT_USAGE, ["[models.digits] batches", "fixed first dimension"]),
        ("missing recipe", EXIT_USAGE, ["recipe not found"]),
    ],
)
def test_bad_files_fail_up_front(
    capsys: pytest.CaptureFixture[str],
    demo_paths,
    fixed_batch_model: Path,
    tmp_path: Path,
    what: str,
    code: int,
    words: list[str],
) -> None:
    model, data = demo_paths
    kwargs: dict[str, Any] = {}
    if what == "missing model":
        model = tmp_path / "nope.onnx"
    elif what == "corrupt model":
        model = tmp_path / "bad.onnx"
        model.write_bytes(b"\x08\x07garbage" * 10)
    elif what == "missing data":
        data = tmp_path / "nope.npz"
    elif what == "no data for int8":
        data = None
        kwargs = {"pipelines": 'int8 = "cpu-int8"\n', "bench_extra": ""}
    elif what == "top1 without data":
        data = None
    elif what == "fixed batch":
        model, data = fixed_batch_model, None
        kwargs = {"bench_extra": ""}
    recipe = write(tmp_path, recipe_text(model, data, **kwargs))
    if what == "missing recipe":
        recipe = tmp_path / "missing.toml"
    res = cli(capsys, "sweep", recipe, "--dry-run")
    assert res.code == code, res.err
    assert len(res.err.strip().splitlines()) <= 2  # one message (plus a hint at most)
    for w in words:
        assert w in res.err, (w, res.err)


def test_keys_follow_definitions_not_names(demo_paths, tmp_path: Path) -> None:
    model, data = demo_paths
    base = load_recipe(write(tmp_path, recipe_text(model, data)))
    keys = {c.id: c.key for c in base.cells}
    assert len(keys) == 4 and len(set(keys.values())) == 4
    again = load_recipe(write(tmp_path, recipe_text(model, data)))
    assert {c.id: c.key for c in again.cells} == keys  # stable
    # names and Ray resources are not part of a definition
    renamed = recipe_text(model, data).replace("[models.digits]", "[models.cnn]")
    renamed += "[ray]\ncpu = { num_cpus = 2 }\n"
    got = {
        c.id.replace("cnn/", "digits/"): c.key for c in load_recipe(write(tmp_path, renamed)).cells
    }
    assert got == keys
    # a batch size added: the old cells keep their keys
    more = load_recipe(write(tmp_path, recipe_text(model, data, batches="[1, 4, 2]")))
    assert {c.id: c.key for c in more.cells if c.batch != 2} == keys
    # a changed pipeline changes its cells only
    opts = recipe_text(model, data).replace('"cleanup"\n', '"cleanup,eliminate-dead-code"\n', 1)
    changed = {c.id: c.key for c in load_recipe(write(tmp_path, opts)).cells}
    for cid, key in changed.items():
        assert (key == keys[cid]) == ("/none/" in cid), cid
    # a changed bench setting or model file changes every cell
    slower = load_recipe(
        write(tmp_path, recipe_text(model, data).replace("repeat = 3", "repeat = 4"))
    )
    assert not {c.key for c in slower.cells} & set(keys.values())
    copy = tmp_path / "copy.onnx"
    proto = onnx.load(str(model))
    proto.doc_string = "changed"
    onnx.save(proto, str(copy))
    other = load_recipe(write(tmp_path, recipe_text(copy, data)))
    assert not {c.key for c in other.cells} & set(keys.values())


def test_relative_paths_and_dry_run(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path
) -> None:
    import shutil

    model, data = demo_paths
    sub = tmp_path / "recipes"
    sub.mkdir()
    shutil.copy(model, tmp_path / "m.onnx")
    shutil.copy(data, tmp_path / "d.npz")
    recipe = write(sub, recipe_text(Path("../m.onnx"), Path("../d.npz")))
    rec = load_recipe(recipe)
    assert rec.models[0].path == (tmp_path / "m.onnx").resolve()
    res = cli(capsys, "sweep", recipe, "--dry-run", "--out", tmp_path / "o")
    assert res.code == 0, res.err
    rows = [line for line in res.out.splitlines() if "digits/" in line]
    assert len(rows) == 4 and all("to run" in r for r in rows)
    assert "4 cells, 4 to run, 1 model(s) to optimize" in res.out


# ----------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One sweep of the demo (none, cleanup) x cpu x (1, 4) with the local backend."""
    from graphopt.cli.demo import demo_files

    tmp = tmp_path_factory.mktemp("sweep")
    model, data = demo_files()
    recipe = write(tmp, recipe_text(model, data))
    out = tmp / "out"
    code = main(["sweep", str(recipe), "--out", str(out), "--jobs", "2"])
    report = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
    return {
        "code": code,
        "out": out,
        "recipe": recipe,
        "report": report,
        "model": model,
        "data": data,
    }


def _cells(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["cells"]}


def test_sweep_report(swept: dict[str, Any]) -> None:
    assert swept["code"] == 0
    rep = swept["report"]
    assert rep["schema"] == "graphopt.sweep/1"
    assert rep["summary"] == {
        "cells": 4,
        "ok": 4,
        "error": 0,
        "skipped": 0,
        "pending": 0,
        "reused": 0,
        "hosts": rep["summary"]["hosts"],
    }
    assert rep["run"]["backend"] == "local" and rep["run"]["bench_jobs"] == 1
    assert "interleaved round-robin with the original" in rep["run"]["timing"]
    cells = _cells(rep)
    assert set(cells) == {f"digits/{p}/cpu/b{b}" for p in ("none", "cleanup") for b in (1, 4)}
    for cid, c in cells.items():
        row = c["row"]
        assert row["batch"] == c["batch"] and row["ep"] == "cpu"
        assert c["providers"][0] == "CPUExecutionProvider"
        assert row["runs"] == 2 * 3
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        if "/none/" in cid:
            assert c["original"] is None and c["optimize_key"] is None
            assert row["accuracy"]["max_abs"] == 0
        else:  # benchmarked against its original, in the same process
            assert c["original"]["model_index"] == 0 and row["model_index"] == 1
            assert len(row["ratio_to_reference"]["per_round"]) == 2
            assert 0 < row["accuracy"]["max_abs"] < 1e-4  # BatchNorm folding: float rounding
            assert row["accuracy"]["top1_agreement"] == 1.0
    # the task metric equals a direct computation on the original and the optimized model
    (opt,) = rep["optimized"]
    assert opt["status"] == "ok" and opt["summary"]["nodes"] == [15, 11]
    want = top1(swept["model"], swept["data"])
    assert cells["digits/none/cpu/b1"]["row"]["accuracy"]["metric"]["value"] == want
    assert cells["digits/cleanup/cpu/b4"]["row"]["accuracy"]["metric"]["value"] == top1(
        Path(opt["path"]), swept["data"]
    )


def test_sweep_files(swept: dict[str, Any]) -> None:
    out, rep = swept["out"], swept["report"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(
        f"{c['key']}.json" for c in rep["cells"]
    )
    (opt,) = rep["optimized"]
    folder = out / "optimized" / opt["key"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "optimized.onnx",
        "report.json",
        "result.json",
    ]
    assert json.loads((folder / "report.json").read_text())["schema"] == "graphopt.report/1"
    md = (out / "sweep.md").read_text()
    assert md.startswith("# graphopt sweep: t")
    assert sum(line.startswith("| digits | ") for line in md.splitlines()) == 4 + 1
    page = (out / "sweep.html").read_text()
    assert page.count("<tr>") == 1 + 4 + 1 + 1  # cells table and optimized-models table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in page
    else:
        assert page.count("data:image/png;base64,") == 2
    # no temp files left behind
    assert not [p for p in out.rglob("*") if p.name.startswith((".graphopt-", ".tmp-", ".old-"))]


def test_rerun_keeps_finished_cells(
    swept: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = swept["out"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    res = cli(capsys, "sweep", swept["recipe"], "--out", out)
    assert res.code == 0, res.err
    assert "4 finished earlier, 0 to run" in res.err
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    rep = json.loads((out / "sweep.json").read_text())
    assert rep["summary"]["reused"] == 4
    before, after = _cells(swept["report"]), _cells(rep)
    for cid in before:
        assert after[cid]["key"] == before[cid]["key"]
        assert after[cid]["row"] == before[cid]["row"]  # the stored measurement, not a new one
        assert after[cid]["reused"] is True


def test_changed_definition_runs_only_new_cells(swept: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(swept["out"], out)
    recipe = write(tmp_path, recipe_text(swept["model"], swept["data"], batches="[1, 2]"))
    rec = load_recipe(recipe)
    report = sw.run_sweep(rec, sw.SweepOptions(out=out, backend="inline"))
    cells = _cells(report)
    assert set(cells) == {f"digits/{p}/cpu/b{b}" for p in ("none", "cleanup") for b in (1, 2)}
    assert {cid for cid, c in cells.items() if c["reused"]} == {
        "digits/none/cpu/b1",
        "digits/cleanup/cpu/b1",
    }
    assert all(c["status"] == "ok" for c in cells.values())
    (opt,) = report["optimized"]
    assert opt["reused"] is True  # the cached optimized model served the new batch size
    # --no-resume measures everything again
    again = sw.run_sweep(rec, sw.SweepOptions(out=out, backend="inline", resume=False))
    assert again["summary"]["reused"] == 0 and again["optimized"][0]["reused"] is False


# ----------------------------------------------------------------------------- failures


CRASH_METRIC = """
import os, signal
def metric(outputs, samples):
    if outputs[0][0].shape[0] == 2:   # the batch-2 cell's process dies
        os.kill(os.getpid(), signal.SIGKILL)
    return 1.0
"""


def test_failed_cells_are_reported_and_others_finish(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path, monkeypatch
) -> None:
    model, data = demo_paths
    (tmp_path / "sweep_crash_metric.py").write_text(CRASH_METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the failing pass's reproducer goes here
    text = recipe_text(
        model,
        data,
        pipelines='none = ""\nsparse = "sparsify{sparsity=0.95}"\n',
        batches="[1, 2]",
        bench_extra='metric = "python:sweep_crash_metric:metric"\n',
    )
    out = tmp_path / "out"
    res = cli(capsys, "sweep", write(tmp_path, text), "--out", out)
    assert res.code == 1, res.err
    lines = res.err.strip().splitlines()
    assert lines[-1].startswith("graphopt: error: 3 of 4 cells failed; 1 optimization(s) failed")
    rep = json.loads((out / "sweep.json").read_text())
    cells = _cells(rep)
    assert cells["digits/none/cpu/b1"]["status"] == "ok"
    assert cells["digits/none/cpu/b1"]["row"]["accuracy"]["metric"]["value"] == 1.0
    crashed = cells["digits/none/cpu/b2"]
    assert crashed["status"] == "error"
    assert "killed by signal 9" in crashed["error"]["message"]
    for b in (1, 2):
        err = cells[f"digits/sparse/cpu/b{b}"]["error"]
        assert err["type"] == "OptimizeFailed"
        assert "sparsify" in err["message"] and "tolerance" in err["message"]
    (opt,) = rep["optimized"]
    assert opt["status"] == "error" and opt["error"]["exit_code"] == 4
    md = (out / "sweep.md").read_text()
    assert "digits/none/cpu/b2: error: " in md and "killed by signal 9" in md
    # a rerun runs the failed cells again and keeps the good one
    res = cli(capsys, "sweep", write(tmp_path, text), "--out", out, "--dry-run")
    assert res.out.count("to run (was error)") == 3 and res.out.count("ok (kept)") == 1


def test_interrupted_sweep_keeps_finished_cells_and_resumes(demo_paths, tmp_path: Path) -> None:
    """SIGINT in the middle: exit 130, running work stopped, report of what finished; the same
    command then runs only the rest."""
    model, data = demo_paths
    batches = list(range(1, 9))
    text = recipe_text(model, data, pipelines='none = ""\n', batches=str(batches))
    recipe = write(tmp_path, text)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "graphopt", "sweep", str(recipe), "--out", str(out)]
    # A shell's background job (``pytest &``) starts with SIGINT ignored, and Python keeps
    # it ignored in the child: give the sweep the default disposition, as a terminal does.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    cells = out / "cells"
    while time.monotonic() < deadline and proc.poll() is None:
        if cells.is_dir() and any(p.suffix == ".json" for p in cells.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "sweep interrupted:" in err and "run the same command again to resume" in err
    rep = json.loads((out / "sweep.json").read_text())
    assert rep["run"]["interrupted"] is True
    done = {c["id"] for c in rep["cells"] if c["status"] == "ok"}
    assert 1 <= len(done) < len(batches)
    assert {c["status"] for c in rep["cells"]} <= {"ok", "pending"}
    stamps = {p: p.stat().st_mtime_ns for p in cells.iterdir()}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rep2 = json.loads((out / "sweep.json").read_text())
    assert rep2["summary"]["ok"] == len(batches) and rep2["summary"]["reused"] == len(done)
    for p, stamp in stamps.items():
        assert p.stat().st_mtime_ns == stamp  # finished cells were not measured again


def test_bad_options(capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path) -> None:
    model, data = demo_paths
    recipe = write(tmp_path, recipe_text(model, data))
    res = cli(capsys, "sweep", recipe, "--ray-address", "auto")
    assert res.code == EXIT_USAGE and "--ray-address needs --backend ray" in res.err
    res = cli(capsys, "sweep", recipe, "--jobs", "0")
    assert res.code == EXIT_USAGE
    res = cli(capsys, "sweep", recipe, "--out", tmp_path / "no" / "such" / "dir")
    assert res.code == EXIT_USAGE and "does not exist" in res.err


def test_ray_backend_without_ray_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path, monkeypatch
) -> None:
    model, data = demo_paths
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    recipe = write(tmp_path, recipe_text(model, data))
    res = cli(capsys, "sweep", recipe, "--backend", "ray", "--out", tmp_path / "o")
    assert res.code == EXIT_USAGE, res.err
    assert "pip install 'graphopt[ray]'" in res.err
    assert os.path.isdir(tmp_path / "o")  # created before the backend was asked for


# ----------------------------------------------------------------------------- scheduling


class FakeBackend:
    """Records what ran together; finishes the oldest running task on each wait."""

    name = "fake"

    def __init__(self, failing: set[str] = frozenset()) -> None:
        self.now: list[sw.Task] = []
        self.starts: list[tuple[str, list[str]]] = []  # (task, tasks running with it)
        self.failing = failing

    def submit(self, task: sw.Task) -> None:
        self.now.append(task)
        self.starts.append((task.id, [t.id for t in self.now]))

    def running(self) -> list[sw.Task]:
        return list(self.now)

    def wait(self, timeout: float) -> list[tuple[sw.Task, dict[str, Any]]]:
        task = self.now.pop(0)
        return [(task, {"status": "error" if task.id in self.failing else "ok", "id": task.id})]

    def cancel_all(self) -> None:
        self.now.clear()

    def close(self) -> None:
        pass


def _task(kind: str, name: str, exclusive: bool, opt: str | None = None) -> sw.Task:
    spec = {"definition": {}, "run_id": "r", "optimize_key": opt}
    return sw.Task(kind, name, name, spec, exclusive)


@pytest.mark.parametrize("timed", [True, False], ids=["timed-pass", "no-timed-pass"])
@pytest.mark.parametrize("bench_jobs", [1, 2])
def test_schedule_rules(tmp_path: Path, bench_jobs: int, timed: bool) -> None:
    """Optimizations run --jobs at a time, those with timing passes alone; no cell starts
    before every optimization finished; cells run alone (or --bench-jobs at a time); a cell
    whose optimization failed is recorded as failed without running."""

    store = Store(tmp_path / "out")
    store.create()
    names = ("a", "b", "c", "timed") if timed else ("a", "b", "c")
    opts = [_task("optimize", n, n == "timed") for n in names]
    cells = [_task("bench", f"x{i}", bench_jobs == 1, opt) for i, opt in enumerate("abc")]
    cells += [_task("bench", "y", bench_jobs == 1, "b"), _task("bench", "z", bench_jobs == 1)]
    backend = FakeBackend(failing={"b"})
    options = sw.SweepOptions(out=store.root, jobs=2, bench_jobs=bench_jobs)
    sw._schedule(backend, opts, cells, options, store, sw.Quiet())
    starts = dict(backend.starts)
    order = [name for name, _ in backend.starts]
    assert max(len(w) for n, w in backend.starts if n in "abc") == 2  # --jobs 2
    if timed:
        assert starts["timed"] == ["timed"]  # alone
    benches = [n for n in order if n[0] in "xyz"]
    for n in benches:
        assert not set(starts[n]) & set(names), f"{n} started while optimizing"
    assert sorted(benches) == ["x0", "x2", "z"]  # x1 and y depend on the failed 'b'
    assert max(len(starts[n]) for n in benches) == bench_jobs
    for name in ("x1", "y"):
        (cell,) = [t for t in cells if t.id == name]
        stored = store.read_cell(cell.key)
        assert stored["status"] == "error" and stored["error"]["type"] == "OptimizeFailed"


def test_skipped_ep_cells(capsys: pytest.CaptureFixture[str], demo_paths, tmp_path: Path) -> None:
    """A CUDA cell where CUDA cannot run is a skipped cell, not a failure; a sweep in which
    every cell was skipped fails (as graphopt bench does when no EP could run)."""
    model, _ = demo_paths
    text = recipe_text(model, None, pipelines='none = ""\n', batches="[1]", bench_extra="")
    text = text.replace('eps = ["cpu"]', 'eps = ["cpu", "cuda"]')
    report = sw.run_sweep(
        load_recipe(write(tmp_path, text)), sw.SweepOptions(out=tmp_path / "o", backend="inline")
    )
    cells = _cells(report)
    assert cells["digits/none/cpu/b1"]["status"] == "ok"
    cuda = cells["digits/none/cuda/b1"]
    if cuda["status"] == "ok":
        pytest.skip("CUDA runs here")
    assert cuda["status"] == "skipped" and "CUDAExecutionProvider" in cuda["reason"]
    assert sw.failure_message(report) is None
    res = cli(
        capsys, "sweep", write(tmp_path, text.replace('"cpu", ', "")), "--out", tmp_path / "o"
    )
    assert res.code == 1 and "no cell could run: all 1 were skipped" in res.err


def test_one_sweep_per_folder(demo_paths, tmp_path: Path) -> None:
    from graphopt.errors import UsageError

    model, data = demo_paths
    rec = load_recipe(write(tmp_path, recipe_text(model, data, pipelines='none = ""\n')))
    store = Store(tmp_path / "o")
    store.create()
    with store.lock(), pytest.raises(UsageError, match=r"another sweep .* is running"):
        sw.run_sweep(rec, sw.SweepOptions(out=tmp_path / "o", backend="inline"))
    assert os.listdir(store.cells_root) == []


def test_rebuilt_model_is_measured_again(swept: dict[str, Any], tmp_path: Path) -> None:
    """Cells keep only what they measured on the optimized model stored now: a deleted (or
    rebuilt) optimized model is built again and all its cells are measured again."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(swept["out"], out)
    rec = load_recipe(swept["recipe"])
    (opt,) = swept["report"]["optimized"]
    shutil.rmtree(out / "optimized" / opt["key"])
    kept, todo, to_optimize, _ = sw.plan(rec, Store(out), resume=True)
    assert {c.id for c in todo} == {"digits/cleanup/cpu/b1", "digits/cleanup/cpu/b4"}
    assert [t.key for t in to_optimize] == [opt["key"]] and len(kept) == 2
    report = sw.run_sweep(rec, sw.SweepOptions(out=out, backend="inline"))
    cells = _cells(report)
    assert [cid for cid, c in cells.items() if not c["reused"]] == [
        "digits/cleanup/cpu/b1",
        "digits/cleanup/cpu/b4",
    ]
    build = report["optimized"][0]
    for cid in ("digits/cleanup/cpu/b1", "digits/cleanup/cpu/b4"):
        stored = json.loads((out / "cells" / f"{cells[cid]['key']}.json").read_text())
        assert (
            stored["optimize_run_id"]
            == json.loads((out / "optimized" / build["key"] / "result.json").read_text())["run_id"]
        )
    # a cell that measured another build than the stored one is measured again
    cell = out / "cells" / f"{cells['digits/cleanup/cpu/b4']['key']}.json"
    data = json.loads(cell.read_text())
    cell.write_text(json.dumps(dict(data, optimize_run_id="older")))
    _, todo, to_optimize, cached = sw.plan(rec, Store(out), resume=True)
    assert [c.id for c in todo] == ["digits/cleanup/cpu/b4"] and not to_optimize and cached
