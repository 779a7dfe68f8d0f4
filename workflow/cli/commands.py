"""The commands of ``aioworkflow`` (a :mod:`click` group, :data:`cli`) and :func:`run`, which
runs them with every failure said in one line: exit code 2 for a usage error, 1 for an
operation that failed, no traceback (``AIOWORKFLOW_TRACEBACK=1`` shows one for an error the
command line did not expect).

Click rather than typer: typer is built on click and adds its own layer (commands declared
through type annotations, rich output); click alone is small, stable, fully typed and is
all this needs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.util import find_spec
from typing import Any, TypeVar

import click
from alembic import command as alembic_command
from alembic.script import ScriptDirectory

from workflow import Record, RunState, Workflow, mermaid
from workflow.adapters.migrate import alembic_config
from workflow.admin import Admin

from ._output import detail_json, detail_text, record_json, table, when
from ._support import (
    PAUSED_BY,
    SCHEMA_ENVS,
    URL_ENVS,
    CommandError,
    Database,
    PausedByType,
    RunStateType,
    TimeType,
    first_line,
    load,
    run_async,
    workflows_of,
)

__all__ = ["cli", "run"]

F = TypeVar("F", bound=Callable[..., Any])

TIME = TimeType()
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
HTTP_EXTRA = 'pip install "aioworkflow[http]"'


class Group(click.Group):
    """A group that prints its help when called without a command (exit code 0)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)


def database_options(fn: F) -> F:
    """``--url`` and ``--schema``, from the environment when not given."""
    fn = click.option(
        "--schema",
        envvar=list(SCHEMA_ENVS),
        show_envvar=True,
        metavar="NAME",
        help="PostgreSQL schema holding the workflow tables (ignored on SQLite).",
    )(fn)
    fn = click.option(
        "--url",
        envvar=list(URL_ENVS),
        show_envvar=True,
        metavar="URL",
        help="Database URL: sqlite+aiosqlite:///FILE (or a plain file path) or "
        "postgresql+asyncpg://USER:PASSWORD@HOST/DB.",
    )(fn)
    return fn


def app_option(fn: F) -> F:
    return click.option(
        "--app",
        metavar="MODULE:ATTR",
        help="Load the workflows' code (a Workflow, a Builder, a function returning one, or a "
        "list) to show and accept status names.",
    )(fn)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="aioworkflow", message="%(prog)s %(version)s")
