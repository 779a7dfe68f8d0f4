"""Alembic environment for the workflow SQL adapters' tables (``workflow.adapters.sqlschema``).

The database URL is ``config.attributes["url"]`` (``workflow.adapters.migrate``), else
``$WORKFLOW_DATABASE_URL`` if set, else ``sqlalchemy.url`` from alembic.ini; async URLs
(``sqlite+aiosqlite://``, ``postgresql+asyncpg://``) are expected.
A PostgreSQL schema (other than the connection's default) is chosen with
``alembic -x schema=NAME ...`` or ``$WORKFLOW_DATABASE_SCHEMA``: the tables and the
``alembic_version`` table then live in that (existing) schema.

Programmatic use (tests): put a synchronous :class:`sqlalchemy.engine.Connection` in
``config.attributes["connection"]`` (for an :class:`AsyncConnection`, call
``command.upgrade`` inside ``await conn.run_sync(...)``); the caller owns its transaction.
``config.attributes["schema"]`` picks the schema too, and
``config.attributes["configure_logger"] = False`` leaves logging alone.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from workflow.adapters.sqlschema import metadata

URL_ENV = "WORKFLOW_DATABASE_URL"
SCHEMA_ENV = "WORKFLOW_DATABASE_SCHEMA"

config = context.config
target_metadata = metadata

# Programmatic callers keep their own logging setup.
if (
    config.config_file_name is not None
    and "connection" not in config.attributes
    and config.attributes.get("configure_logger", True)
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = (
        config.attributes.get("url")
        or os.environ.get(URL_ENV)
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError(f"set {URL_ENV} or sqlalchemy.url in alembic.ini")
    return url


def _backend() -> str:
    return sa.make_url(_url()).get_backend_name()


def _schema() -> str | None:
    schema = (
        config.attributes.get("schema")
        or context.get_x_argument(as_dictionary=True).get("schema")
        or os.environ.get(SCHEMA_ENV)
    )
    return str(schema) if schema else None


def compare_server_default(
    migration_context: MigrationContext,
    inspected_column: sa.Column[Any],
    metadata_column: sa.Column[Any],
    inspected_default: str | None,
    metadata_default: sa.schema.FetchedValue | None,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Alembic's own comparison (``None``), except for ``DEFAULT ''`` on SQLite: alembic
    compares the reflected ``''`` with the metadata's empty string and reports a change
    that is none (its SQLite unquoting needs at least one character between the quotes)."""
    if migration_context.dialect.name == "sqlite" and inspected_default in ("''", "('')"):
        return rendered_metadata_default not in ("", "''")
    return None


def _configure(connection: Connection | None, **kw: Any) -> None:
    backend = connection.dialect.name if connection is not None else _backend()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=backend == "sqlite",  # SQLite cannot ALTER most things: copy-and-move
        compare_type=True,
        compare_server_default=compare_server_default,
        version_table_schema=_schema() if backend == "postgresql" else None,
        **kw,
    )


def _sqlite_transactional_ddl(engine: sa.Engine) -> None:
    """Let SQLAlchemy emit BEGIN itself: the sqlite3 driver otherwise runs DDL outside any
    transaction, so a failed migration would leave half its tables behind."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on ``connection``; a caller's transaction stays the caller's."""
    schema = _schema() if connection.dialect.name == "postgresql" else None
    if schema is None:
        _run_migrations(connection)
    elif connection.in_transaction():
        _run_migrations(connection, schema)
    else:  # one transaction, so that SET LOCAL lasts exactly as long as the migration
        with connection.begin():
            _run_migrations(connection, schema)


def _run_migrations(connection: Connection, schema: str | None = None) -> None:
    if schema is not None:
        quoted = connection.dialect.identifier_preparer.quote_schema(schema)
        connection.exec_driver_sql(f"SET LOCAL search_path TO {quoted}")
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Create an async engine from the URL and run the migrations on one connection."""
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = _url()
    connectable = async_engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    if connectable.dialect.name == "sqlite":
        _sqlite_transactional_ddl(connectable.sync_engine)
    try:
        async with connectable.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await connectable.dispose()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: emit the DDL as a script instead of running it."""
    _configure(None, url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    schema = _schema() if _backend() == "postgresql" else None
    with context.begin_transaction():
        if schema is not None:
            quoted = context.get_context().dialect.identifier_preparer.quote_schema(schema)
            context.execute(f"SET search_path TO {quoted}")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
