"""What the commands share: the database URL, times, ``MODULE:ATTR`` objects, and every
failure said in one line (:class:`CommandError`, exit code 1)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import Builder, PausedBy, RunState, Workflow, WorkflowError
from workflow.adapters._schemacheck import check_schema
from workflow.adapters._sqlsetup import SchemaError
from workflow.adapters.memory import MemRecordStore, MemRoleScheduler, MemStreamer
from workflow.adapters.sql import SQLRecordStore, make_engine

__all__ = [
    "PAUSED_BY",
    "SCHEMA_ENVS",
    "URL_ENVS",
    "CommandError",
    "Database",
    "PausedByType",
    "RunStateType",
    "TimeType",
    "load",
    "run_async",
    "workflows_of",
]

T = TypeVar("T")

URL_ENVS = ("AIOWORKFLOW_URL", "WORKFLOW_DATABASE_URL")
"""Where the database URL comes from when ``--url`` is not given, first set wins."""
SCHEMA_ENVS = ("AIOWORKFLOW_SCHEMA", "WORKFLOW_DATABASE_SCHEMA")

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a PostgreSQL server before saying it cannot be reached."""


class CommandError(click.ClickException):
    """An operation that failed (no such run, a refused run-state change, a database that
    cannot be reached): one line on stderr, exit code 1."""

    exit_code = 1


# -- the database ---------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """An async SQLAlchemy URL from what an operator types: a plain file path is a SQLite
    file, ``sqlite://`` gets aiosqlite and ``postgresql://`` / ``postgres://`` asyncpg."""
    url = url.strip()
    if "://" not in url:
        return f"sqlite+aiosqlite:///{url}"
    scheme, rest = url.split("://", 1)
    scheme = {"sqlite": "sqlite+aiosqlite", "postgres": "postgresql+asyncpg"}.get(scheme, scheme)
    if scheme == "postgresql":
        scheme = "postgresql+asyncpg"
    return f"{scheme}://{rest}"


def shown(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def first_line(err: BaseException) -> str:
    """The gist of an error: a database driver's own message when SQLAlchemy wraps one,
    its first line, with the error's type when it says nothing."""
    inner: BaseException = err
    if isinstance(err, sa_exc.DBAPIError) and err.orig is not None:
        inner = err.orig
    text = str(inner).strip().splitlines()
    line = text[0].strip() if text else ""
    name = type(inner).__name__
    if not line:
        return name
    if isinstance(err, sa_exc.DBAPIError | WorkflowError | ValueError):
        return line  # the driver's or the engine's own words say what is wrong
    return f"{name}: {line}"


@dataclass(frozen=True)
class Database:
    """The database a command works on: a normalised async URL and a PostgreSQL schema."""

    url: str
    schema: str | None

    @classmethod
    def of(cls, url: str | None, schema: str | None) -> Database:
        if not url:
            raise click.UsageError(
                f"no database URL: give --url or set ${URL_ENVS[0]} (or ${URL_ENVS[1]})"
            )
        url = normalise_url(url)
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise click.UsageError(f"not a database URL: {shown(url)!r}") from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise click.UsageError(
                f"unsupported database {parsed.get_backend_name()!r} in {shown(url)}: "
                "use sqlite+aiosqlite:///FILE or postgresql+asyncpg://..."
            )
        return cls(url, schema or None)

    @property
    def shown(self) -> str:
        return shown(self.url)

    @property
    def postgres(self) -> bool:
        return make_url(self.url).get_backend_name() == "postgresql"

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file (``None`` on PostgreSQL and for in-memory SQLite)."""
        u = make_url(self.url)
        if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
            return None
        if u.query.get("mode") == "memory":
            return None
        return Path(u.database.removeprefix("file:") if u.query.get("uri") else u.database)

    def need_file(self) -> None:
        """Refuse a SQLite file that does not exist (opening it would create an empty one)."""
        path = self.sqlite_file
        if path is not None and not path.exists():
            raise CommandError(
                f"no SQLite database at {path} (create one with: aioworkflow db upgrade "
                f"--url {self.shown})"
            )

    def engine(self) -> AsyncEngine:
        kwargs: dict[str, Any] = {}
        if self.postgres:
            connect: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
            if self.schema:
                connect["server_settings"] = {"search_path": self.schema}
            kwargs["connect_args"] = connect
        return make_engine(self.url, **kwargs)

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[AsyncEngine]:
        """An engine whose database answered (else :class:`CommandError`), disposed after."""
        engine = self.engine()
        try:
            try:
                async with engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
            except (sa_exc.DBAPIError, OSError, WorkflowError) as err:
                raise CommandError(
                    f"cannot reach the database {self.shown}: {first_line(err)}"
                ) from None
            yield engine
        finally:
            await engine.dispose()

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[SQLRecordStore]:
        """The record store on this database, once its schema is the workflow one. Without
        ``streamer=``: the events of the changes a command makes go to the outbox, which the
        workers' outbox relays publish."""
        self.need_file()
        async with self.connected() as engine:
            try:
                await check_schema(engine)
            except SchemaError as err:
                gist = str(err).split(". Without it", 1)[0]
                raise CommandError(
                    f"{gist}; apply the migrations: aioworkflow db upgrade --url {self.shown}"
                ) from None
            yield SQLRecordStore(engine)

    async def facts(self) -> tuple[str | None, bool]:
        """The alembic revision of the database (``None``: none) and whether it has the
        workflow tables."""
        async with self.connected() as engine, engine.connect() as conn:
            return await conn.run_sync(_facts, self.schema if self.postgres else None)


def _facts(conn: Connection, schema: str | None) -> tuple[str | None, bool]:
    opts = {"version_table_schema": schema} if schema else {}
    revision = MigrationContext.configure(conn, opts=opts).get_current_revision()
    tables = sa.inspect(conn).get_table_names()
    return revision, "workflow_records" in tables


def run_async(coro: Coroutine[Any, Any, T], db: Database | None = None) -> T:
    """Run a command's coroutine; an error of the engine or the database becomes one line."""
    try:
        return asyncio.run(coro)
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (WorkflowError, ValueError) as err:
        raise CommandError(first_line(err)) from None
    except (sa_exc.DBAPIError, OSError) as err:
        where = f" on {db.shown}" if db is not None else ""
        raise CommandError(f"database error{where}: {first_line(err)}") from None


# -- parameters -----------------------------------------------------------------------------

_AGO = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time (without a timezone: UTC), or a duration ago (``90d``)."""
    ago = _AGO.match(text)
    if ago:
        delta = timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
        return (now or datetime.now(UTC)) - delta
    t = datetime.fromisoformat(text.strip())
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


class TimeType(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic from 8.5
    """An ISO 8601 date or time (``2026-12-01``, ``2026-12-01T10:00:00Z``; no timezone means
    UTC) or a duration before now (``30m``, ``12h``, ``90d``, ``2w``)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value))
        except (ValueError, OverflowError):
            self.fail(
                f"{value!r} is not an ISO 8601 date or time (2026-12-01, 2026-12-01T10:00:00Z) "
                "nor a duration ago (12h, 90d)",
                param,
                ctx,
            )


