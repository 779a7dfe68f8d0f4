"""PostgreSQL as the SQL adapters use it: how a time is passed, the lock that keeps the events
of a topic in id order, the database's clock, the parameter types of hand-written statements,
how the schema is read back, and the driver-level runners. Every PostgreSQL-specific SQL text
and value conversion of the adapters is here, except the statements on the adapters' tables,
which :mod:`adapters._statements` writes out from :mod:`adapters.sqlschema`.

**Times** are ``timestamptz``, given and read as aware datetimes (in UTC). **JSON** is
``jsonb``, given and read as text (``CAST(... AS TEXT)`` on the way out: no driver decodes it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._fastsql import Statement, aware_utc, driver, note

__all__ = [
    "LOCKED",
    "LOCK_NAMESPACE",
    "TOPICS_LOCK",
    "TOPIC_LOCK",
    "cast",
    "clock",
    "decode_time",
    "encode_time",
    "execute",
    "fetch",
    "fetchval",
    "lock_params",
    "schema_facts",
]

# -- values ----------------------------------------------------------------------------------


encode_time = aware_utc
"""An aware time as asyncpg takes it for ``timestamptz`` (in UTC)."""


def decode_time(value: datetime) -> datetime:
    """A ``timestamptz`` as read, in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def clock(shift: timedelta | None = None) -> sa.ColumnElement[Any]:
    """The database's clock (plus ``shift``): ``clock_timestamp()``, the time when it is
    evaluated (not the transaction's start)."""
    now = sa.func.clock_timestamp()
    return now if shift is None else now + sa.literal(shift, sa.Interval())


_DIALECT: sa.Dialect = PGDialect()  # type: ignore[no-untyped-call]


def cast(param: str, type_: sa.types.TypeEngine[Any], *, array: bool = False) -> str:
    """``CAST(:param AS T)`` for a value of column type ``type_`` (``T[]``: an array of
    them). A parameter outside a plain ``VALUES`` or ``SET`` (in ``SELECT ... FROM r``, or
    used twice) needs its type stated. Without a length: a cast to ``VARCHAR(64)`` would cut
    a longer value short silently, where the column refuses it."""
    name = re.sub(r"\(\d+\)", "", type_.compile(dialect=_DIALECT))
    return f"CAST(:{param} AS {name}{'[]' if array else ''})"


# -- the insert lock of a topic --------------------------------------------------------------

LOCK_NAMESPACE = 0x776B666C
"""First key of the advisory lock that serialises the inserts of one topic."""

TOPIC_LOCK = """l AS MATERIALIZED (
    SELECT 1 AS one FROM (
        SELECT pg_advisory_xact_lock(CAST(:namespace AS INTEGER), hashtext(CAST(:topic AS TEXT))),
               pg_notify(CAST(:channel AS TEXT), CAST(:payload AS TEXT))
    ) t
)"""
"""A CTE (``WITH`` + this) that takes the transaction-scoped insert lock of ``:topic`` and
NOTIFYs ``:channel`` with ``:payload`` at commit. Event ids come from a sequence and could
otherwise become visible out of id order (A takes id 10, B id 11 and commits first: a
reader that saw 11 would skip 10 for ever); under the lock the inserts of one topic commit
one at a time, in id order. A CTE that is not referenced is not evaluated: a statement gates
its writes on :data:`LOCKED`."""

TOPICS_LOCK = """l AS MATERIALIZED (
    SELECT count(*) AS one FROM (
        SELECT pg_advisory_xact_lock(CAST(:namespace AS INTEGER), hashtext(t.topic)),
               pg_notify(CAST(:channel AS TEXT), t.payload)
        FROM unnest(CAST(:lock_topics AS TEXT[]), CAST(:lock_payloads AS TEXT[]))
             WITH ORDINALITY AS t(topic, payload, k)
        ORDER BY t.k
    ) z
)"""
"""The insert locks of several topics (``:lock_topics``, sorted; ``:lock_payloads`` their
NOTIFY payloads), taken one after another in that order, for a statement that writes to all
of them: :data:`LOCKED` holds once all are taken. (Volatile functions in a sorted query's
output list are evaluated after the sort.)"""

LOCKED = "(SELECT one FROM l) >= 1"
"""The condition that makes a statement take :data:`TOPIC_LOCK` before it writes anything: an
uncorrelated sub-select, evaluated once, before any row is read or locked."""


def lock_params(topic: str, channel: str, payload: str | None = None) -> dict[str, Any]:
    """The parameters of :data:`TOPIC_LOCK` (no ``payload``: the topic)."""
    return {
        "namespace": LOCK_NAMESPACE,
        "topic": topic,
        "channel": channel,
        "payload": payload or topic,
    }


# -- the schema ------------------------------------------------------------------------------


async def schema_facts(
    conn: AsyncConnection, names: Sequence[str], index: str
) -> tuple[set[str], str | None]:
    """Which of the tables ``names`` exist (resolved through the search_path, as the
    adapters' own statements are), and the definition of index ``index`` on
    ``workflow_records`` (or ``None``)."""
    found = await conn.execute(
        sa.text(
            "SELECT name FROM unnest(CAST(:names AS TEXT[])) AS name "
            "WHERE to_regclass(quote_ident(name)) IS NOT NULL"
        ),
        {"names": list(names)},
    )
    tables = {r[0] for r in found}
    definition: Any = None
    if "workflow_records" in tables:
        definition = (
            await conn.execute(
                sa.text(
                    "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = to_regclass('workflow_records') AND c.relname = :name"
                ),
                {"name": index},
            )
        ).scalar()
    return tables, definition


# -- statements on the driver ----------------------------------------------------------------


async def fetch(
    engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """The rows of one read statement (no transaction of its own)."""
    note(stmt.text, True)
    async with driver(engine) as db:
        rows: Sequence[Sequence[Any]] = await db.fetch(stmt.pg, *stmt.args(params))
        return rows


async def fetchval(engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]) -> Any:
    """The first value of one statement run in autocommit (its own transaction)."""
    note(stmt.text, True)
    async with driver(engine) as db:
        return await db.fetchval(stmt.pg, *stmt.args(params))


async def execute(engine: AsyncEngine, stmt: Statement, params: Mapping[str, Any]) -> int:
    """One write statement in autocommit (its own transaction); its row count."""
    note(stmt.text, True)
    async with driver(engine) as db:
        status: str = await db.execute(stmt.pg, *stmt.args(params))
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