@click.option(
    "-v", "--verbose", is_flag=True, help="Print the workflow library's log lines to stderr."
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Operate the workflow runs stored in a SQLite or PostgreSQL database.

    The database URL comes from --url, else $AIOWORKFLOW_URL, else $WORKFLOW_DATABASE_URL.
    Times are ISO 8601 (2026-12-01, 2026-12-01T10:00:00Z; no timezone means UTC) or a
    duration ago (12h, 90d).
    """
    # The command says what went wrong in one line: the library's own log lines (warnings
    # would reach stderr through logging's last resort) only with --verbose. Undone when the
    # command ends, for a program that runs the group in its own process (tests).
    log = logging.getLogger("workflow")
    handler: logging.Handler = logging.NullHandler()
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    before = (log.level, log.propagate)
    log.addHandler(handler)
    log.propagate = False
    if verbose:
        log.setLevel(logging.INFO)

    def restore() -> None:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]

    ctx.call_on_close(restore)


# -- db -------------------------------------------------------------------------------------


@cli.group(cls=Group)
def db() -> None:
    """The database tables: apply or inspect the shipped migrations."""


def _head(database: Database) -> str:
    head = ScriptDirectory.from_config(alembic_config(database.url)).get_current_head()
    return head or "none"


@db.command("upgrade", short_help="Create or upgrade the workflow tables.")
@database_options
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
def db_upgrade(url: str | None, schema: str | None, revision: str) -> None:
    """Create or upgrade the workflow tables (idempotent). Creates a SQLite file that does
    not exist yet."""
    database = Database.of(url, schema)
    path = database.sqlite_file
    if path is not None and not path.parent.is_dir():
        raise CommandError(f"cannot create {path}: the directory {path.parent} does not exist")
    before, tables = run_async(database.facts(), database)
    if before is None and tables:
        raise CommandError(
            f"{database.shown} has the workflow tables but no migration revision (made by "
            "create_schema?): record them with: aioworkflow db stamp"
        )
    try:
        alembic_command.upgrade(alembic_config(database.url, database.schema), revision)
    except CommandError:
        raise
    except Exception as err:
        raise CommandError(f"upgrade of {database.shown} failed: {first_line(err)}") from None
    after, _ = run_async(database.facts(), database)
    if after == before:
        click.echo(f"{database.shown} is at {after}: nothing to do")
    else:
        click.echo(f"upgraded {database.shown} from {before or 'none'} to {after}")


@db.command("current", short_help="Print the migration revision.")
@database_options
def db_current(url: str | None, schema: str | None) -> None:
    """Print the database's migration revision ("none" without one) and how it stands."""
    database = Database.of(url, schema)
    database.need_file()
    revision, tables = run_async(database.facts(), database)
    head = _head(database)
    if revision is None and tables:
        note = "tables made without the migrations, e.g. by create_schema: aioworkflow db stamp"
    elif revision is None:
        note = "no workflow tables: aioworkflow db upgrade"
    elif revision == head:
        note = "head"
    else:
        note = f"head is {head}: aioworkflow db upgrade"
    click.echo(f"{revision or 'none'} ({note})")


@db.command("stamp", short_help="Mark tables made by create_schema as migrated.")
@database_options
def db_stamp(url: str | None, schema: str | None) -> None:
    """Record that tables made without the migrations (by create_schema, as the examples
    do) are at the newest revision, after checking that they are the workflow schema."""
    database = Database.of(url, schema)

    async def check() -> tuple[str | None, bool]:
        async with database.store():
            return await database.facts()

    revision, _ = run_async(check(), database)
    if revision is not None:
        raise CommandError(f"{database.shown} is at revision {revision}: use db upgrade")
    try:
        alembic_command.stamp(alembic_config(database.url, database.schema), "head")
    except Exception as err:
        raise CommandError(f"stamp of {database.shown} failed: {first_line(err)}") from None
    click.echo(f"stamped {database.shown} at {_head(database)}")


# -- runs -----------------------------------------------------------------------------------


class Names:
    """Status names: from the loaded workflows' enums, else as stored with each version."""

    def __init__(self, workflows: Sequence[Workflow[Any, Any]] = ()) -> None:
        self.workflows = {wf.name: wf for wf in workflows}

    @classmethod
    def load(cls, app: str | None) -> Names:
        return cls(workflows_of(load(app, "--app"), app, "--app") if app else ())

    def __call__(self, record: Record) -> str:
        wf = self.workflows.get(record.workflow_name)
        if wf is not None:
            return wf._engine.status_name(record.status)
        return record.meta.status_description or str(record.status)

    def status(self, text: str | None, workflow: str) -> int | None:
        """``--status``: a number, or a member name of the loaded workflow's enum."""
        if text is None:
            return None
        if text.strip().lstrip("-").isdigit():
            return int(text)
        if not self.workflows:
            raise click.BadParameter(
                f"{text!r}: give the status's number, or --app MODULE:ATTR to use its name",
                param_hint="--status",
            )
        if workflow:
            candidates = [self.workflows[workflow]] if workflow in self.workflows else []
        else:
            candidates = list(self.workflows.values())
        found = {
            int(m)
            for wf in candidates
            for m in wf._engine.status_type
            if m.name.lower() == text.strip().lower().replace("-", "_")
        }
        if len(found) != 1:
            known = sorted({m.name for wf in candidates for m in wf._engine.status_type})
            why = "names several statuses: add --workflow" if found else f"is not one of {known}"
            raise click.BadParameter(f"{text!r} {why}", param_hint="--status")
        return found.pop()


@cli.group(cls=Group)
def runs() -> None:
    """List, show and operate runs (no workflow code needed)."""


def _time_option(name: str, what: str) -> Callable[[F], F]:
    return click.option(name, type=TIME, metavar="TIME", help=what)


@runs.command("list", short_help="List runs, with filters and paging.")
@database_options
@click.option("-w", "--workflow", default="", help="Only the runs of this workflow (its name).")
@click.option("--status", help="Only runs at this status: its number (a name with --app).")
@click.option("--run-state", type=RunStateType(), help="Only runs in this run state.")
@click.option("--foreign-id", help="Only the runs of this foreign id.")
@_time_option("--created-after", "Only runs created after TIME.")
@_time_option("--created-before", "Only runs created before TIME.")
@_time_option("--updated-after", "Only runs last changed after TIME.")
@_time_option("--updated-before", "Only runs last changed before TIME.")
@click.option(
    "--field",
    metavar="PATH",
    help="With --value: only runs whose object has VALUE at PATH (dotted keys, e.g. "
    "customer.email; numbers and true/false as written).",
)
@click.option("--value", help="The value of --field.")
@click.option(
    "--paused-by",
    type=PausedByType(),
    help=f"Only paused runs paused for this reason: {', '.join(PAUSED_BY)} (or the full "
    "PausedBy value). Filtered within each page.",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=25, show_default=True)
@click.option("--order", type=click.Choice(["desc", "asc"]), default="desc", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of runs.")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print one JSON object per line.")
@app_option
def runs_list(
    url: str | None,
    schema: str | None,
    workflow: str,
    status: str | None,
    run_state: RunState | None,
    foreign_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    updated_after: datetime | None,
    updated_before: datetime | None,
    field: str | None,
    value: str | None,
    paused_by: str | None,
    offset: int,
    limit: int,
    order: str,
    as_json: bool,
    as_jsonl: bool,
    app: str | None,
) -> None:
    """List runs, newest first: run id, workflow, foreign id, status, run state, version and
    when it last changed."""
    if (field is None) != (value is None):
        raise click.UsageError("--field and --value go together")
    if as_json and as_jsonl:
        raise click.UsageError("give --json or --jsonl, not both")
    if field is not None and (not field or any(not k for k in field.split("."))):
        raise click.BadParameter(f"{field!r} is not dotted keys", param_hint="--field")
    database = Database.of(url, schema)
    names = Names.load(app)
    status_number = names.status(status, workflow)

    async def go() -> list[Record]:
        async with database.store() as store:
            return await Admin(store).runs(
                workflow=workflow,
                status=status_number,
                run_state=run_state,
                foreign_id=foreign_id,
                created_after=created_after,
                created_before=created_before,
                updated_after=updated_after,
                updated_before=updated_before,
                object_field=None if field is None or value is None else (field, value),
                paused_by=paused_by,
                offset=offset,
                limit=limit,
                order="asc" if order == "asc" else "desc",
            )

    found = run_async(go(), database)
    if as_json:
        click.echo(json.dumps([record_json(r, names) for r in found], ensure_ascii=False))
    elif as_jsonl:
        for r in found:
            click.echo(json.dumps(record_json(r, names), ensure_ascii=False))
    elif not found:
        click.echo("no runs", err=True)
    else:
        click.echo(table(found, names))
        if len(found) == limit:
            click.echo(f"(more may follow: --offset {offset + limit})", err=True)


@runs.command("show", short_help="Show a run, its object and its history.")
@database_options
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run and its history as JSON.")
@app_option
def runs_show(
    url: str | None, schema: str | None, run_id: str, as_json: bool, app: str | None
) -> None:
    """Show a run: its record, its object and every version with what it changed."""
    database = Database.of(url, schema)
    names = Names.load(app)

    async def go() -> Any:
        async with database.store() as store:
            return await Admin(store).run(run_id)

    detail = run_async(go(), database)
    if as_json:
        click.echo(json.dumps(detail_json(detail, names), ensure_ascii=False, indent=2))
    else:
        click.echo(detail_text(detail, names))


def _control(verb: str, past: str, short: str, doc: str) -> None:
    def body(url: str | None, schema: str | None, run_id: str, reason: str = "") -> None:
        database = Database.of(url, schema)

        async def go() -> Record:
            async with database.store() as store:
                admin = Admin(store)
                if verb == "resume":
                    return await admin.resume(run_id)
                action = {
                    "pause": admin.pause,
                    "cancel": admin.cancel,
                    "delete-data": admin.delete_data,
                }[verb]
                return await action(run_id, reason)

        record = run_async(go(), database)
        click.echo(
            f"{past} run {record.run_id} ({record.workflow_name}, {record.foreign_id}): "
            f"{record.run_state.name}, version {record.meta.version}"
        )

    body.__doc__ = doc
    cmd: Any = click.option("--reason", default="", help="Why: kept in the run's history.")(body)
    cmd = click.argument("run_id")(cmd)
    cmd = database_options(cmd)
    runs.command(verb, short_help=short)(cmd)


_control(
    "pause",
    "paused",
    "Pause a run.",
    "Pause a run that is running (or initiated): its paused by is operator, so no automatic "
    "retry resumes it.",
)
_control("cancel", "cancelled", "Cancel a run.", "Cancel a run, and its unfinished children.")
_control(
    "delete-data",
    "asked to delete the data of",
    "Delete a finished run's data.",
    "Delete a finished run's data (its object, in every version), and its children's; the "
    "workflow's delete consumer does it.",
)


@runs.command("resume", short_help="Resume a run, or all paused for a reason.")
@database_options
@click.argument("run_id", required=False)
@click.option(
    "--paused-by",
    type=PausedByType(),
    help=f"Resume every run paused for this reason instead: {', '.join(PAUSED_BY)} (or the "
    "full PausedBy value), e.g. a dead letter: --paused-by retries.",
)
@click.option("-w", "--workflow", default="", help="With --paused-by: only this workflow's runs.")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="With --paused-by: resume at most this many.",
)
def runs_resume(
    url: str | None,
    schema: str | None,
    run_id: str | None,
    paused_by: str | None,
    workflow: str,
    limit: int,
) -> None:
    """Resume a paused run, or (--paused-by) every run paused for a reason, oldest first: a
    run whose retries ran out starts a fresh set of attempts."""
    if (run_id is None) == (paused_by is None):
        raise click.UsageError("give a RUN_ID or --paused-by REASON (one of them)")
    if run_id is not None and workflow:
        raise click.UsageError("--workflow goes with --paused-by, not with a RUN_ID")
    database = Database.of(url, schema)
    if run_id is not None:

        async def one() -> Record:
            async with database.store() as store:
                return await Admin(store).resume(run_id)

        record = run_async(one(), database)
        click.echo(
            f"resumed run {record.run_id} ({record.workflow_name}, {record.foreign_id}): "
            f"{record.run_state.name}, version {record.meta.version}"
        )
        return

    async def many() -> list[str]:
        async with database.store() as store:
            return await Admin(store).resume_paused(
                workflow=workflow, paused_by=paused_by, limit=limit
            )

    resumed = run_async(many(), database)
    for rid in resumed:
        click.echo(rid)
    where = f" of {workflow}" if workflow else ""
    click.echo(f"resumed {len(resumed)} runs{where} paused by {paused_by}", err=True)


