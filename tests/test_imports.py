"""The package's import graph: no cycles, and no module importing another's private names.

Every ``import`` in hopaudit counts, at module level and inside functions (a function-level
import is a cycle waiting to be called), except those under ``if TYPE_CHECKING:``, which never
run. Importing ``hopaudit.a.b`` also runs ``hopaudit/a/__init__.py``, so an import reaches the
packages above its target too (but not the importer's own packages: they are already running).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hopaudit"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(target module, imported name or None, line) for every import that runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, None, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.extend((base, a.name, child.lineno) for a in child.names)
            visit(child)

    visit(tree)
    return [f for f in found if f[0] == "hopaudit" or f[0].startswith("hopaudit.")]


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        for base, name, _ in _imports(module, path):
            target = f"{base}.{name}" if name and f"{base}.{name}" in MODULES else base
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the target and the packages above it
                reached = ".".join(parts[:i])
                if reached in MODULES and reached not in own:
                    graph[module].add(reached)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_graph_finder_sees_a_planted_cycle_and_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # a function-level import counts; one under TYPE_CHECKING does not
    api = _imports("hopaudit.api", MODULES["hopaudit.api"])
    assert any(base.startswith("hopaudit.") for base, _, _ in api)


def test_no_import_cycles():
    cycles = _cycles(_edges())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, path in MODULES.items():
        for base, name, line in _imports(module, path):
            if name and name.startswith("_") and not name.startswith("__") and base != module:
                if f"{base}.{name}" in MODULES:  # a private submodule is the package's own
                    continue
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {base}.{name}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("folder", sorted(p.name for p in PACKAGE.iterdir() if p.is_dir()))
def test_every_folder_is_a_package_with_a_docstring(folder):
    if folder in ("static", "__pycache__"):
        pytest.skip(f"{folder}/ holds no Python")
    init = PACKAGE / folder / "__init__.py"
    assert init.is_file()
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))


def test_every_progress_bar_is_hopaudits():
    """tqdm's notebook bar stays a widget when it ends, and a notebook saved without widget
    state then shows a dead widget where it was: every bar goes through hopaudit.progress,
    which leaves the bar's text behind."""
    direct = [
        f"{module}:{line}"
        for module, path in MODULES.items()
        if module != "hopaudit.progress"
        for target, _, line in _imports(module, path)
        if target.split(".")[0] == "tqdm"
    ]
    assert not direct, f"tqdm imported directly (use hopaudit.progress.tqdm): {direct}"
