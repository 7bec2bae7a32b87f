"""Reports of ``graphopt sweep``: console table, markdown and HTML (plus the JSON itself).

The tables and plots are those of ``graphopt bench`` (:mod:`graphopt.bench.report`), one row
per cell; the HTML page draws, per model, latency against accuracy with the Pareto front of its
pipelines and p50 per batch size, from the same plotting code.
"""

from __future__ import annotations

import html
import os
from typing import Any

from rich.markup import escape
from rich.table import Table

from graphopt.bench import report as brep
from graphopt.bench.recipe import timing_passes
from graphopt.bench.recipe_model import Cell, Recipe
from graphopt.bench.sweep_store import Store
from graphopt.bench.sweep_task import SweepOptions
from graphopt.bench.sweep_worker import OPTIMIZED_NAME, now
from graphopt.core.report import human_bytes

COLUMNS = (
    "model",
    "pipeline",
    "EP",
    "batch",
    "status",
    "p50 ms",
    "p99 ms",
    "rounds ms",
    "× original",
    "orig. p50 ms",
    "items/s",
    "build s",
    "file",
    "max abs",
    "cosine",
    "top-1 agr",
    "metric",
)
LEFT = {"model", "pipeline", "EP", "status", "metric"}
# the terminal gets fewer columns than the files (the rest is in the markdown and JSON)
CONSOLE = (
    "model",
    "pipeline",
    "EP",
    "batch",
    "status",
    "p50 ms",
    "p99 ms",
    "× original",
    "orig. p50 ms",
    "items/s",
    "file",
    "cosine",
    "top-1 agr",
    "metric",
)
# one row per cell makes a wide table: smaller type than graphopt bench's page
_CSS = "table { font-size: 0.8em; } th, td { padding: 2px 5px; }\n"
OPT_COLUMNS = ("model", "pipeline", "status", "optimize s", "nodes", "file", "verify", "note")


def _status(cell: dict[str, Any]) -> str:
    s = cell["status"]
    if s == "ok" and cell.get("reused"):
        return "ok (kept)"
    return s


def cell_cells(cell: dict[str, Any], file_bytes: int | None) -> list[str]:
    row = cell.get("row")
    head = [cell["model"], cell["pipeline"], cell["ep"], str(cell["batch"]), _status(cell)]
    if not row:
        return head + ["—"] * (len(COLUMNS) - len(head))
    lat, acc = row["latency_ms"], row["accuracy"]
    orig = cell.get("original")
    ratio = row["ratio_to_reference"]["median"] if orig else 1.0
    return [
        *head,
        brep._f(lat["p50"]),
        brep._f(lat["p99"]),
        f"{brep._f(lat['spread']['min'])}–{brep._f(lat['spread']['max'])}",
        brep._f(ratio),
        brep._f(orig["latency_ms"]["p50"]) if orig else "(itself)",
        brep._f(row["throughput_per_s"], ".4g"),
        brep._f(row["build_s"]),
        human_bytes(file_bytes) if file_bytes is not None else "—",
        brep._sci(acc.get("max_abs")),
        brep._f(acc.get("cosine"), ".6f"),
        brep._f(acc.get("top1_agreement"), ".4f"),
        brep._metric(acc),
    ]


def _file_bytes(report: dict[str, Any]) -> dict[str, int | None]:
    """Bytes of the model each cell measured, by cell key."""
    by_opt = {o["key"]: (o.get("summary") or {}).get("file_bytes") for o in report["optimized"]}
    sizes = {}
    for c in report["cells"]:
        if c.get("optimize_key"):
            sizes[c["key"]] = by_opt.get(c["optimize_key"])
        else:
            models = {m["name"]: m for m in report["recipe"]["models"]}
            sizes[c["key"]] = _size(models[c["model"]]["path"])
    return sizes


def _size(path: str) -> int | None:

    try:
        return os.path.getsize(path)
    except OSError:
        return None


