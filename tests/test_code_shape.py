"""The application code's shape: imports point one way (no circle, counting imports
inside functions), and no module or function grows past what one reading holds."""

from __future__ import annotations

import ast
from pathlib import Path

from .server import ROOT

PACKAGES = ("audit", "auth", "contact", "inference", "jobs", "pacs", "studies", "training",
            "web")
TOP_LEVEL = ("app", "config", "extensions", "settings")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def application_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the application (not tests,
    benchmarks, scripts or migrations)."""
    modules = {name: ROOT / f"{name}.py" for name in TOP_LEVEL}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported(module: str, path: Path, node: ast.ImportFrom | ast.Import,
             known: dict[str, Path]) -> set[str]:
    """The application modules one import statement loads, wherever it stands."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = application_modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = set().union(*(
            imported(module, path, node, modules) for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_application_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 80  # every package was read
    assert circles(graph) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_extensions_and_the_queue_import_no_domain():
    graph = import_graph()
    assert graph["extensions"] == set()
    domains = ("contact", "pacs", "studies", "web", "app")
    for module in ("jobs.queue", "jobs.worker", "jobs.retry"):
        assert not {m for m in graph[module] if m.split(".")[0] in domains}, module


def test_no_domain_imports_the_web_edge_or_the_factory():
    graph = import_graph()
    for module, targets in graph.items():
        if module.split(".")[0] in ("auth", "contact", "inference", "jobs", "pacs", "studies",
                                    "training", "settings", "extensions"):
            upward = {t for t in targets if t == "app" or t.split(".")[0] == "web"}
            assert not upward, module


def test_no_module_or_function_is_too_long():
    too_long = []
    for module, path in application_modules().items():
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert too_long == []
