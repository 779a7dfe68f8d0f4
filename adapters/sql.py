"""The SQL adapters on SQLAlchemy 2 async: SQLite (aiosqlite), the embedded default, and
PostgreSQL (asyncpg). Needs the ``sql`` extra (``pip install "aioworkflow[sql]"``).

    from workflow.adapters.sql import (
        make_engine, create_schema, SQLRecordStore, SQLStreamer, SQLTimeoutStore,
        SQLRoleScheduler,
    )
"""

from __future__ import annotations

from ._extras import require

require("sql", "sqlalchemy", "aiosqlite", "asyncpg", "alembic")

from .sqlrolescheduler import SQLRoleScheduler  # noqa: E402
from .sqlschema import create_schema, drop_schema, make_engine  # noqa: E402
from .sqlstore import SQLRecordStore  # noqa: E402
from .sqlstreamer import SQLStreamer  # noqa: E402
from .sqltimeout import SQLTimeoutStore  # noqa: E402

__all__ = [
    "SQLRecordStore",
    "SQLRoleScheduler",
    "SQLStreamer",
    "SQLTimeoutStore",
    "create_schema",
    "drop_schema",
    "make_engine",
]
