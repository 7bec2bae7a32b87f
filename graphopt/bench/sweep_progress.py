"""What a running sweep shows: the listener protocol, a quiet one, and the live progress display."""

from __future__ import annotations

from typing import Any, Protocol

from graphopt.bench.sweep_report import result_rows
from graphopt.bench.sweep_task import Task


class Listener(Protocol):
    def begin(self, plan: dict[str, Any]) -> None: ...

    def started(self, task: Task) -> None: ...

    def finished(self, task: Task, result: dict[str, Any]) -> None: ...

    def end(self) -> None: ...


class Quiet:
    def begin(self, plan: dict[str, Any]) -> None:
        pass

    def started(self, task: Task) -> None:
        pass

    def finished(self, task: Task, result: dict[str, Any]) -> None:
        pass

    def end(self) -> None:
        pass


class ProgressDisplay:
    """Bars for optimizations and cells with the tasks running now (on a terminal), or one
    line per finished task (in logs and pipes)."""

    def __init__(self, console: Any, *, live: bool) -> None:
        self.console = console
        self.live = live
        self.progress: Any = None
        self.bars: dict[str, Any] = {}
        self.running: dict[str, str] = {}
        self.count = {"optimize": 0, "bench": 0}
        self.total = {"optimize": 0, "bench": 0}

    def begin(self, plan: dict[str, Any]) -> None:
        self.total = {"optimize": plan["optimize_to_run"], "bench": plan["cells_to_run"]}
        self.console.print(
            f"sweep: {plan['cells']} cells, {plan['cells_reused']} finished earlier, "
            f"{plan['cells_to_run']} to run; {plan['optimize_to_run']} model(s) to optimize "
            f"({plan['optimize_reused']} cached); backend {plan['backend']}, "
            f"{plan['jobs']} optimize job(s), {plan['bench_jobs']} bench job(s); "
            f"results in {plan['out']}",
            markup=False,
            soft_wrap=True,
        )
        if not self.live:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.fields[label]:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.progress.__enter__()
        for kind, label in (("optimize", "optimize"), ("bench", "cells")):
            self.bars[kind] = self.progress.add_task(
                "",
                total=self.total[kind] or 1,
                completed=0 if self.total[kind] else 1,
                label=label,
            )

    def _refresh(self) -> None:
        if self.progress is None:
            return
        for kind, bar in self.bars.items():
            now_running = [i for k, i in self.running.items() if k.startswith(kind + ":")]
            self.progress.update(bar, description=", ".join(now_running)[:80])

    def started(self, task: Task) -> None:
        self.running[f"{task.kind}:{task.key}"] = task.id
        self._refresh()

    def finished(self, task: Task, result: dict[str, Any]) -> None:
        self.running.pop(f"{task.kind}:{task.key}", None)
        self.count[task.kind] += 1
        line = f"[{self.count[task.kind]}/{self.total[task.kind]}] {task.kind} {task.id}: "
        status = result.get("status")
        if status == "ok" and task.kind == "bench":
            line += _cell_line(result)
        elif status == "ok":
            line += f"ok ({result.get('seconds', 0):.1f} s)"
        elif status == "skipped":
            line += f"skipped ({result.get('reason')})"
        else:
            line += (
                "FAILED: " + str((result.get("error") or {}).get("message", "?")).splitlines()[0]
            )
        if self.progress is not None:
            self.progress.advance(self.bars[task.kind])
            self._refresh()
            if status != "ok":
                self.progress.console.print(line, markup=False, soft_wrap=True)
        else:
            self.console.print(line, markup=False, soft_wrap=True)

    def end(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None


def _cell_line(result: dict[str, Any]) -> str:
    original, optimized = result_rows(result.get("bench"))
    row = optimized or original
    if row is None:
        return "ok"
    text = f"ok p50 {row['latency_ms']['p50']:.4g} ms"
    if optimized is not None:
        text += f" (× {row['ratio_to_reference']['median']:.3g} original)"
    return text
