"""The engine's modules form layers: no import inside a function (except a lazy import of an
optional extra) and no import cycle among the modules of ``workflow/`` at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workflow._signals import signals_for

WORKFLOW = Path(__file__).resolve().parent.parent / "workflow"
ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
CLI = WORKFLOW / "cli"
OPTIONAL = {"sqlalchemy", "aiosqlite", "asyncpg", "alembic", "aiokafka", "uvicorn", "opentelemetry"}


def _modules() -> list[Path]:
    return sorted(WORKFLOW.glob("*.py")) + sorted(ADAPTERS.rglob("*.py")) + sorted(CLI.glob("*.py"))


def _function_imports(tree: ast.AST) -> list[ast.stmt]:
    found: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def _top(node: ast.stmt) -> str:
    if isinstance(node, ast.ImportFrom):
        return "." if node.level else (node.module or "").split(".")[0]
    assert isinstance(node, ast.Import)
    return node.names[0].name.split(".")[0]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_import_inside_a_function(path: Path) -> None:
    imports = _function_imports(ast.parse(path.read_text()))
    bad = [ast.unparse(n) for n in imports if _top(n) not in OPTIONAL]
    assert bad == [], f"{path.name}: move these to the top of the module: {bad}"


def _runtime_imports(path: Path) -> set[str]:
    """The ``workflow._x`` modules ``path`` imports when it is imported (module level, not
    under ``if TYPE_CHECKING``)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
    return {m for m in out if (WORKFLOW / f"{m}.py").exists()}


def test_the_engine_modules_have_no_import_cycle() -> None:
    graph = {p.stem: _runtime_imports(p) for p in WORKFLOW.glob("*.py")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join([*path, m])}"
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            visit(dep, [*path, m])
        state[m] = 2

    for module in sorted(graph):
        visit(module, [])


def test_a_store_without_weak_references_shares_its_signals_through_an_attribute() -> None:
    class Slotted:
        __slots__ = ("_workflow_signals",)

    class Frozen:
        __slots__ = ()

    a = Slotted()
    assert signals_for(a) is signals_for(a)
    b, c = Frozen(), Frozen()
    assert signals_for(b) is not signals_for(c)  # no registry keyed by id(): never shared
