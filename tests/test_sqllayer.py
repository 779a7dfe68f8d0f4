"""The SQL adapters' layers: each fact of the SQL dialects in one place, and an engine's shared
machinery kept by the engine itself (no module-level registry keyed by engine, loop, URL or
``id()``)."""

from __future__ import annotations

import ast
import gc
import weakref
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from workflow import Meta, OutboxEvent, Record, RunState
from workflow.adapters import _statements
from workflow.adapters._sqlengine import shared
from workflow.adapters.sqlschema import events, history, outbox, records

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
MODULES = sorted(ADAPTERS.rglob("*.py"))

_MAPPINGS = {"dict", "defaultdict", "OrderedDict", "WeakKeyDictionary", "WeakValueDictionary"}
_WEAK = {"WeakKeyDictionary", "WeakValueDictionary", "WeakSet"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _registries(tree: ast.Module) -> list[str]:
    """Module-level names bound to a container filled at run time: an empty mapping (``{}``,
    ``dict()``, ``defaultdict(...)``) or any weak mapping or set."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        empty_dict = isinstance(value, ast.Dict) and not value.keys
        call = _name(value.func) if isinstance(value, ast.Call) else ""
        empty_call = call in _MAPPINGS and isinstance(value, ast.Call) and not value.args
        if empty_dict or empty_call or call in _WEAK:
            found += [ast.unparse(t) for t in targets]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_level_registry(path: Path) -> None:
    """What belongs to one engine (or to one event loop of it) lives in its
    ``adapters._sqlengine.EngineShared``: a module-level table keyed by engine, loop, URL or
    ``id()`` outlives what it describes, and an ``id()`` is reused once its object is gone."""
    tree = ast.parse(path.read_text())
    assert _registries(tree) == [], (
        f"{path.name}: module-level registries {_registries(tree)}: keep the state on the "
        "object it belongs to (adapters._sqlengine.shared(engine) for an engine)"
    )
    by_id = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "id"
    ]
    assert by_id == [], f"{path.name}: keyed by id(): {by_id}"


def test_the_registry_check_finds_registries() -> None:
    source = """
import weakref
from weakref import WeakKeyDictionary
_a: dict[int, str] = {}
_b = weakref.WeakKeyDictionary()
_c: WeakKeyDictionary[object, int] = WeakKeyDictionary()
_d = weakref.WeakValueDictionary()
_e = dict()
TABLE = {"x": 1}
"""
    assert _registries(ast.parse(source)) == ["_a", "_b", "_c", "_d", "_e"]


def _code_strings(path: Path) -> str:
    """Every string constant of a module but its docstrings (of the module, classes,
    functions and attributes): the SQL it says."""
    tree = ast.parse(path.read_text())
    docs: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for stmt in body:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                docs.add(id(stmt.value))
    return "\n".join(
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    )


@pytest.mark.parametrize(
    ("fact", "home"),
    [
        ("pg_advisory_xact_lock", "_postgres.py"),  # the topic's insert lock
        ("pg_notify", "_postgres.py"),
        ("%Y-%m-%d", "_sqlite.py"),  # SQLite's time text
        ("PRAGMA", "_sqlite.py"),
        ("BEGIN IMMEDIATE", "_sqlite.py"),
        ("INSERT INTO", "_statements.py"),  # every hand-written write
        ("UPDATE ", "_statements.py"),
    ],
)
def test_each_fact_of_the_dialects_is_said_once(fact: str, home: str) -> None:
    said = [p.name for p in MODULES if fact in _code_strings(p)]
    assert said == [home], f"{fact!r} is written in {said}, not only in {home}"


def _columns(table: sa.Table, *without: str) -> set[str]:
    return {c.name for c in table.columns} - set(without)


def test_the_written_columns_come_from_the_tables() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    record = Record("wf", "f", "r", RunState.INITIATED, 1, b"{}", now, now, Meta(version=1))
    row = _statements.record_row(record, _statements.decode_time)
    assert set(row) - {"prev"} == _columns(records, "id") == set(_statements.RECORD_WRITE)
    later = replace(record, run_state=RunState.RUNNING, meta=Meta(version=3))
    assert set(_statements.record_row(later, str)) - {"prev"} == _columns(history)
    assert set(_statements.VERSIONED) == _columns(history, "run_id")
    assert set(_statements.VERSIONED) < set(_statements.RECORD_WRITE)
    event = OutboxEvent("e", "wf", b"{}", now)
    assert set(_statements.outbox_row(event, str)) == _columns(outbox, "id")
    (event_row,) = _statements.event_rows("t", [("r", 1, {})], now, str)
    assert set(event_row) == _columns(events, "id")
    read = [*_statements.RECORD_READ]
    assert read == [c for c in _statements.RECORD_WRITE if c != "foreign_key"]
    assert _statements.record_from([row[c] for c in read]) == record
    child = replace(
        record,
        meta=Meta(
            version=1,
            parent_workflow="parent wf",
            parent_run_id="p-1",
            compensations=(3, 5, -1),
            compensating=True,
        ),
    )
    row = _statements.record_row(child, _statements.decode_time)
    assert (row["compensations"], row["parent_run_id"]) == ("3,5,-1", "p-1")
    assert _statements.record_from([row[c] for c in read]) == child
    # "" and () are stored as NULL
    assert row.keys() >= {"parent_workflow_name", "parent_run_id", "compensations"}
    plain = _statements.record_row(record, _statements.decode_time)
    assert plain["parent_run_id"] is plain["parent_workflow_name"] is plain["compensations"] is None


async def test_an_engine_keeps_its_shared_machinery() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    other = create_async_engine("sqlite+aiosqlite://")
    db = shared(engine)
    assert shared(engine) is db
    assert shared(engine.execution_options(logging_token="x")) is db  # same pool
    assert shared(other) is not db  # same URL, another engine: another process's view
    assert db.writer() is db.writer()
    gone = weakref.ref(db)
    await engine.dispose()
    await other.dispose()
    del engine, db
    gc.collect()
    assert gone() is None  # it goes with its engine: nothing else holds it
