"""The house rules of docs/architecture.md, checked: the floors, every import pointing down (or
sideways within a floor without a circle), and the ground floor free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first; a module belongs to the floor of its longest listed prefix (docs/architecture.md).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("corll", "corll.hardware", "corll.feedback", "corll.memo", "corll.stats", "corll.classification",
                "corll.embeddings", "corll.config", "corll.models", "corll.client", "corll.files", "corll.processes")),
    ("measures", ("corll.losses", "corll.cpu_kernels", "corll.objectives", "corll.monitor", "corll.report",
                  "corll.batches", "corll.users.reactions", "corll.users.preferences")),
    ("policy", ("corll.policy",)),
    ("updates", ("corll.learners.dpo", "corll.learners.rounds", "corll.learners.base", "corll.reward_model")),
    ("tasks", ("corll.tasks",)),
    ("users", ("corll.users",)),
    ("learners", ("corll.learners",)),
    ("registry", ("corll.learners.registry",)),
    ("research", ("corll.run_dir", "corll.simulate", "corll.experiment", "corll.experiment_results",
                  "corll.compute", "corll.verdicts")),
    ("store", ("corll.store",)),
    ("service", ("corll.service", "corll.server")),
    ("cli", ("corll.cli", "corll.__main__")),
]
FLOOR_OF_PREFIX = {prefix: i for i, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes}


def floor(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:n])) in FLOOR_OF_PREFIX:
            return FLOOR_OF_PREFIX[prefix]
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and docs/architecture.md")


def modules(src: Path = SRC) -> dict[str, Path]:
    found = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if "migrations" not in parts:  # alembic's scripts run inside alembic, not imported by corll
            found[".".join(parts)] = path
    return found


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """Every corll module each module imports, at module level or inside functions (type-only imports
    under TYPE_CHECKING excluded: they never run)."""
    known = modules(src)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target.startswith("corll") and target != module and not module.startswith(target + "."):
                    targets.add(target)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if floor(b) > floor(a))


def test_every_module_is_on_a_floor_and_every_import_points_down():
    graph = imports()
    assert {floor(m) for m in graph} == set(range(len(FLOORS)))  # every floor is lived in, none is stale
    assert upward(graph) == []


def test_no_import_circles():
    assert circles(imports()) == []


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The rules above would pass vacuously if the graph missed imports: a planted violation is caught."""
    package = tmp_path / "corll"
    (package / "learners").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("def f():\n    from corll.simulate import run\n")
    (package / "simulate.py").write_text("from corll import config\n")
    (package / "learners" / "__init__.py").write_text("")
    (package / "learners" / "dpo.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                  "    from corll.simulate import run\n")
    graph = imports(tmp_path)
    assert upward(graph) == [("corll.config", "corll.simulate")]
    assert circles(graph) == [["corll.config", "corll.simulate"]]
    assert graph["corll.learners.dpo"] == set()  # a type-only import never runs


@pytest.mark.parametrize("module", ["corll.config", "corll.models", "corll.learners.registry", "corll.tasks",
                                    "corll.cli", "corll.server.app"])
def test_naming_and_checking_loads_no_torch(module):
    """The CLI answers --help and names a bad option, and the HTTP layer starts, without torch."""
    code = (f"import sys, {module}\n"
            "from corll.config import SimulationConfig\nfrom corll.learners.registry import check\n"
            "check(SimulationConfig(model='tiny', task='positive-review-dpo'))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
