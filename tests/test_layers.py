"""The import layers of docs/architecture.md, read with ``ast`` from every module of the package
(module-level imports and those inside functions alike): no circle between modules or between
top-level packages, the floor imports nothing above it, the low layers know nothing of runs,
training or plots, and only ``__main__`` imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mls_tutorial"

#: modules every layer may import; they import nothing of the package but each other
FLOOR = {"files", "registry", "markdown", "device"}
#: the floor that the CLI reads before torch is loaded
TORCH_FREE = {"files", "registry", "markdown"}
#: the bottom layers: a loss, a metric, a model or a dataset knows nothing of what uses it
LOW = {"losses", "metrics", "models", "data"}
ABOVE_LOW = {
    "runs", "train", "sweep", "grid", "plots", "cli", "score", "regime", "widgets", "report",
    "results", "shipping", "after_ts", "length_curve", "nnunet", "cluster",
}  # fmt: skip


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str:
    """The module that ``name`` (a module, or a name inside one) lives in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # a submodule named in the list is the import, else the module it comes from
            found |= {
                f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                for a in node.names
            }
    ours = {_resolve(n) for n in found if n.split(".")[0] == "mls_tutorial"}
    return ours - {module, "mls_tutorial"}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES}


def test_circles_finds_a_circle_and_only_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_walk_sees_relative_and_in_function_imports(graph):
    assert "mls_tutorial.registry" in graph["mls_tutorial.losses"]  # relative, module level
    assert "mls_tutorial.nnunet.command" in graph["mls_tutorial.cli"]  # inside a function only


def test_no_circle_between_modules_or_between_packages(graph):
    assert circles(graph) == []
    packages: dict[str, set[str]] = {}
    for m, targets in graph.items():
        packages.setdefault(_top(m), set()).update(_top(t) for t in targets if _top(t) != _top(m))
    assert circles(packages) == []


def test_the_floor_imports_only_the_floor_and_its_torch_free_part_no_torch(graph):
    for m, targets in graph.items():
        if _top(m) in FLOOR:
            assert {_top(t) for t in targets} <= FLOOR, m
    for name in TORCH_FREE:
        tree = ast.parse(MODULES[f"mls_tutorial.{name}"].read_text())
        heavy = [
            a.name if isinstance(n, ast.Import) else n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
            if (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
            in {"torch", "monai", "matplotlib", "numpy"}
        ]
        assert heavy == [], name


def test_losses_metrics_models_data_know_nothing_of_what_uses_them(graph):
    for m, targets in graph.items():
        if _top(m) in LOW:
            assert not {_top(t) for t in targets} & ABOVE_LOW, (m, sorted(targets))


def test_only_main_imports_the_cli(graph):
    users = {m for m, targets in graph.items() if "mls_tutorial.cli" in targets}
    assert users <= {"mls_tutorial.__main__"}
