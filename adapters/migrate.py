"""The shipped alembic migrations, usable from any directory after ``pip install``.

    python -m workflow.adapters.migrate upgrade --url URL [--schema NAME] [--revision head]
    python -m workflow.adapters.migrate current --url URL [--schema NAME]
    python -m workflow.adapters.migrate location     # the directory, for alembic -c setups

The URL may also come from ``$WORKFLOW_DATABASE_URL`` and the PostgreSQL schema from
``$WORKFLOW_DATABASE_SCHEMA``. From Python: :func:`upgrade` and :func:`current`, or
:func:`alembic_config` for any other alembic command. Needs the ``sql`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from ._extras import require

require("sql", "sqlalchemy", "alembic")

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from sqlalchemy import make_url  # noqa: E402
from sqlalchemy.engine import Connection  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

__all__ = ["LOCATION", "alembic_config", "current", "main", "upgrade"]

LOCATION = Path(__file__).resolve().parent / "migrations"
"""The alembic environment (``env.py``) and its ``versions/``, installed with the package."""

URL_ENV = "WORKFLOW_DATABASE_URL"
SCHEMA_ENV = "WORKFLOW_DATABASE_SCHEMA"


def alembic_config(url: str, schema: str | None = None) -> Config:
    """An alembic configuration on the shipped migrations for ``url`` (an async URL, as given
    to ``make_engine``), with the tables in PostgreSQL schema ``schema`` if given."""
    config = Config()
    config.set_main_option("script_location", str(LOCATION))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["url"] = url
    if schema:
        config.attributes["schema"] = schema
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head", schema: str | None = None) -> None:
    """Apply the migrations up to ``revision`` (idempotent: an up-to-date database is left
    alone). Blocking: call it before the application starts, or in a thread."""
    command.upgrade(alembic_config(url, schema), revision)


def current(url: str, schema: str | None = None) -> str | None:
    """The revision the database is at, or None for a database without the tables."""
    return asyncio.run(_current(url, schema))


async def _current(url: str, schema: str | None) -> str | None:
    kwargs: dict[str, Any] = {}
    if schema and make_url(url).get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(url, **kwargs)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_revision, schema)
    finally:
        await engine.dispose()


def _revision(conn: Connection, schema: str | None) -> str | None:
    opts = {"version_table_schema": schema} if schema and conn.dialect.name == "postgresql" else {}
    return MigrationContext.configure(conn, opts=opts).get_current_revision()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workflow.adapters.migrate",
        description="Apply or inspect the workflow tables' migrations.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("upgrade", "apply the migrations"), ("current", "show the revision")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--url", default=os.environ.get(URL_ENV), help=f"default: ${URL_ENV}")
        p.add_argument(
            "--schema", default=os.environ.get(SCHEMA_ENV), help="PostgreSQL schema to use"
        )
        if name == "upgrade":
            p.add_argument("--revision", default="head")
    sub.add_parser("location", help="print the directory of the alembic environment")
    args = parser.parse_args(argv)
    if args.command == "location":
        print(LOCATION)
        return 0
    if not args.url:
        parser.error(f"give --url or set ${URL_ENV}")
    if args.command == "upgrade":
        upgrade(args.url, args.revision, args.schema)
        print(f"upgraded to {current(args.url, args.schema)}")
    else:
        print(current(args.url, args.schema) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
