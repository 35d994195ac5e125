"""The package's import graph: no circles, and no module imports from a layer above its own.

Every import counts, wherever it sits (top level, inside a function, under TYPE_CHECKING): an
import moved into a function to dodge a circle is still the circle. The layer order is written
once, here; a new module must be placed in it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "peftrepro"

# Lowest first. A module may import from its own layer (if that makes no circle) and from below.
LAYERS: tuple[str, ...] = (
    # leaves: formats, rules and measurement, nothing about runs or tasks
    "peftrepro errors console jsonio paths methods metrics stats schemas runconfig peftconfig measure"
    " environment tasks.text tasks.hub signing forked ray_tracker",
    "training tasks.base checks",  # the loop, and what a task is
    "tasks.arithmetic tasks.digits tasks.flux_digits tasks.metamathqa tasks.imagegen tasks.gsm_symbolic",
    "tasks",  # their registry
    "manifest records compare validate",  # a manifest resolved against its task; records; their comparison
    "job sweep runners.local runners.entry runners.docker runners",  # one run or sweep, and where it happens
    # batches of jobs
    "executors executors.work child executors.template executors.local executors.ray_fleet executors.batch",
    "collect verify leaderboard plot sections site pages scaffold importer published ci",  # records read
    "cli_options",
    "cli",
)
LEVEL = {module: i for i, layer in enumerate(LAYERS) for module in layer.split()}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return name.removeprefix("peftrepro.") if name != "peftrepro" else name


def _imports(path: Path, known: set[str], package_dir: Path = PACKAGE) -> set[str]:
    """The package modules `path` imports, at any depth of its syntax tree."""
    name = _module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                here = ["peftrepro", *([] if package in ("", "peftrepro") else package.split("."))]
                base = ".".join(here[: len(here) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from m import a`: the submodule m.a when there is one, else m itself
            targets = [[f"{module}.{a.name}", module] for a in node.names]
        else:
            continue
        for candidates in targets:
            for t in candidates:
                short = t.removeprefix("peftrepro.") if t != "peftrepro" else t
                if (t == "peftrepro" or t.startswith("peftrepro.")) and short in known:
                    found.add(short)
                    break
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) for name, path in sorted(files.items())}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    placed = [m for layer in LAYERS for m in layer.split()]  # LEVEL would hide a module listed twice
    assert len(placed) == len(set(placed)), "a module is listed in two layers"
    graph = import_graph()
    assert sorted(set(graph) - set(placed)) == [], "place these modules in LAYERS"
    assert sorted(set(placed) - set(graph)) == [], "LAYERS names modules that do not exist"


def test_the_package_has_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{m} (layer {LEVEL[m]}) imports {t} (layer {LEVEL[t]})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if LEVEL[t] > LEVEL[m]
    ]
    assert upward == []


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    package = tmp_path / "peftrepro"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from peftrepro.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from ..a import f\nif False:\n    import peftrepro.c\n")
    (package / "c.py").write_text("from peftrepro import a\n")
    known = {"peftrepro", "a", "sub", "sub.b", "c"}
    graph = {
        n: _imports(p, known, package)
        for n, p in [("a", package / "a.py"), ("sub.b", package / "sub" / "b.py"), ("c", package / "c.py")]
    }
    assert graph == {"a": {"sub.b"}, "sub.b": {"a", "c"}, "c": {"a"}}
    assert circles(graph) == [["a", "c", "sub.b"]]
