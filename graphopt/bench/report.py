"""Reports of ``graphopt bench``: JSON (schema ``graphopt.bench/1``), markdown, HTML, console.

The HTML page is one self-contained file. When matplotlib is importable it embeds two PNG
plots (latency against accuracy with the Pareto front marked, and p50 latency per batch size
with the spread across rounds as error bars). matplotlib is a dependency; where it is missing
anyway the page has the tables only and says so, and the command says so on the console.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from graphopt.core.report import human_bytes, write_json

__all__ = [
    "console_tables",
    "html_page",
    "markdown",
    "pareto_front",
    "write_json",
    "write_text",
]

COLUMNS = (
    "model",
    "EP",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "round medians ms",
    "× ref",
    "items/s",
    "build s",
    "RSS Δ build",
    "max abs",
    "cosine",
    "top-1 agr",
    "metric",
)


def _f(v: Any, fmt: str = ".3g") -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return format(v, fmt)


def _sci(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return "0" if v == 0 else f"{v:.2e}"


def _metric(acc: dict[str, Any]) -> str:
    m = acc.get("metric")
    if not m:
        return "—"
    if "error" in m:
        return f"error: {m['error']}"
    return f"{m['name']} {m['value']:.4g}"


def row_cells(row: dict[str, Any]) -> list[str]:
    lat = row["latency_ms"]
    acc = row["accuracy"]
    ratio = row["ratio_to_reference"]["median"]
    ref = row["model_index"] == 0
    rss = row["memory"].get("rss_build_delta_bytes")
    return [
        row["model"] + (" (ref)" if ref else ""),
        row["ep"],
        str(row["batch"]),
        _f(lat["p50"]),
        _f(lat["p90"]),
        _f(lat["p99"]),
        f"{_f(lat['spread']['min'])}–{_f(lat['spread']['max'])}",
        "1" if ref else _f(ratio),
        _f(row["throughput_per_s"], ".4g"),
        _f(row["build_s"]),
        human_bytes(rss) if rss is not None else "—",
        _sci(acc.get("max_abs")),
        _f(acc.get("cosine"), ".6f"),
        _f(acc.get("top1_agreement"), ".4f"),
        _metric(acc),
    ]


def _machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    feats = m.get("cpu_features", {})
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    return (
        f"CPU {m.get('cpu')} ({feats.get('isa', '?')}, {m.get('cores')} cores), GPU {gpus}, "
        f"onnxruntime {m.get('onnxruntime')}, graphopt {m.get('graphopt')}"
    )


def _settings_line(report: dict[str, Any]) -> str:
    s = report["settings"]
    return (
        f"inputs {report['inputs']['source']}; batches {s['batches']}; threads "
        f"{s['threads'] or 'ORT default'}; warmup {s['warmup']}; {s['rounds']} rounds × "
        f"{s['repeat']} runs, models interleaved round-robin; ratios to the reference are "
        "per-round ratios' median; accuracy vs the reference over "
        f"{report['inputs']['accuracy_rows']} input rows"
    )


def _skips(report: dict[str, Any]) -> list[str]:
    return [f"{e['ep']}: skipped: {e['reason']}" for e in report["eps"] if e["status"] != "ok"]


# ----------------------------------------------------------------------------- console


# A terminal gets fewer columns than the files (all of them squeezed into 150 characters
# wrap every cell); p90, the round medians and max abs are in the markdown, HTML and JSON.
CONSOLE = tuple(c for c in COLUMNS if c not in ("p90 ms", "round medians ms", "max abs"))


def console_tables(report: dict[str, Any]) -> list[Any]:
    table = Table(title="graphopt bench", title_justify="left", caption_justify="left")
    for col in CONSOLE:
        table.add_column(col, justify="left" if col in ("model", "EP", "metric") else "right")
    pick = [COLUMNS.index(c) for c in CONSOLE]
    for row in report["results"]:
        cells = row_cells(row)
        table.add_row(*(escape(cells[i]) for i in pick))
    table.caption = escape(_machine_line(report))
    out: list[Any] = [table]
    out += [f"[yellow]{escape(line)}[/]" for line in _skips(report)]
    return out


# ----------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# graphopt bench",
        "",
        f"- machine: {_machine_line(report)}",
        f"- settings: {_settings_line(report)}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in report["results"]:
        lines.append("| " + " | ".join(_md_cell(c) for c in row_cells(row)) + " |")
    skips = _skips(report)
    if skips:
        lines += ["", *(f"- {_md_cell(s)}" for s in skips)]
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency x and higher accuracy y is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def accuracy_axis(report: dict[str, Any]) -> tuple[str, str]:
    """(label, key): the task metric when one ran, else cosine against the reference."""
    for row in report["results"]:
        if "value" in row["accuracy"].get("metric", {}):
            return f"task metric ({row['accuracy']['metric']['name']})", "metric"
    return "cosine vs reference", "cosine"


def _acc_value(row: dict[str, Any], key: str) -> float | None:
    acc = row["accuracy"]
    if key == "metric":
        return acc.get("metric", {}).get("value")
    return acc.get("cosine")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots_available() -> bool:
    """Whether matplotlib can be imported (else pages are written without plots)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