def opt_cells(o: dict[str, Any]) -> list[str]:
    s = o.get("summary") or {}
    nodes = s.get("nodes") or [None, None]
    verify = s.get("verify") or {}
    if verify.get("enabled") is False:
        ver = "off"
    elif verify.get("cosine") is not None:
        ver = f"max abs {brep._sci(verify.get('max_abs'))}, cosine {verify['cosine']:.6f}"
    else:
        ver = "—" if not s else "no change"
    notes = []
    if o.get("timing_passes"):
        notes.append(f"timed passes ({', '.join(o['timing_passes'])}): optimized alone")
    if o.get("error"):
        notes.append(str(o["error"].get("message", "")).splitlines()[0])
    status = o["status"] + (" (kept)" if o.get("reused") and o["status"] == "ok" else "")
    return [
        o["model"],
        o["pipeline"],
        status,
        brep._f(o.get("seconds"), ".3g"),
        f"{nodes[0]} → {nodes[1]}" if nodes[0] is not None else "—",
        human_bytes(s["file_bytes"]) if s.get("file_bytes") is not None else "—",
        ver,
        "; ".join(notes),
    ]


def _opt_notes(report: dict[str, Any]) -> list[str]:
    """Each optimized model's pass findings, prefixed with model/pipeline."""
    return [
        f"{o['model']}/{o['pipeline']}: {note}"
        for o in report["optimized"]
        for note in (o.get("summary") or {}).get("notes", [])
    ]


def _problems(report: dict[str, Any]) -> list[str]:
    out = []
    for c in report["cells"]:
        if c["status"] == "error":
            msg = str((c.get("error") or {}).get("message", "?")).splitlines()[0]
            out.append(f"{c['id']}: error: {msg}")
        elif c["status"] == "skipped":
            out.append(f"{c['id']}: skipped: {c.get('reason')}")
        elif c["status"] == "pending":
            out.append(f"{c['id']}: not run yet (the sweep was interrupted)")
    return out


def _summary_line(report: dict[str, Any]) -> str:
    s, run = report["summary"], report["run"]
    hosts = f" on {len(s['hosts'])} hosts ({', '.join(s['hosts'])})" if len(s["hosts"]) > 1 else ""
    return (
        f"{s['cells']} cells: {s['ok']} ok ({s['reused']} kept from earlier runs), "
        f"{s['error']} failed, {s['skipped']} skipped, {s['pending']} pending{hosts}; "
        f"backend {run['backend']}, {run['seconds']:.1f} s"
        + ("; INTERRUPTED" if run["interrupted"] else "")
    )


# ----------------------------------------------------------------------------- console


def console_tables(report: dict[str, Any]) -> list[Any]:
    title = f"graphopt sweep: {report['recipe']['name']}"
    table = Table(title=escape(title), title_justify="left", caption_justify="left")
    for col in CONSOLE:
        table.add_column(col, justify="left" if col in LEFT else "right")
    sizes = _file_bytes(report)
    pick = [COLUMNS.index(c) for c in CONSOLE]
    for c in report["cells"]:
        cells = cell_cells(c, sizes.get(c["key"]))
        table.add_row(*(escape(cells[i]) for i in pick))
    table.caption = escape(brep._machine_line(report))
    out: list[Any] = [table]
    out += [f"[yellow]{escape(line)}[/]" for line in _problems(report)]
    out.append(escape(_summary_line(report)))
    return out


# ----------------------------------------------------------------------------- markdown


