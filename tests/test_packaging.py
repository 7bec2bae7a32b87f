"""A built wheel installs into a fresh venv and imports ``graphopt.passes`` from ``passes/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the files git knows (committed or not, never ignored ones): a
    # stale build/ folder of the checkout would put modules that moved away into the wheel
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("graphopt-*.whl")
    return whl


def test_wheel_maps_passes_and_ships_the_demo(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "graphopt/passes/__init__.py" in names
    assert "graphopt/passes/cleanup/fold_batchnorm.py" in names
    assert "graphopt/models/digits_cnn.onnx" in names
    assert "graphopt/models/digits_test.npz" in names
    assert "graphopt/models/crepe_tiny.onnx" in names  # the demo's model
    # the corpus (builders, training scripts, corpus-only models) is not installed
    corpus = [n for n in names if "zoo" in n.split("/") or "/train_" in n or "tf2onnx" in n]
    assert not corpus, corpus
    models = {n.rsplit("/", 1)[-1] for n in names if n.startswith("graphopt/models/")}
    assert models == {
        "__init__.py",
        "crepe.py",
        "crepe_tiny.onnx",
        "digits_cnn.onnx",
        "digits_test.npz",
    }, models
    assert not any(n.startswith(("passes/", "tests/", "benchmarks/")) for n in names)
    # every package in the source tree is in the wheel (pyproject lists them by hand)
    for init in [*ROOT.glob("graphopt/**/__init__.py"), *ROOT.glob("passes/**/__init__.py")]:
        rel = init.relative_to(ROOT).as_posix()
        if rel.startswith("passes/"):
            rel = "graphopt/" + rel
        assert rel in names, f"{rel} missing from the wheel: add it to pyproject's packages"


def test_fresh_venv_imports_graphopt_passes(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # dependencies come from this environment (no network needed); graphopt only from the wheel
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    deps = sysconfig.get_paths()["purelib"]
    (site / "deps.pth").write_text(deps + "\n")
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import graphopt, graphopt.passes, graphopt.passes.cleanup.fold_batchnorm as f;"
        "from graphopt.core.registry import all_passes;"
        "print(graphopt.__file__); print(graphopt.passes.__file__);"
        "print(len(all_passes()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TMPDIR"] = str(tmp_path)  # the demo's folder stays in the test's
    proc = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mod_file, passes_file, count = proc.stdout.split()
    assert mod_file.startswith(str(site)) and passes_file.startswith(str(site))
    assert passes_file.endswith("graphopt/passes/__init__.py")
    assert int(count) >= 9
    # the console script works from the wheel install, and so does the demo from the files
    # the wheel ships
    for command, expect in (("passes", ["fold-batchnorm"]), ("demo", ["cpu-int8", "tune"])):
        proc = subprocess.run(
            [str(env_dir / "bin" / "graphopt"), command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert all(word in proc.stdout for word in expect), proc.stdout[-2000:]