PLOTS_MISSING = (
    "plots left out of the HTML page: matplotlib is not installed (pip install matplotlib)"
)


def plots(report: dict[str, Any]) -> list[tuple[str, str]] | None:
    """(title, base64 PNG) pairs, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    rows = report["results"]
    if not rows:
        return []
    out = []
    label, key = accuracy_axis(report)
    batch = min(r["batch"] for r in rows)
    pts = [(r, _acc_value(r, key)) for r in rows if r["batch"] == batch]
    pts = [(r, y) for r, y in pts if y is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        xy = [(r["latency_ms"]["p50"], float(y)) for r, y in pts]
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], color="tab:blue", zorder=3)
        for (r, _), (x, y) in zip(pts, xy, strict=True):
            ax.annotate(
                f"{r['model']} [{r['ep']}]",
                (x, y),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        front = pareto_front(xy)
        ax.plot(
            [xy[i][0] for i in front],
            [xy[i][1] for i in front],
            color="tab:red",
            marker="o",
            markersize=11,
            markerfacecolor="none",
            linestyle="--",
            label="Pareto front",
            zorder=4,
        )
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_xlabel(f"p50 latency (ms), batch {batch}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        out.append((f"latency vs accuracy (batch {batch})", _png(fig)))
        plt.close(fig)
    batches = sorted({r["batch"] for r in rows})
    series = sorted({(r["model_index"], r["model"], r["ep"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(batches) * len(series) ** 0.5), 4.2))
    width = 0.8 / max(1, len(series))
    for k, (idx, model, ep) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for b, batch_ in enumerate(batches):
            for r in rows:
                if r["model_index"] == idx and r["ep"] == ep and r["batch"] == batch_:
                    lat = r["latency_ms"]
                    xs.append(b + (k - (len(series) - 1) / 2) * width)
                    ys.append(lat["p50"])
                    lo.append(max(0.0, lat["p50"] - lat["spread"]["min"]))
                    hi.append(max(0.0, lat["spread"]["max"] - lat["p50"]))
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=f"{model} [{ep}]")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency (ms); error bars: round medians min–max")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    out.append(("latency per batch size", _png(fig)))
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.wide { overflow-x: auto; max-width: 100%; }
.note { color: #8a5a00; } img { max-width: 100%; margin: 1em 0; display: block; }
"""


def html_page(report: dict[str, Any]) -> str:
    esc = html.escape
    left = (0, 1, len(COLUMNS) - 1)
    head = "".join(
        f'<th class="l">{esc(c)}</th>' if i in left else f"<th>{esc(c)}</th>"
        for i, c in enumerate(COLUMNS)
    )
    body = []
    for row in report["results"]:
        cells = row_cells(row)
        body.append(
            "<tr>"
            + "".join(
                f'<td class="l">{esc(c)}</td>'
                if i in (0, 1, len(cells) - 1)
                else f"<td>{esc(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8"><title>graphopt bench</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>graphopt bench</h1>",
        f"<p>machine: {esc(_machine_line(report))}</p>",
        f"<p>settings: {esc(_settings_line(report))}</p>",
        f'<div class="wide"><table id="results"><thead><tr>{head}</tr></thead><tbody>',
        *body,
        "</tbody></table></div>",
    ]
    skips = _skips(report)
    if skips:
        parts.append("<ul>" + "".join(f'<li class="note">{esc(s)}</li>' for s in skips) + "</ul>")
    figs = plots(report)
    if figs is None:
        parts.append(
            '<p class="note">plots left out: matplotlib is not installed '
            "(pip install matplotlib to get them).</p>"
        )
    else:
        for title, png in figs:
            parts.append(f"<h2>{esc(title)}</h2>")
            parts.append(f'<img alt="{esc(title)}" src="data:image/png;base64,{png}">')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically (temp file beside it, then rename)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".graphopt-", suffix=p.suffix, dir=p.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; reports are ordinary files
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
