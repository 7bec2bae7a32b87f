"""Import layering: cli → optimize/bench → passes → core → ir/data/runtime, no cycle anywhere.

Every ``import`` in ``graphopt/`` and ``passes/`` (also the ones inside functions) is read with
``ast``; a module may import only modules of its own layer or below, passes import only the
framework's helpers, and the import graph has no cycle. A new module must be given a layer
here, so the map stays complete.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: (layer, module prefixes). A module belongs to the entry with the longest matching prefix.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    # 0: leaves that know nothing of models
    (
        0,
        (
            "graphopt",
            "graphopt._callable",
            "graphopt.errors",
            "graphopt.metrics",
            "graphopt.target",
            "graphopt.report",
            "graphopt.models",
        ),
    ),
    # 1: models, data and ONNX Runtime
    (
        1,
        (
            "graphopt.ir",
            "graphopt.data",
            "graphopt.runtime",
            "graphopt.snapshot",
            "graphopt.budget",
            "graphopt.calib",
            "graphopt.probe",
            "graphopt.acceptance",
        ),
    ),
    # 2: the pass framework
    (2, ("graphopt.core", "graphopt.verify")),
    # 3: the passes
    (3, ("graphopt.passes",)),
    # 4: orchestration and measurement
    (
        4,
        (
            "graphopt.optimize",
            "graphopt.bench",
            "graphopt.demo",
            "graphopt.tune",
            "graphopt.tune_build",
            "graphopt.tune_candidates",
            "graphopt.tune_report",
        ),
    ),
    # 5: the command line, and the model corpus (tooling for tests and benchmarks)
    (5, ("graphopt.cli", "graphopt.__main__", "graphopt.zoo")),
]

#: what a pass may import from the framework: its public helpers, nothing that orchestrates
PASS_MAY_IMPORT = (
    "graphopt.core",
    "graphopt.ir",
    "graphopt.data",
    "graphopt.runtime",
    "graphopt.budget",
    "graphopt.calib",
    "graphopt.target",
    "graphopt.errors",
    "graphopt.metrics",
    "graphopt.acceptance",
    "graphopt._callable",
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
            # "from graphopt import ir" imports the module graphopt.ir
            names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
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


def layer_of(module: str) -> int:
    best, layer = -1, None
    for lv, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), lv
    if layer is None:
        raise KeyError(module)
    return layer


def test_every_module_has_a_layer() -> None:
    missing = []
    for m in MODULES:
        try:
            layer_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


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


@pytest.mark.parametrize("folder", ["passes"])
def test_no_pass_module_exceeds_500_lines(folder: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.joinpath(folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, f"split these modules (over 500 lines): {long}"
