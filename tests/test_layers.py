"""The engine's imports go down its layers: no import cycle, not even one hidden inside a function,
and no Streamlit."""

from __future__ import annotations

import ast

from conftest import REPO

ENGINE = REPO / "tl_core"


def _imports(path) -> set[str]:
    """Every tl_core module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tl_core":
            names = [f"tl_core.{a.name}" for a in node.names] if node.module == "tl_core" else [node.module]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("tl_core", "streamlit"))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "streamlit":
            found.add("streamlit")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"tl_core.{p.stem}": p for p in ENGINE.glob("*.py")}
    return {name: (_imports(path) & set(modules)) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path being explored, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_engine_has_no_import_cycle():
    graph = _graph()
    assert "tl_core.execution" in graph and "tl_core.runner" in graph["tl_core.execution"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_never_imports_streamlit():
    assert [p.name for p in ENGINE.glob("*.py") if "streamlit" in _imports(p)] == []