def _key(text: str) -> str:
    return text.strip().upper().replace("-", "_").replace(" ", "_")


class RunStateType(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic from 8.5
    """A run state by name (``paused``, ``requested-data-deleted``, any case) or number."""

    name = "RUN_STATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, RunState):
            return value
        text = str(value)
        try:
            return RunState(int(text)) if text.strip().isdigit() else RunState[_key(text)]
        except (KeyError, ValueError):
            names = ", ".join(s.name.lower().replace("_", "-") for s in RunState if s.valid)
            self.fail(f"{text!r} is not a run state: one of {names}, or 1-7", param, ctx)


PAUSED_BY = {
    "retries": PausedBy.RETRIES_EXHAUSTED,
    "non-retryable": PausedBy.NON_RETRYABLE,
    "step": PausedBy.STEP,
    "operator": PausedBy.OPERATOR,
    "compensation": PausedBy.COMPENSATION_FAILED,
}
"""The short names of ``--paused-by``; the full ``PausedBy`` values are accepted too."""


class PausedByType(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic from 8.5
    """Why a run was paused: a ``PausedBy`` value or its short name."""

    name = "REASON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = " ".join(str(value).lower().replace("_", " ").split())
        found = PAUSED_BY.get(text.replace(" ", "-"))
        if found is None:
            try:
                found = PausedBy(text)
            except ValueError:
                allowed = list(dict.fromkeys([*PAUSED_BY, *(str(p) for p in PausedBy)]))
                self.fail(f"{value!r} is not one of {', '.join(map(repr, allowed))}", param, ctx)
        return str(found)


# -- MODULE:ATTR ----------------------------------------------------------------------------


def load(spec: str, option: str = "MODULE:ATTR") -> Any:
    """The object ``ATTR`` (dotted) of module ``MODULE``, imported with the working
    directory on the import path (as ``python -m`` and uvicorn do)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(
            f"{spec!r} is not MODULE:ATTR (e.g. examples.gettingstarted:build)",
            param_hint=option,
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:
        raise click.BadParameter(
            f"cannot import {module_name}: {type(err).__name__}: {err}", param_hint=option
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"{module_name} has no {attr!r}", param_hint=option)
        obj = getattr(obj, part)
    return obj


def _required_positional(fn: Any) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is p.empty)


def workflows_of(obj: Any, spec: str, option: str = "MODULE:ATTR") -> list[Workflow[Any, Any]]:
    """The workflows ``obj`` stands for: a ``Workflow``; a ``Builder`` (built on memory
    adapters: nothing runs, nothing is stored); a function returning one, called with no
    arguments or, when it takes three, with memory adapters (streamer, store, roles), like
    the examples' ``build``; or a list, tuple or dict of these."""
    if isinstance(obj, Workflow):
        return [obj]
    if isinstance(obj, Builder):
        registry = CollectorRegistry()  # no metrics in the process's default registry
        try:
            return [
                obj.build(
                    MemStreamer(), MemRecordStore(), MemRoleScheduler(), metrics_registry=registry
                )
            ]
        except Exception as err:
            raise click.BadParameter(f"cannot build {spec}: {err}", param_hint=option) from None
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return [wf for item in obj for wf in workflows_of(item, spec, option)]
    if callable(obj) and not isinstance(obj, type):
        n = _required_positional(obj)
        if n in (0, 3):
            args = () if n == 0 else (MemStreamer(), MemRecordStore(), MemRoleScheduler())
            try:
                made = obj(*args)
            except Exception as err:
                raise click.BadParameter(
                    f"calling {spec} failed: {type(err).__name__}: {err}", param_hint=option
                ) from None
        else:
            raise click.BadParameter(
                f"{spec} is a function of {n} required arguments: give a Workflow, a Builder, "
                "or a function of none or of (streamer, store, roles) that returns one",
                param_hint=option,
            )
        if inspect.isawaitable(made):
            if inspect.iscoroutine(made):
                made.close()
            raise click.BadParameter(
                f"{spec} is asynchronous: give a plain function", param_hint=option
            )
        return workflows_of(made, spec, option)
    raise click.BadParameter(
        f"{spec} is a {type(obj).__name__}, not a Workflow, a Builder or a function returning one",
        param_hint=option,
    )