def markdown(report: dict[str, Any]) -> str:
    md = brep._md_cell
    rec = report["recipe"]
    lines = [
        f"# graphopt sweep: {rec['name']}",
        "",
        *([rec["description"], ""] if rec.get("description") else []),
        f"- recipe: `{rec['path']}` (sha256 {rec['sha256'][:12]})",
        f"- machine: {brep._machine_line(report)}",
        f"- timing: {report['run']['timing']}",
        f"- {_summary_line(report)}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    sizes = _file_bytes(report)
    for c in report["cells"]:
        lines.append("| " + " | ".join(md(x) for x in cell_cells(c, sizes.get(c["key"]))) + " |")
    problems = _problems(report)
    if problems:
        lines += ["", *(f"- {md(p)}" for p in problems)]
    if report["optimized"]:
        lines += [
            "",
            "## optimized models",
            "",
            "| " + " | ".join(OPT_COLUMNS) + " |",
            "|" + "|".join("---" for _ in OPT_COLUMNS) + "|",
        ]
        for o in report["optimized"]:
            lines.append("| " + " | ".join(md(x) for x in opt_cells(o)) + " |")
        notes = _opt_notes(report)
        if notes:
            lines += ["", "What the passes decided:", "", *(f"- {md(n)}" for n in notes)]
        lines += ["", "Pipelines as run (normalized):", ""]
        seen = set()
        for o in report["optimized"]:
            if o["pipeline"] not in seen:
                seen.add(o["pipeline"])
                lines.append(f"- {md(o['pipeline'])}: `{o['pipeline_text']}`")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- html


def model_bench_view(report: dict[str, Any], model: str) -> dict[str, Any]:
    """One model's ok cells as a ``graphopt bench`` report (one row per pipeline, EP, batch;
    the row's model is the pipeline) so the bench plots draw them."""
    order = {p["name"]: i for i, p in enumerate(report["recipe"]["pipelines"])}
    rows = []
    for c in report["cells"]:
        if c["model"] == model and c["status"] == "ok" and c.get("row"):
            rows.append(dict(c["row"], model=c["pipeline"], model_index=order[c["pipeline"]]))
    return {"results": rows}


def html_page(report: dict[str, Any], *, plots: bool = True) -> str:
    esc = html.escape
    rec = report["recipe"]
    head = "".join(
        f'<th class="l">{esc(c)}</th>' if c in LEFT else f"<th>{esc(c)}</th>" for c in COLUMNS
    )
    sizes = _file_bytes(report)
    body = []
    for c in report["cells"]:
        cells = cell_cells(c, sizes.get(c["key"]))
        body.append(
            "<tr>"
            + "".join(
                f'<td class="l">{esc(x)}</td>' if COLUMNS[i] in LEFT else f"<td>{esc(x)}</td>"
                for i, x in enumerate(cells)
            )
            + "</tr>"
        )
    parts = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>graphopt sweep: {esc(rec["name"])}</title>',
        f"<style>{brep._CSS}{_CSS}</style></head><body>",
        f"<h1>graphopt sweep: {esc(rec['name'])}</h1>",
        *([f"<p>{esc(rec['description'])}</p>"] if rec.get("description") else []),
        f"<p>recipe: <code>{esc(rec['path'])}</code></p>",
        f"<p>machine: {esc(brep._machine_line(report))}</p>",
        f"<p>timing: {esc(report['run']['timing'])}</p>",
        f"<p>{esc(_summary_line(report))}</p>",
        f'<div class="wide"><table id="cells"><thead><tr>{head}</tr></thead><tbody>',
        *body,
        "</tbody></table></div>",
    ]
    problems = _problems(report)
    if problems:
        parts.append("<ul>" + "".join(f'<li class="note">{esc(p)}</li>' for p in problems))
        parts.append("</ul>")
    if report["optimized"]:
        ohead = "".join(f'<th class="l">{esc(c)}</th>' for c in OPT_COLUMNS)
        parts += [
            "<h2>optimized models</h2>",
            f'<div class="wide"><table id="optimized"><thead><tr>{ohead}</tr>',
        ]
        parts.append("</thead><tbody>")
        for o in report["optimized"]:
            parts.append(
                "<tr>" + "".join(f'<td class="l">{esc(x)}</td>' for x in opt_cells(o)) + "</tr>"
            )
        parts.append("</tbody></table></div>")
        notes = _opt_notes(report)
        if notes:
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    if plots:
        for m in rec["models"]:
            view = model_bench_view(report, m["name"])
            if not view["results"]:
                continue
            figs = brep.plots(view)
            if figs is None:
                parts.append(
                    '<p class="note">plots left out: matplotlib is not installed '
                    "(pip install matplotlib to get them).</p>"
                )
                break
            for title, png in figs:
                parts.append(f"<h2>{esc(m['name'])}: {esc(title)}</h2>")
                parts.append(
                    f'<img alt="{esc(m["name"])}: {esc(title)}" src="data:image/png;base64,{png}">'
                )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the report

SCHEMA = "graphopt.sweep/1"


