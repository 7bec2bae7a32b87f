"""A sweep's output folder: one file per finished cell, one folder per optimized model.

Layout (``OUT`` is ``graphopt sweep --out``)::

    OUT/cells/<key>.json            one cell's result (schema graphopt.sweep.cell/1)
    OUT/optimized/<key>/            optimized.onnx (+ .data), report.json (graphopt optimize's
                                    report), result.json (schema graphopt.sweep.optimize/1)
    OUT/logs/<key>.log              what the task's process printed
    OUT/sweep.json, .md, .html      the sweep's report

Every write is atomic (a temp file or folder beside the target, then a rename), so a sweep
killed at any moment leaves only complete results behind; that is what makes resuming safe.
Keys are hashes of definitions (see :mod:`graphopt.bench.recipe`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from graphopt.core.report import write_json
from graphopt.errors import UsageError


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cells_root = root / "cells"
        self.optimized_root = root / "optimized"
        self.logs_root = root / "logs"

    def create(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--out: {self.root} exists and is not a folder")
        if not self.root.parent.is_dir():
            raise UsageError(f"--out: folder {self.root.parent} does not exist")
        for d in (self.root, self.cells_root, self.optimized_root, self.logs_root):
            d.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``OUT/.lock`` while a sweep runs: a second sweep on the same folder (a resume
        started while the first still runs) is refused. The OS drops the lock when the
        process dies, even by SIGKILL, so a killed sweep never leaves a stale lock."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fh = open(self.root / ".lock", "a+")  # held open while locked
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                owner = fh.read().strip() or "?"
                raise UsageError(
                    f"--out {self.root}: another sweep (pid {owner}) is running in this folder"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fh.close()

    # cells
    def cell_path(self, key: str) -> Path:
        return self.cells_root / f"{key}.json"

    def read_cell(self, key: str) -> dict[str, Any] | None:
        return _read(self.cell_path(key))

    def write_cell(self, result: Mapping[str, Any]) -> Path:
        return write_json(self.cell_path(result["key"]), dict(result))

    # optimized models
    def optimized_dir(self, key: str) -> Path:
        return self.optimized_root / key

    def read_optimized(self, key: str) -> dict[str, Any] | None:
        """The optimize result, or None; an ok result whose files went missing counts as none."""
        d = self.optimized_dir(key)
        result = _read(d / "result.json")
        if result is None:
            return None
        if result.get("status") == "ok" and not all(
            (d / name).is_file() for name in result.get("files", [])
        ):
            return None
        return result

    def commit_optimized(self, key: str, result: Mapping[str, Any], src: Path | None) -> Path:
        """Move ``src``'s files and result.json into ``optimized/<key>`` in one rename."""
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.optimized_root))
        try:
            if src is not None:
                for p in src.iterdir():
                    if p.is_file() and p.name != "result.json":
                        os.replace(p, tmp / p.name)
            write_json(tmp / "result.json", dict(result))
            return self._swap(tmp, self.optimized_dir(key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit_optimized_files(
        self, key: str, result: Mapping[str, Any], files: Mapping[str, bytes]
    ) -> Path:
        """The same from file contents (a Ray task on another machine sent them back)."""
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.optimized_root))
        try:
            for name, blob in files.items():
                (tmp / Path(name).name).write_bytes(blob)
            return self.commit_optimized(key, result, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _swap(self, tmp: Path, final: Path) -> Path:
        """Put folder ``tmp`` at ``final``, replacing an older one (renames only)."""
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def log_path(self, key: str) -> Path:
        return self.logs_root / f"{key}.log"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
