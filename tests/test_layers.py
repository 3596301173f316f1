"""Imports go down the layers: app_pages -> ui -> tl_core, never up; inside the engine no import cycle,
not even one hidden inside a function, no Streamlit, and training never imports serving code.

CI runs this file with the rest of the suite; ``python -m pytest tests/test_layers.py`` alone takes a second.
"""

from __future__ import annotations

import ast

from conftest import REPO

ENGINE = REPO / "tl_core"


def _imports(path) -> set[str]:
    """Every tl_core, ui or app_pages module (and streamlit) ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("ui", "app_pages"):
            found.add(node.module)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tl_core":
            names = [f"tl_core.{a.name}" for a in node.names] if node.module == "tl_core" else [node.module]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("tl_core", "streamlit", "ui", "app_pages"))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "streamlit":
            found.add("streamlit")
    return found


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _engine_modules() -> dict:
    """``{module name: path}`` of every engine module, the data package's included."""
    return {_module_name(p): p for p in ENGINE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    modules = _engine_modules()
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
    assert [p.name for p in ENGINE.rglob("*.py") if "streamlit" in _imports(p)] == []


def test_the_data_package_is_walked_too():
    graph = _graph()
    assert "tl_core.data.decode" in graph and "tl_core.data.arrays" in graph["tl_core.data.decode"]


def test_layers_go_one_way_pages_ui_engine():
    """The engine imports neither ui nor app_pages; ui never imports a page."""
    up = {"tl_core": ("ui", "app_pages"), "ui": ("app_pages",)}
    found = []
    for layer, above in up.items():
        for path in (REPO / layer).rglob("*.py"):
            found += [f"{_module_name(path)} -> {m}" for m in _imports(path) if m.split(".")[0] in above]
    assert found == []


# Training (a run from data to a stored model) never needs the serving side: exports, cards, reports.
TRAINING = ("tl_core.runner", "tl_core.finetune", "tl_core.features", "tl_core.heads", "tl_core.gradcam",
            "tl_core.explain", "tl_core.execution")
SERVING = ("tl_core.export",)


def _reachable(graph, start) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_training_never_imports_serving_code():
    graph = _graph()
    assert {m: sorted(_reachable(graph, m) & set(SERVING)) for m in TRAINING} == {m: [] for m in TRAINING}


# The top of the engine: what draws (Plotly charts) and what runs a whole training. Measuring
# modules (metrics, calibration, comparison, label issues) sit below both.
DRAWING_AND_RUNNING = {"tl_core.charts": {"tl_core.export"},
                       "tl_core.runner": {"tl_core.execution", "tl_core.__main__"}}


def test_only_the_top_of_the_engine_imports_the_charts_or_the_run_orchestrator():
    graph = _graph()
    found = {top: sorted(m for m, deps in graph.items() if top in deps) for top in DRAWING_AND_RUNNING}
    assert found == {top: sorted(allowed) for top, allowed in DRAWING_AND_RUNNING.items()}
