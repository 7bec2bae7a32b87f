"""The README and docs/ stay true: the pass reference is what the registry says, the README is
short enough to read in five minutes, and every relative link points at a file."""

from __future__ import annotations

import re
from pathlib import Path

from graphopt.core.reference import markdown

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_pass_reference_is_current() -> None:
    page = (ROOT / "docs" / "passes.md").read_text(encoding="utf-8")
    assert page == markdown(), (
        "docs/passes.md is stale: run `graphopt passes --markdown > docs/passes.md`"
    )


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move depth to docs/"


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)


def test_markdown_escapes_table_cells() -> None:
    # an option type such as auto|fp16|bf16 must not split a table row
    rows = [line for line in markdown().splitlines() if line.startswith("| `target`")]
    assert rows and all(r.count(" | ") == 3 for r in rows)
