"""The tune report for people: markdown, and an HTML page with the accuracy-latency plot.

Both show the winner and how to reproduce it, which data calibrated and which evaluated, and
every candidate with its pipeline, accuracy, latency ratio and why it was dropped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

HEADERS = ("candidate", "pipeline", "status", "accuracy", "latency ×orig", "build s", "why")


def _f(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def summary(report: dict[str, Any]) -> list[str]:
    """The paragraphs above the table: budget, data use, the winner or why nothing pays."""
    b = report["budget"]
    lines = [
        f"Budget `{b['given']}` → `{b['absolute']}` (original on held-out data: "
        f"{b['original']:.6g}). Target {report['target']}, latency on "
        f"{report['latency']['ep']} in {report['latency']['rounds']} rotated paired rounds. "
        f"Search time {report['seconds']:.0f} s (limit {report['time_limit']:.0f} s).",
        f"calibration: {report['data']['calibration']}",
        f"evaluation: {report['data']['evaluation']}",
    ]
    w = report["winner"]
    if w:
        lines.append(
            f"**Winner: {w['name']}**, {w['accuracy']:.6g} at {w['ratio']:.3f}x the original's "
            f"latency. Reproduce: `graphopt optimize MODEL -o OUT -p '{w['pipeline']}' "
            f"--data CALIB" + (f" --budget '{w['budget']}'" if w["budget"] else "") + "`"
        )
    else:
        lines.append(f"**Nothing pays**: {report['nothing_pays']}")
    return lines


def rows(report: dict[str, Any]) -> list[list[str]]:
    """One row of cells (see HEADERS) per candidate."""
    return [
        [
            c["name"] + (" (Pareto)" if c["name"] in report["pareto"] else ""),
            c["pipeline"],
            c["status"],
            _f(c["accuracy"], ".6g"),
            _f(c["ratio"], ".3f"),
            _f(c["build_seconds"], ".1f"),
            c["why"],
        ]
        for c in report["candidates"]
    ]


def markdown(report: dict[str, Any]) -> str:
    """The tune report for people: the winner, the data use, every candidate."""
    lines = [f"# graphopt tune: {Path(report['model']['path']).name}", ""]
    for text in summary(report):
        lines += [text, ""]
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for cells in rows(report):
        cells[1] = f"`{cells[1]}`"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any]) -> str | None:
    """Accuracy vs latency ratio of every measured candidate, the Pareto front joined, the
    budget drawn; a base64 PNG, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from graphopt.bench.report import _png

    pts = [c for c in report["candidates"] if c["ratio"] is not None and c["accuracy"] is not None]
    over = [c for c in report["candidates"] if c["status"] == "over-budget"]
    if not pts and not over:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for c in pts:
        color = "tab:red" if c["status"] == "winner" else "tab:blue"
        ax.scatter([c["ratio"]], [c["accuracy"]], color=color, zorder=3)
        ax.annotate(
            c["name"],
            (c["ratio"], c["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = [c for c in pts if c["name"] in report["pareto"]]
    front.sort(key=lambda c: c["ratio"])
    if len(front) > 1:
        xs, ys = [c["ratio"] for c in front], [c["accuracy"] for c in front]
        ax.plot(xs, ys, "--", color="tab:red", label="Pareto front")
    for c in over:  # not timed: shown at the right edge at their accuracy
        ax.axhline(c["accuracy"], color="0.85", linewidth=0.8, zorder=1)
    threshold = report["budget"]["absolute"]
    try:
        value = float(threshold.split("=", 1)[1])
        ax.axhline(value, color="tab:green", linestyle=":", label=f"budget {threshold}")
    except ValueError:
        pass
    ax.axvline(1.0, color="0.5", linewidth=0.8)
    ax.set_xlabel("latency / original's (paired rounds, median)")
    ax.set_ylabel(report["budget"]["absolute"].split(">")[0].split("<")[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    png = _png(fig)
    plt.close(fig)
    return png


def html_page(report: dict[str, Any]) -> str:
    """The same content as an HTML page, with the plot."""
    esc = html.escape
    title = esc(Path(report["model"]["path"]).name)
    body = [f"<h1>graphopt tune: {title}</h1>"]
    body += [f"<p>{esc(text)}</p>" for text in summary(report)]
    png = plot(report)
    if png:
        body.append(f'<img alt="accuracy vs latency" src="data:image/png;base64,{png}">')
    body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADERS) + "</tr>")
    for cells in rows(report):
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    body.append("</table>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:.85em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tune {title}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
