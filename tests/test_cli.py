"""The ``aioworkflow`` command line (``workflow.cli``): each command through the real program
(``python -m workflow.cli`` in a subprocess, from a fresh shell: no environment of ours but the
import path) on a SQLite file made by the main example or by runs of a small workflow, and on
PostgreSQL; the filter matrix and the argument errors in-process through the same entry
(``workflow.cli.main``) for speed."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

import workflow.cli as cli_package
from workflow import Builder, PausedBy, Record, RecordNotFoundError, RetryPolicy, Run, RunState
from workflow.adapters.sql import (
    SQLRecordStore,
    SQLRoleScheduler,
    SQLStreamer,
    SQLTimeoutStore,
    make_engine,
)
from workflow.cli import commands as cli_commands
from workflow.cli import main
from workflow.testing import FakeClock, wait_for

from .conftest import PG_URL
from .support import need_service

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 2, 10, 12, 0, tzinfo=UTC)
SCRUBBED = ("AIOWORKFLOW_URL", "AIOWORKFLOW_SCHEMA", "WORKFLOW_DATABASE_URL")
SCRUBBED += ("WORKFLOW_DATABASE_SCHEMA", "AIOWORKFLOW_TRACEBACK")


# -- a small workflow: completes, pauses itself, or fails (a dead letter) -----------------


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    DONE = 2


class Ticket(BaseModel):
    count: int = 0
    note: str = ""


async def handle(run: Run[Ticket, Status]) -> Status | None:
    if run.foreign_id.startswith("bad"):
        raise ConnectionError("mail server down")
    if run.foreign_id.startswith("hold"):
        return await run.pause("wait for a person")
    run.object.count += 1
    run.object.note = f"hello {run.foreign_id}"
    return Status.DONE


def ops_builder() -> Builder[Ticket, Status]:
    """``--app tests.test_cli:ops_builder`` (a function of no arguments returning a Builder)."""
    b = Builder[Ticket, Status]("ops")
    b.add_step(Status.STARTED, handle, Status.DONE).with_options(retry=RetryPolicy(max_attempts=1))
    return b


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``serve --app tests.test_cli:asgi_app``: the smallest ASGI application."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"served by aioworkflow"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Made:
    """The runs made on a database, by foreign id."""

    ids: dict[str, str]


async def make_runs(url: str, schema: str | None = None) -> Made:
    """On a database with the tables: good-1, good-2 completed at T0; at T1 good-3
    completed, bad-1..3 paused by retries and hold-1 paused by its step."""
    kwargs: dict[str, Any] = {}
    if schema:
        kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = make_engine(url, **kwargs)
    clock = FakeClock(T0)
    streamer = SQLStreamer(engine, clock=clock, poll_frequency=0.2)
    roles = SQLRoleScheduler(engine)

    wf = ops_builder().build(
        streamer,
        SQLRecordStore(engine, streamer=streamer),
        roles,
        timeout_store=SQLTimeoutStore(engine, clock=clock),
        clock=clock,
        metrics_registry=CollectorRegistry(),
        pause_retry=None,
    )
    ids: dict[str, str] = {}
    try:
        async with wf:
            for fid in ("good-1", "good-2"):
                ids[fid] = await wf.trigger(fid, initial_value=Ticket(note="new"))
                await wf.await_(fid, ids[fid], Status.DONE, timeout=30)
            clock.set(T1)
            ids["good-3"] = await wf.trigger("good-3")
            await wf.await_("good-3", ids["good-3"], Status.DONE, timeout=30)
            for fid in ("bad-1", "bad-2", "bad-3", "hold-1"):
                ids[fid] = await wf.trigger(fid)
            for fid in ("bad-1", "bad-2", "bad-3", "hold-1"):
                await wait_for(wf, fid, lambda r: r.run_state is RunState.PAUSED, timeout=30)
    finally:
        await roles.close()
        await streamer.close()
        await engine.dispose()
    return Made(ids)


# -- running the program ------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def line(self) -> str:
        """The one line an error is said in (and there is no other)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert "Traceback" not in self.err
        return lines[0]