@runs.command("purge", short_help="Delete old finished runs (retention).")
@database_options
@click.option(
    "--finished-before",
    type=TIME,
    required=True,
    metavar="TIME",
    help="Delete the runs that finished (completed, cancelled, data deleted) before TIME.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Runs deleted per transaction.",
)
def runs_purge(url: str | None, schema: str | None, finished_before: datetime, batch: int) -> None:
    """Retention: delete the runs that finished before a time, with their history and
    timers, a batch per transaction. Unfinished runs are never touched."""
    database = Database.of(url, schema)

    async def go() -> int:
        async with database.store() as store:
            return await Admin(store).purge(finished_before, batch=batch)

    n = run_async(go(), database)
    click.echo(f"purged {n} runs finished before {when(finished_before)}")


# -- graph, serve ---------------------------------------------------------------------------


@cli.command("graph", short_help="Print a workflow's graph as Mermaid.")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("-w", "--workflow", help="Which workflow, when MODULE:ATTR gives several.")
@click.option(
    "--direction",
    type=click.Choice(["LR", "TB", "RL", "BT"]),
    default="LR",
    show_default=True,
    help="Mermaid direction.",
)
def graph(target: str, workflow: str | None, direction: str) -> None:
    """Print a workflow's status graph as Mermaid. MODULE:ATTR is a Workflow, a Builder
    (built on memory adapters), a function returning one (called with no arguments, or with
    memory adapters when it takes streamer, store and roles, like the examples' build), or a
    list of them."""
    found = workflows_of(load(target), target)
    if workflow:
        found = [wf for wf in found if wf.name == workflow]
        if not found:
            raise click.BadParameter(f"{target} has no workflow {workflow!r}", param_hint="-w")
    if len(found) > 1:
        names = ", ".join(repr(wf.name) for wf in found)
        raise click.UsageError(f"{target} gives several workflows ({names}): choose with -w")
    click.echo(mermaid(found[0], direction).rstrip("\n"))


