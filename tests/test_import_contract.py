"""The import contract (issue 17): one-way layers, serving apart from training, no circles.

The contracts live in pyproject.toml ([tool.importlinter]); `lint-imports`
checks them here as in CI. The graph itself (grimp, import-linter's engine)
must also have no cycle, between modules and between angiogate's packages,
whatever the contracts say. Imports made only for type hints (under
`if TYPE_CHECKING:`) are not counted: they never run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("angiogate", exclude_type_checking_imports=True)


def _cycles(nodes, edges_of) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges_of(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges_of(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _package(module: str) -> str:
    """angiogate.judge.verdict -> angiogate.judge; angiogate.cli -> angiogate.cli."""
    return ".".join(module.split(".")[:2])


def test_lint_imports_keeps_every_contract():
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " broken" in result.stdout and "0 broken" in result.stdout


def test_no_import_cycle_between_modules():
    graph = _graph()
    assert _cycles(graph.modules, graph.find_modules_directly_imported_by) == []


def test_no_import_cycle_between_packages():
    graph = _graph()
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if _package(imported) != _package(module) and _package(module) != "angiogate":
                edges.setdefault(_package(module), set()).add(_package(imported))
    packages = {_package(m) for m in graph.modules} - {"angiogate"}
    assert _cycles(packages, lambda p: edges.get(p, set())) == []


def test_serving_and_scoring_load_no_training():
    """What `angiogate serve` and `score` import, imported for real: no training, no offline export."""
    code = ("import sys, angiogate.cli, angiogate.service, angiogate.judge.pipeline, angiogate.modelstore.resolve; "
            "print(sorted(m for m in sys.modules if m.startswith(('angiogate.training', 'angiogate.export', "
            "'angiogate.synth', 'angiogate.bench'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout
