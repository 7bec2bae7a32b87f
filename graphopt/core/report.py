"""Reports: the JSON file a pipeline run leaves behind, and the tables printed for people."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write JSON atomically (temp file beside it, then rename)."""
    p = Path(path)
    # ".tmp": a half-written file must not look like a result to anyone listing *.json
    fd, tmp = tempfile.mkstemp(prefix=".graphopt-", suffix=".tmp", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_finite(data), fh, indent=2, default=_json_default)
            fh.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


REPORT_SCHEMA = "graphopt.report/1"


def pipeline_report(
    *,
    source: str | None,
    pipeline: str,
    target: str,
    verify: dict[str, Any],
    seconds: float,
    before: dict[str, Any],
    after: dict[str, Any],
    passes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The report of one pipeline run (what the runner knows)."""
    import datetime

    return {
        "schema": REPORT_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "pipeline": pipeline,
        "target": target,
        "verify": verify,
        "seconds": seconds,
        "before": before,
        "after": after,
        "passes": passes,
    }


def add_files(
    report: dict[str, Any],
    *,
    model: dict[str, Any],
    output: dict[str, Any] | None,
    providers: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """Complete a pipeline report with what ``graphopt.optimize`` knows: the input model
    (path, sha256), the files written, the execution providers and the environment."""
    report["model"] = model
    if output is not None:
        report["output"] = output
    report["providers"] = providers
    report["environment"] = environment
    return report


def human_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} GB"


def _signed(n: int, fmt: Any = str) -> str:
    if n == 0:
        return ""
    return ("+" if n > 0 else "-") + fmt(abs(n))


def _sci(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f == 0:
        return "0"
    return f"{f:.2e}"


def passes_table(report: dict[str, Any], *, show_unchanged: bool = False) -> Table:
    """One row per pass run: time, what changed, size, and the verify result."""
    table = Table(title="passes", title_justify="left", header_style="bold")
    for col, just in (
        ("#", "right"),
        ("pass", "left"),
        ("round", "left"),
        ("ms", "right"),
        ("nodes", "right"),
        ("Δnodes", "right"),
        ("weights", "right"),
        ("size", "right"),
        ("max|Δ| vs input", "right"),
        ("verify", "left"),
        ("did", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    hidden = 0
    for rec in report["passes"]:
        if not rec["modified"] and not show_unchanged:
            hidden += 1
            continue
        summary, delta = rec["summary"], rec["delta"]
        v = rec.get("verify")
        verdict = "—" if v is None else ("[green]ok[/]" if v.get("passed") else "[red]FAILED[/]")
        ref = rec.get("vs_reference")
        did = ", ".join(
            f"{k}={n}" for k, n in sorted(rec["stats"].items()) if not k.startswith("removed:")
        )
        round_ = rec["round"] or ""
        table.add_row(
            str(rec["index"]),
            escape(rec["step"]),
            round_.rsplit("round ", 1)[-1] if round_ else "",
            f"{rec['seconds'] * 1000:.1f}",
            str(summary["nodes"]),
            _signed(delta["nodes"]),
            human_bytes(summary["initializer_bytes"]),
            human_bytes(summary.get("serialized_bytes", 0)),
            _sci(ref["max_abs"]) if ref else "",
            verdict,
            escape(did) if rec["modified"] else "[dim]no change[/]",
        )
    if hidden:
        table.caption = f"{hidden} pass runs changed nothing (--show-unchanged lists them)"
    return table


def summary_lines(report: dict[str, Any]) -> list[str]:
    before, after = report["before"], report["after"]
    lines = [
        f"pipeline: {report['pipeline']}",
        f"nodes {before['nodes']} → {after['nodes']}, "
        f"weights {human_bytes(before['initializer_bytes'])} → "
        f"{human_bytes(after['initializer_bytes'])}, "
        f"file {human_bytes(before.get('serialized_bytes', 0))} → "
        f"{human_bytes(after.get('serialized_bytes', 0))}, "
        f"{report['seconds']:.2f} s",
    ]
    if before.get("loaded"):
        lines.append(f"input: {before['loaded']}")
    v = report["verify"]
    if v["enabled"]:
        final = v.get("final_vs_reference")
        if final:
            lines.append(
                f"verified after every pass on {v['feeds']} feeds ({v['inputs']}); final vs input: "
                f"max_abs={_sci(final['max_abs'])} cosine={final['cosine']:.9f}"
            )
        else:
            lines.append(
                f"verified on {v['feeds']} feeds ({v['inputs']}); no pass changed the model"
            )
    else:
        lines.append("verification disabled (--no-verify)")
    for rec in report["passes"]:
        if rec.get("inserted") and rec["modified"]:
            lines.append(f"{rec['step']}: inserted because {rec['inserted']}")
        lines += [f"{rec['pass']}: {note}" for note in rec.get("notes", [])]
        if rec.get("unchanged"):  # a pass that declined, or a lossy one that did nothing
            lines.append(f"{rec['pass']}: left the model unchanged: {rec['unchanged']}")
    return lines


def print_run(console: Console, report: dict[str, Any], *, show_unchanged: bool = False) -> None:
    console.print(passes_table(report, show_unchanged=show_unchanged))
    for line in summary_lines(report):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def inspect_tables(summary: dict[str, Any], path: str) -> list[Table]:
    head = Table(title=escape(path), title_justify="left", show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    head.add_row("ir_version", str(summary["ir_version"]))
    head.add_row("opsets", ", ".join(f"{k} {v}" for k, v in summary["opsets"].items()))
    if summary.get("producer"):
        head.add_row("producer", escape(summary["producer"]))
    for kind in ("inputs", "outputs"):
        for v in summary[kind]:
            shape = "?" if v["shape"] is None else "[" + ", ".join(str(d) for d in v["shape"]) + "]"
            head.add_row(kind[:-1], escape(f"{v['name']}: {v['dtype']}{shape}"))
    head.add_row("nodes", str(summary["nodes"]))
    head.add_row("parameters", f"{summary['parameters']:,}")
    head.add_row(
        "initializers", f"{summary['initializers']} ({human_bytes(summary['initializer_bytes'])})"
    )
    for dt, n in summary["initializer_bytes_by_dtype"].items():
        head.add_row(f"  {dt}", human_bytes(n))
    if "sparsity" in summary:
        head.add_row("sparsity", f"{summary['sparsity'] * 100:.2f}% of float weights are zero")
    head.add_row("Q/DQ nodes", str(summary["qdq_nodes"]))
    if summary["external_data"]:
        for f, n in summary["external_data"].items():
            head.add_row("external data", escape(f"{f} ({human_bytes(n)})"))
    else:
        head.add_row("external data", "none")
    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in summary["ops"].items():
        ops.add_row(escape(op), str(n))
    return [head, ops]
