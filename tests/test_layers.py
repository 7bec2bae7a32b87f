"""Import layering: the package's folders are its layers, each importing only those below.

Every ``import`` in ``graphopt/`` and ``passes/`` (also the ones inside functions) is read with
``ast``. A module's layer is its folder's (``graphopt/<folder>/...``, or a top-level module by
its name): it may import modules of its own layer or below, passes import only the
framework's helpers, and the import graph has no cycle. A new folder or top-level module must
be given its place in ``ORDER``, so the map stays complete; the package's top holds at most
six modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The layers, bottom first: each entry is a folder of ``graphopt/`` (or a top-level module)
#: and may import the entries on its own line or above it.
ORDER: list[tuple[str, ...]] = [
    ("graphopt", "errors", "models"),  # leaves that know nothing of models
    ("ir",),  # onnx_ir helpers
    ("runtime",),  # ONNX Runtime sessions, snapshots, the CPU's int8 capability
    ("inputs",),  # DATA and probing
    ("calib", "accuracy"),  # statistics; tolerances, metrics, budgets, verification
    ("core",),  # the pass framework
    ("passes",),  # the pass library
    ("optimize",),  # the one orchestration and the Python API
    ("bench",),  # measurement and sweeps
    ("tune",),  # the search for the fastest model within a budget
    ("cli", "__main__"),  # the command line, one module per command
]
LAYER = {unit: i for i, units in enumerate(ORDER) for unit in units}

#: what a pass may import from the framework: its public helpers, nothing that orchestrates
PASS_MAY_IMPORT = (
    "graphopt.core",
    "graphopt.ir",
    "graphopt.inputs.data",
    "graphopt.runtime",
    "graphopt.calib",
    "graphopt.errors",
    "graphopt.accuracy.metrics",
    "graphopt.accuracy.budget",
    "graphopt.accuracy.acceptance",
    "graphopt.accuracy.tolerance",
    "graphopt.passes",
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "passes":  # installed as graphopt.passes
        parts = ["graphopt", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*ROOT.joinpath("graphopt").rglob("*.py"), *ROOT.joinpath("passes").rglob("*.py")]
    return {_module_name(p): p for p in files}


MODULES = _sources()


def _resolve(name: str) -> str | None:
    """The graphopt module an imported name refers to (a module, or the package it is in)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from graphopt import ir" imports the module graphopt.ir (and its package's
            # __init__, which the package's own layer covers); "from x import name" imports x
            subs = [f"{prefix}.{a.name}" for a in node.names]
            names = [n for n in subs if n in MODULES] or [prefix]
        else:
            continue
        for name in names:
            if name == "graphopt" or name.startswith("graphopt."):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    # "from graphopt.x import y" where y is a name, not a module, resolved to graphopt.x
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def unit_of(module: str) -> str:
    """The folder (or top-level module) a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(module: str) -> int:
    return LAYER[unit_of(module)]


def test_every_folder_has_a_layer() -> None:
    missing = sorted({unit_of(m) for m in MODULES} - set(LAYER))
    assert not missing, f"give these folders/modules a place in tests/test_layers.py: {missing}"


def test_the_top_holds_at_most_six_modules() -> None:
    top = sorted(p.name for p in ROOT.joinpath("graphopt").glob("*.py"))
    assert len(top) <= 6, f"move these into the layer folders: {top}"


def test_no_module_imports_a_higher_layer() -> None:
    bad = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not bad, "\n".join(bad)


def test_passes_import_only_framework_helpers() -> None:
    bad = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.startswith("graphopt.passes")
        for t in sorted(targets)
        if t != "graphopt" and not any(t == p or t.startswith(p + ".") for p in PASS_MAY_IMPORT)
    ]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _without_package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exports its submodules and the submodules import their
    siblings through the package; an edge from a submodule to its own package (or a package
    to its own submodule) is how Python packages work, not a cycle of design."""
    return {
        m: {
            t
            for t in targets
            if not (m.startswith(t + ".") or t.startswith(m + ".") or t == "graphopt")
        }
        for m, targets in graph.items()
    }


def test_no_import_cycle() -> None:
    cycles = _cycles(_without_package_parents(GRAPH))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_check_sees_a_violation() -> None:
    """The walker finds imports inside functions and relative ones (a check that cannot fail
    is no check)."""
    assert "graphopt.optimize" in GRAPH["graphopt.bench.sweep_worker"]
    assert "graphopt.core.pass_base" in GRAPH["graphopt.core.registry"]
    cycle = _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", ["passes", "graphopt"])
def test_no_module_exceeds_500_lines(folder: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.joinpath(folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, f"split these modules (over 500 lines): {long}"


@pytest.mark.parametrize("old", sorted(__import__("graphopt").MOVED))
def test_old_import_paths_still_work(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module moved into a layer folder imports under its old name as the same module
    object, with a warning that names the new path."""
    import importlib
    import sys

    import graphopt

    new = importlib.import_module(graphopt.MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=graphopt.MOVED[old].replace(".", r"\.")):
        assert importlib.import_module(old) is new
    parent, _, leaf = old.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is new


def test_a_module_that_left_the_package_says_where_it_went() -> None:
    import importlib

    with pytest.raises(ModuleNotFoundError, match="benchmarks/zoo"):
        importlib.import_module("graphopt.zoo.metrics")