def shell_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: ours without any of the program's variables, with the
    repository on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def sh(*args: str, cwd: Path | None = None, **env: str) -> Result:
    """``python -m workflow.cli ARGS`` in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "workflow.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=shell_env(**env),
        timeout=120,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same entry in this process: ``cli(*args) -> Result``."""
    for name in SCRUBBED:
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def lookup(url: str, run_id: str) -> Record:
    async def go() -> Record:
        engine = make_engine(url)
        try:
            return await SQLRecordStore(engine).lookup(run_id)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Made]]:
    """A SQLite file made by ``db upgrade`` (a subprocess) and runs of the small workflow."""
    path = tmp_path_factory.mktemp("cli") / "ops.db"
    done = sh("db", "upgrade", "--url", sqlite_url(path))
    assert done.code == 0, done.err
    made = asyncio.run(make_runs(sqlite_url(path)))
    yield path, made


@pytest.fixture
def ops(template: tuple[Path, Made], tmp_path: Path) -> tuple[str, Made]:
    """A copy of the template for one test: (its URL, the runs)."""
    path, made = template
    copy = tmp_path / "ops.db"
    shutil.copy(path, copy)
    return sqlite_url(copy), made


# -- help ---------------------------------------------------------------------------------

COMMANDS = [
    [],
    ["db"],
    ["db", "upgrade"],
    ["db", "current"],
    ["db", "stamp"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "pause"],
    ["runs", "resume"],
    ["runs", "cancel"],
    ["runs", "delete-data"],
    ["runs", "purge"],
    ["graph"],
    ["serve"],
]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "aioworkflow")
def test_every_command_has_help(path: list[str]) -> None:
    result = CliRunner().invoke(cli_commands.cli, [*path, "--help"], prog_name="aioworkflow")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: aioworkflow {' '.join(path)}".rstrip())
    if path in (["runs", "list"], ["db", "upgrade"]):
        assert "AIOWORKFLOW_URL, WORKFLOW_DATABASE_URL" in result.output


def test_the_program_runs_as_a_module_and_prints_its_help() -> None:
    done = sh("--help")
    assert done.code == 0 and done.err == ""
    for name in ("db", "runs", "graph", "serve"):
        assert f"  {name}  " in done.out
    assert sh().out == done.out  # no arguments: the help, too


# -- db -----------------------------------------------------------------------------------


def test_db_upgrade_and_current_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fresh.db")
    missing = sh("db", "current", "--url", url)
    assert missing.code == 1 and "no SQLite database at" in missing.line
    assert not (tmp_path / "fresh.db").exists()  # a read never creates the file
    up = sh("db", "upgrade", "--url", url)
    assert up.code == 0, up.err
    assert up.out.strip() == f"upgraded {url} from none to 0004"
    assert sh("db", "current", "--url", url).out.strip() == "0004 (head)"
    again = sh("db", "upgrade", "--url", url)
    assert again.code == 0 and "is at 0004: nothing to do" in again.out
    nowhere = sh("db", "upgrade", "--url", sqlite_url(tmp_path / "no" / "such" / "x.db"))
    assert nowhere.code == 1 and "directory" in nowhere.line


# -- the main example, from a fresh shell ---------------------------------------------------