@cli.command("serve", short_help="Serve the HTTP API with uvicorn.")
@click.option(
    "--app",
    "target",
    required=True,
    metavar="MODULE:ATTR",
    help="The ASGI application, e.g. one made by workflow.http.make_app(...).",
)
@click.option("--factory", is_flag=True, help="ATTR is a function of no arguments returning it.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--proxy-headers",
    is_flag=True,
    help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a proxy).",
)
@click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
def serve(
    target: str,
    factory: bool,
    host: str,
    port: int,
    proxy_headers: bool,
    forwarded_allow_ips: str,
    log_level: str,
) -> None:
    """Serve the HTTP API (an ASGI application) with uvicorn. Needs the http extra."""
    missing = [m for m in ("uvicorn",) if find_spec(m) is None]
    if missing:
        raise CommandError(f"serve needs {', '.join(missing)}: {HTTP_EXTRA}")
    import uvicorn  # type: ignore[import-not-found,unused-ignore]

    app = load(target, "--app")
    if factory:
        try:
            app = app()
        except Exception as err:
            raise click.BadParameter(
                f"calling {target} failed: {type(err).__name__}: {err}", param_hint="--app"
            ) from None
    if not callable(app):
        raise click.BadParameter(f"{target} is not an ASGI application", param_hint="--app")
    uvicorn.run(
        app,
        host=host,
        port=port,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
    )


# -- running --------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code. A failure is one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="aioworkflow", standalone_mode=False)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        click.echo(f"Error: {err.format_message().rstrip('.')}{hint}", err=True)
        return err.exit_code
    except click.ClickException as err:
        click.echo(f"Error: {err.format_message()}", err=True)
        return err.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 1
    except Exception as err:
        if os.environ.get("AIOWORKFLOW_TRACEBACK"):
            raise
        text = str(err).strip().splitlines()
        click.echo(
            f"Error: unexpected {type(err).__name__}: {text[0] if text else ''} "
            "(AIOWORKFLOW_TRACEBACK=1 shows the traceback)",
            err=True,
        )
        return 1
    return result if isinstance(result, int) else 0