def result_rows(
    bench: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(original row, optimized row) of a cell's bench report."""
    if not bench:
        return None, None
    rows = {r["model_index"]: r for r in bench.get("results", [])}
    return rows.get(0), rows.get(1)


def cell_summary(cell: Cell, result: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": cell.key,
        "id": cell.id,
        "model": cell.model.name,
        "pipeline": cell.pipeline.name,
        "pipeline_text": cell.pipeline.normalized or "none",
        "ep": cell.ep,
        "batch": cell.batch,
        "optimize_key": cell.optimize_key,
        "definition": cell.definition,
    }
    if result is None:
        out["status"] = "pending"
        return out
    bench = result.get("bench")
    original, optimized = result_rows(bench)
    out.update(
        status=result.get("status"),
        reason=result.get("reason"),
        error=result.get("error"),
        reused=result.get("run_id") != run_id,
        run_id=result.get("run_id"),
        started=result.get("started"),
        finished=result.get("finished"),
        seconds=result.get("seconds"),
        host=result.get("host"),
    )
    if bench:
        eps = bench.get("eps") or [{}]
        out["providers"] = eps[0].get("providers")
        out["inputs"] = bench.get("inputs")
        out["machine"] = bench.get("machine")
        out["memory"] = bench.get("memory")
        out["row"] = optimized if cell.optimize_key else original
        out["original"] = original if cell.optimize_key else None
    return out


def build_report(
    recipe: Recipe,
    store: Store,
    *,
    run_id: str,
    options: SweepOptions,
    seconds: float,
    interrupted: bool,
) -> dict[str, Any]:
    """The sweep report (schema ``graphopt.sweep/1``) from the stored results of the recipe's
    cells; results stored under other keys (older definitions) are not part of it."""
    from graphopt.bench.machine import machine

    cells = [cell_summary(c, store.read_cell(c.key), run_id) for c in recipe.cells]
    optimized = []
    for t in recipe.optimize_tasks:
        res = store.read_optimized(t.key) or {}
        optimized.append(
            {
                "key": t.key,
                "id": t.id,
                "model": t.model.name,
                "pipeline": t.pipeline.name,
                "pipeline_text": t.pipeline.normalized,
                "target": t.pipeline.target,
                "status": res.get("status", "pending"),
                "error": res.get("error"),
                "reused": bool(res) and res.get("run_id") != run_id,
                "seconds": res.get("seconds"),
                "summary": res.get("summary"),
                "timing_passes": timing_passes(t.pipeline),
                "path": str(store.optimized_dir(t.key) / OPTIMIZED_NAME),
                "report": str(store.optimized_dir(t.key) / "report.json"),
                "definition": t.definition,
            }
        )
    counts = {
        s: sum(c["status"] == s for c in cells) for s in ("ok", "error", "skipped", "pending")
    }
    timing = (
        "each cell alone (one process, no other sweep work running)"
        if options.bench_jobs == 1
        else f"up to {options.bench_jobs} cells at a time (latencies disturb each other)"
    )
    return {
        "schema": SCHEMA,
        "created": now(),
        "recipe": recipe.to_dict(),
        "machine": machine(),
        "run": {
            "run_id": run_id,
            "backend": options.backend,
            "ray_address": options.ray_address,
            "jobs": options.jobs,
            "bench_jobs": options.bench_jobs,
            "resume": options.resume,
            "out": str(store.root),
            "seconds": seconds,
            "interrupted": interrupted,
            "timing": (
                f"optimizations: up to {options.jobs} at a time, pipelines with passes that time "
                f"the model alone; benchmarks after all optimizations, {timing}; every cell runs "
                "its optimized model interleaved round-robin with the original, so × original is "
                "a paired per-round ratio"
            ),
        },
        "summary": {
            "cells": len(cells),
            **counts,
            "reused": sum(bool(c.get("reused")) for c in cells),
            "hosts": sorted({c["host"] for c in cells if c.get("host")}),
        },
        "optimized": optimized,
        "cells": cells,
    }


def failure_message(report: dict[str, Any]) -> str | None:
    """One line naming the failed cells, or None when none failed."""
    bad = [c for c in report["cells"] if c["status"] == "error"]
    bad_opt = [o for o in report["optimized"] if o["status"] == "error"]
    skipped = [c for c in report["cells"] if c["status"] == "skipped"]
    if not bad and skipped and len(skipped) == len(report["cells"]):
        # as graphopt bench: a skipped EP is a note, but a sweep that measured nothing fails
        return f"no cell could run: all {len(skipped)} were skipped ({skipped[0]['reason']})"
    if not bad:
        return None
    first = bad[0]["error"] or {}
    msg = str(first.get("message", "?")).splitlines()[0]
    where = f" (reports: {', '.join(report.get('written', []))})" if report.get("written") else ""
    extra = f"; {len(bad_opt)} optimization(s) failed" if bad_opt else ""
    return (
        f"{len(bad)} of {len(report['cells'])} cells failed{extra}; first: {bad[0]['id']}: "
        f"{msg}{where}"
    )