@pytest.mark.timeout(300)
def test_the_main_example_from_a_fresh_shell(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.gettingstarted", "--db", "gettingstarted.db"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=shell_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    url = "sqlite+aiosqlite:///gettingstarted.db"  # relative: the working directory's file
    listed = sh("runs", "list", "--url", url, cwd=tmp_path)
    assert listed.code == 0, listed.err
    header, row = listed.out.strip().splitlines()
    assert header.split() == "RUN ID WORKFLOW FOREIGN ID STATUS RUN STATE VERSION UPDATED".split()
    assert "getting started" in row and "andrew" in row and "SHARED_IT" in row
    assert "COMPLETED" in row
    run_id = row.split()[0]
    shown = sh("runs", "show", run_id, cwd=tmp_path, AIOWORKFLOW_URL=url)  # from the environment
    assert shown.code == 0, shown.err
    assert '"shared_it": true' in shown.out  # the object, pretty JSON
    assert "history (5 versions):" in shown.out
    assert "read_the_docs: false -> true" in shown.out
    # the example makes its tables with create_schema: no revision until stamped
    current = sh("db", "current", "--url", url, cwd=tmp_path)
    assert current.out.startswith("none (tables made without the migrations")
    refused = sh("db", "upgrade", "--url", url, cwd=tmp_path)
    assert refused.code == 1 and "db stamp" in refused.line
    assert sh("db", "stamp", "--url", url, cwd=tmp_path).code == 0
    assert sh("db", "current", "--url", url, cwd=tmp_path).out.strip() == "0004 (head)"
    again = sh("db", "stamp", "--url", url, cwd=tmp_path)
    assert again.code == 1 and "use db upgrade" in again.line
    graph = sh("graph", "examples.gettingstarted:build", cwd=tmp_path)
    assert graph.code == 0, graph.err
    assert "stateDiagram-v2" in graph.out and "4 --> 5" in graph.out


def test_the_url_comes_from_the_flag_then_the_environment(
    ops: tuple[str, Made], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, made = ops
    wrong = url.replace("ops.db", "elsewhere.db")

    def first() -> str:
        done = cli("runs", "list", "--jsonl", "--limit", "1", "--order", "asc")
        assert done.code == 0, done.err
        return str(json.loads(done.out)["foreign_id"])

    monkeypatch.setenv("WORKFLOW_DATABASE_URL", url)  # the migrations' variable: a fallback
    assert first() == "good-1"
    monkeypatch.setenv("WORKFLOW_DATABASE_URL", wrong)
    monkeypatch.setenv("AIOWORKFLOW_URL", url)  # wins over it
    assert first() == "good-1"
    monkeypatch.setenv("AIOWORKFLOW_URL", wrong)
    done = cli("runs", "list", "--url", url, "--jsonl")  # and --url over both
    assert done.code == 0 and len(done.out.splitlines()) == len(made.ids)
    assert "no SQLite database at" in cli("runs", "list").line


# -- runs list ------------------------------------------------------------------------------


def ids_of(result: Result, made: Made) -> list[str]:
    assert result.code == 0, result.err
    by_id = {v: k for k, v in made.ids.items()}
    return [by_id[json.loads(line)["run_id"]] for line in result.out.splitlines()]


def test_list_filters_paging_and_json(ops: tuple[str, Made], cli: Any) -> None:
    url, made = ops

    def listed(*args: str) -> list[str]:
        return ids_of(cli("runs", "list", "--url", url, "--jsonl", *args), made)

    newest_first = ["hold-1", "bad-3", "bad-2", "bad-1", "good-3", "good-2", "good-1"]
    assert listed() == newest_first
    assert listed("--workflow", "ops") == newest_first
    assert listed("-w", "other") == []
    assert listed("--status", "2") == ["good-3", "good-2", "good-1"]
    assert listed("--status", "done", "--app", "tests.test_cli:ops_builder") == [
        "good-3",
        "good-2",
        "good-1",
    ]
    assert listed("--run-state", "paused") == ["hold-1", "bad-3", "bad-2", "bad-1"]
    assert listed("--run-state", "COMPLETED", "--order", "asc") == ["good-1", "good-2", "good-3"]
    assert listed("--run-state", "5") == ["good-3", "good-2", "good-1"]
    assert listed("--paused-by", "retries") == ["bad-3", "bad-2", "bad-1"]
    assert listed("--paused-by", "step") == ["hold-1"]
    assert listed("--paused-by", "retries exhausted", "--run-state", "paused") == [
        "bad-3",
        "bad-2",
        "bad-1",
    ]
    assert listed("--foreign-id", "good-2") == ["good-2"]
    assert listed("--created-before", "2026-02-01") == ["good-2", "good-1"]
    assert listed("--created-after", "2026-02-01T00:00:00Z", "--status", "1") == [
        "hold-1",
        "bad-3",
        "bad-2",
        "bad-1",
    ]
    assert listed("--updated-after", "2026-01-10T11:00:00", "--updated-before", "2026-01-11") == [
        "good-2",
        "good-1",
    ]  # a time without a timezone is UTC
    assert listed("--updated-before", "2026-01-10T12:00:00+01:00") == []  # 11:00 UTC
    assert listed("--field", "note", "--value", "hello good-1") == ["good-1"]
    assert listed("--field", "count", "--value", "1") == ["good-3", "good-2", "good-1"]
    assert listed("--field", "count", "--value", "0", "-w", "ops") == newest_first[:4]
    # paging
    assert listed("--limit", "2") == ["hold-1", "bad-3"]
    assert listed("--limit", "2", "--offset", "2") == ["bad-2", "bad-1"]
    assert listed("--limit", "3", "--offset", "6") == ["good-1"]
    assert listed("--offset", "7") == []
    page = cli("runs", "list", "--url", url, "--limit", "2")
    assert page.err.strip() == "(more may follow: --offset 2)"
    # the table, with the status names stored with each version
    table = cli("runs", "list", "--url", url, "--foreign-id", "good-1")
    _, row = table.out.strip().splitlines()
    assert row.split() == [
        *(made.ids["good-1"], "ops", "good-1", "DONE", "COMPLETED", "2"),
        *("2026-01-10", "12:00:00Z"),
    ]
    assert cli("runs", "list", "--url", url, "-w", "nothing").err.strip() == "no runs"
    # a JSON array
    arr = json.loads(cli("runs", "list", "--url", url, "--json", "--foreign-id", "bad-1").out)
    assert len(arr) == 1
    bad = arr[0]
    assert bad["run_id"] == made.ids["bad-1"] and bad["workflow"] == "ops"
    assert bad["status"] == 1 and bad["status_name"] == "STARTED"
    assert bad["run_state"] == "PAUSED" and bad["meta"]["paused_by"] == "retries exhausted"
    assert bad["object"] == {"count": 0, "note": ""}
    assert bad["created_at"] == "2026-02-10T12:00:00Z"


def test_show_prints_the_record_the_object_and_every_change(ops: tuple[str, Made]) -> None:
    url, made = ops
    text = sh("runs", "show", made.ids["good-1"], "--url", url)
    assert text.code == 0, text.err
    out = text.out
    assert f"run id      {made.ids['good-1']}" in out
    assert "status      DONE (2)" in out and "run state   COMPLETED" in out
    assert '  "note": "hello good-1"' in out
    assert "history (2 versions):" in out
    assert '      note = "new"' in out  # the first version: what it was created with
    assert "      count: 0 -> 1" in out
    assert '      note: "new" -> "hello good-1"' in out
    as_json = sh("runs", "show", made.ids["bad-1"], "--url", url, "--json")
    data = json.loads(as_json.out)
    assert data["run_state"] == "PAUSED" and data["meta"]["attempt"] == 1
    assert [v["version"] for v in data["history"]] == [1, 2]
    assert data["history"][1]["run_state"] == "PAUSED"
    assert data["history"][1]["changes"] == []
    missing = sh("runs", "show", str(uuid.uuid4()), "--url", url)
    assert missing.code == 1 and missing.line.startswith("Error: no run with id")


# -- run-state changes ------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_pause_resume_cancel_and_delete_data_change_the_database(
    ops: tuple[str, Made], cli: Any
) -> None:
    url, made = ops
    bad1, bad2, good1 = made.ids["bad-1"], made.ids["bad-2"], made.ids["good-1"]
    resumed = sh("runs", "resume", bad1, "--url", url)
    assert resumed.code == 0, resumed.err
    assert resumed.out.strip() == f"resumed run {bad1} (ops, bad-1): RUNNING, version 3"
    r = lookup(url, bad1)
    assert r.run_state is RunState.RUNNING and r.meta.attempt == 1 and r.meta.paused_by == ""
    paused = sh("runs", "pause", bad1, "--reason", "look first", "--url", url)
    assert paused.code == 0, paused.err
    r = lookup(url, bad1)
    assert r.run_state is RunState.PAUSED and r.meta.paused_by == PausedBy.OPERATOR
    assert r.meta.run_state_reason == "look first"
    cancelled = sh("runs", "cancel", bad2, "--reason", "not worth it", "--url", url)
    assert cancelled.code == 0, cancelled.err
    r = lookup(url, bad2)
    assert r.run_state is RunState.CANCELLED and r.meta.run_state_reason == "not worth it"
    deleted = sh("runs", "delete-data", good1, "--reason", "GDPR", "--url", url)
    assert deleted.code == 0, deleted.err
    assert lookup(url, good1).run_state is RunState.REQUESTED_DATA_DELETED
    # refused moves: one line, exit 1, nothing changed
    again = cli("runs", "resume", made.ids["good-3"], "--url", url)
    assert again.code == 1 and "good-3" not in again.out
    assert again.line.startswith("Error: ") and "Completed" in again.line
    assert lookup(url, made.ids["good-3"]).run_state is RunState.COMPLETED
    gone = cli("runs", "pause", "no-such-run", "--url", url)
    assert gone.code == 1 and gone.line == "Error: no run with id 'no-such-run'"


def test_bulk_resume_replays_the_runs_paused_by_retries(ops: tuple[str, Made]) -> None:
    url, made = ops
    done = sh("runs", "resume", "--paused-by", "retries", "--workflow", "ops", "--url", url)
    assert done.code == 0, done.err
    bad = [made.ids[f"bad-{i}"] for i in (1, 2, 3)]
    assert done.out.split() == bad  # oldest first
    assert done.err.strip() == "resumed 3 runs of ops paused by retries exhausted"
    for rid in bad:
        r = lookup(url, rid)
        assert r.run_state is RunState.RUNNING and r.meta.attempt == 1
    assert lookup(url, made.ids["hold-1"]).run_state is RunState.PAUSED  # paused by its step
    nothing = sh("runs", "resume", "--paused-by", "retries", "-w", "ops", "--url", url)
    assert nothing.code == 0 and nothing.out == ""


def test_purge_removes_only_old_finished_runs_in_batches(ops: tuple[str, Made]) -> None:
    url, made = ops
    done = sh("runs", "purge", "--finished-before", "2026-02-01", "--batch", "1", "--url", url)
    assert done.code == 0, done.err
    assert done.out.strip() == "purged 2 runs finished before 2026-02-01 00:00:00Z"
    for fid in ("good-1", "good-2"):
        with pytest.raises(RecordNotFoundError):
            lookup(url, made.ids[fid])
        assert sh("runs", "show", made.ids[fid], "--url", url).code == 1  # history too
    left = sh("runs", "list", "--url", url, "--jsonl")
    assert sorted(ids_of(left, made)) == ["bad-1", "bad-2", "bad-3", "good-3", "hold-1"]


# -- graph and serve --------------------------------------------------------------------------


def test_graph_prints_mermaid_of_a_workflow_a_builder_or_a_factory(cli: Any) -> None:
    done = sh("graph", "tests.test_cli:ops_builder", "--direction", "TB")
    assert done.code == 0, done.err
    assert "stateDiagram-v2" in done.out and "direction TB" in done.out and "1 --> 2" in done.out
    built = cli("graph", "tests.test_cli:BUILDER")
    assert built.code == 0 and "1 --> 2" in built.out
    several = cli("graph", "tests.test_cli:SEVERAL")
    assert several.code == 2 and "choose with -w" in several.line
    one = cli("graph", "tests.test_cli:SEVERAL", "-w", "ops")
    assert one.code == 0 and "Workflow diagram of ops" in one.out
    assert cli("graph", "tests.test_cli:nothing").code == 2
    not_one = cli("graph", "tests.test_cli:Ticket")
    assert not_one.code == 2 and "not a Workflow, a Builder" in not_one.line


BUILDER = ops_builder()
SEVERAL = [ops_builder(), Builder[Ticket, Status]("other")]
SEVERAL[1].add_step(Status.STARTED, handle, Status.DONE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_runs_an_asgi_app_with_uvicorn() -> None:
    pytest.importorskip("uvicorn", reason="serve needs the http extra (uvicorn)")
    port = free_port()
    args = ["serve", "--app", "tests.test_cli:asgi_app", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workflow.cli", *args, "--log-level", "warning"],
        cwd=REPO,
        env=shell_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    assert resp.read() == b"served by aioworkflow"
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then ends by the signal it was sent (or returns)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err


def test_serve_without_the_http_extra_says_what_to_install(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cli_commands.find_spec
    monkeypatch.setattr(
        cli_commands, "find_spec", lambda name: None if name == "uvicorn" else real(name)
    )
    done = cli("serve", "--app", "tests.test_cli:asgi_app")
    assert done.code == 1
    assert done.line == 'Error: serve needs uvicorn: pip install "aioworkflow[http]"'


def test_without_click_the_program_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = cli_package.find_spec
    monkeypatch.setattr(
        cli_package, "find_spec", lambda name: None if name == "click" else real(name)
    )
    assert main(["--help"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        'Error: the aioworkflow command line needs click: pip install "aioworkflow[cli]"'
    )


# -- bad arguments ----------------------------------------------------------------------------


def test_bad_arguments_say_one_line_and_exit_non_zero(ops: tuple[str, Made], cli: Any) -> None:
    url, _ = ops
    # through the real program: usage errors exit 2, failed operations 1, no traceback
    unknown = sh("frobnicate")
    assert unknown.code == 2
    assert unknown.line == "Error: No such command 'frobnicate' (see 'aioworkflow --help')"
    no_url = sh("runs", "list")
    assert no_url.code == 2 and "give --url or set $AIOWORKFLOW_URL" in no_url.line
    bad_date = sh("runs", "list", "--url", url, "--created-after", "2026-13-45")
    assert bad_date.code == 2 and "'2026-13-45' is not an ISO 8601 date" in bad_date.line
    bad_id = sh("runs", "cancel", "not-a-run", "--url", url)
    assert bad_id.code == 1 and bad_id.line == "Error: no run with id 'not-a-run'"
    # the rest in this process, through the same entry
    cases: list[tuple[list[str], int, str]] = [
        (["runs", "frob"], 2, "No such command 'frob'"),
        (["runs", "list", "--url", url, "--limit", "0"], 2, "--limit"),
        (["runs", "list", "--url", url, "--run-state", "sleeping"], 2, "is not a run state"),
        (["runs", "list", "--url", url, "--paused-by", "tired"], 2, "'retries'"),
        (["runs", "list", "--url", url, "--status", "DONE"], 2, "--app MODULE:ATTR"),
        (["runs", "list", "--url", url, "--field", "note"], 2, "--field and --value go"),
        (["runs", "list", "--url", url, "--json", "--jsonl"], 2, "not both"),
        (["runs", "list", "--url", "mysql://db/x"], 2, "unsupported database 'mysql'"),
        (["runs", "show", "--url", url], 2, "Missing argument 'RUN_ID'"),
        (["runs", "resume", "--url", url], 2, "give a RUN_ID or --paused-by"),
        (["runs", "resume", "x", "--paused-by", "retries", "--url", url], 2, "one of them"),
        (["runs", "purge", "--url", url], 2, "Missing option '--finished-before'"),
        (["runs", "purge", "--url", url, "--finished-before", "soon"], 2, "ISO 8601"),
        (["runs", "purge", "--url", url, "--finished-before", "1d", "--batch", "0"], 2, "batch"),
        (["runs", "list", "--url", "/no/such/dir/x.db"], 1, "no SQLite database at"),
        (["graph", "no_such_module:x"], 2, "cannot import no_such_module"),
        (["graph", "examples.gettingstarted"], 2, "is not MODULE:ATTR"),
        (["serve"], 2, "Missing option '--app'"),
    ]
    for args, code, text in cases:
        done = cli(*args)
        assert (done.code, text in done.line) == (code, True), (args, done)


def test_an_unreachable_database_is_named_without_its_password(cli: Any) -> None:
    port = free_port()  # nothing listens there
    done = cli("runs", "list", "--url", f"postgresql://ops:s3cret@127.0.0.1:{port}/app")
    assert done.code == 1
    assert done.line.startswith(
        f"Error: cannot reach the database postgresql+asyncpg://ops:***@127.0.0.1:{port}/app: "
    )
    assert "s3cret" not in done.err


def test_a_database_without_the_tables_is_refused_with_what_to_run(
    tmp_path: Path, cli: Any
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    done = cli("runs", "list", "--url", str(path))  # a plain path is a SQLite file
    assert done.code == 1
    assert "does not have the workflow schema" in done.line
    assert f"aioworkflow db upgrade --url sqlite+aiosqlite:///{path}" in done.line


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture
def pg_schema_url() -> Iterator[tuple[str, str]]:
    """(URL, a fresh schema on the test server), dropped afterwards."""
    url = need_service(PG_URL, "PostgreSQL tests need WORKFLOW_TEST_POSTGRES_URL")
    schema = f"cli_{uuid.uuid4().hex[:12]}"

    async def ddl(statement: str) -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.exec_driver_sql(statement)
        await engine.dispose()

    asyncio.run(ddl(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url, schema
    finally:
        asyncio.run(ddl(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.mark.timeout(300)
def test_postgres_upgrade_list_by_object_field_show_and_operate(
    pg_schema_url: tuple[str, str], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, schema = pg_schema_url
    env = {"AIOWORKFLOW_URL": url, "AIOWORKFLOW_SCHEMA": schema}
    up = sh("db", "upgrade", **env)
    assert up.code == 0, up.err
    assert sh("db", "current", **env).out.strip() == "0004 (head)"
    made = asyncio.run(make_runs(url, schema))

    field = sh("runs", "list", "--field", "note", "--value", "hello good-2", "--jsonl", **env)
    assert ids_of(field, made) == ["good-2"]
    counted = sh("runs", "list", "--field", "count", "--value", "1", "--jsonl", **env)
    assert ids_of(counted, made) == ["good-3", "good-2", "good-1"]
    shown = sh("runs", "show", made.ids["good-2"], **env)
    assert shown.code == 0 and "count: 0 -> 1" in shown.out
    bulk = sh("runs", "resume", "--paused-by", "retries", **env)
    assert bulk.code == 0 and len(bulk.out.split()) == 3
    # the rest in this process: --schema on the command line, the URL from the older variable
    monkeypatch.setenv("WORKFLOW_DATABASE_URL", url)
    pg = ("--schema", schema)
    dated = cli("runs", "list", *pg, "--created-after", "2026-02-01", "--run-state", "running",
                "--jsonl", "--limit", "2", "--offset", "1")  # fmt: skip
    assert ids_of(dated, made) == ["bad-2", "bad-1"]
    assert cli("runs", "pause", made.ids["bad-1"], "--reason", "wait", *pg).code == 0
    assert cli("runs", "cancel", made.ids["bad-2"], *pg).code == 0
    assert cli("runs", "delete-data", made.ids["good-3"], *pg).code == 0
    states = {
        json.loads(line)["foreign_id"]: json.loads(line)["run_state"]
        for line in cli("runs", "list", "--jsonl", *pg).out.splitlines()
    }
    assert states == {
        "good-1": "COMPLETED",
        "good-2": "COMPLETED",
        "good-3": "REQUESTED_DATA_DELETED",
        "bad-1": "PAUSED",
        "bad-2": "CANCELLED",
        "bad-3": "RUNNING",
        "hold-1": "PAUSED",
    }
    purged = sh("runs", "purge", "--finished-before", "2026-01-20", "--batch", "1", **env)
    assert purged.out.startswith("purged 2 runs"), purged.err
    assert len(cli("runs", "list", "--jsonl", *pg).out.splitlines()) == 5
    # a schema without the tables: refused, with what to run
    empty = cli("runs", "list", "--url", url, "--schema", f"{schema}_none")
    assert empty.code == 1 and "aioworkflow db upgrade" in empty.line
