"""The database restarts under load: a throwaway PostgreSQL of the test's own (initdb as in
``.ci/services.sh`` ``postgres_up``, on a free port, run as the ``postgres`` user) serves a
worker process; mid-load the server is stopped (``pg_ctl stop -m fast``: every connection is
closed), kept down ~2 s and started again. The worker must reconnect by itself, and every run
completes with each transition applied once and its completion hook fired.

Skipped locally when not root or without a PostgreSQL installation; fails in CI then.
The data directory lives in a fresh directory under /tmp rather than ``tmp_path`` because the
``postgres`` user cannot enter pytest's (mode 0700) base directory.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from workflow.adapters.sqlschema import create_schema, make_engine

from ..procs.worker import build, count_done
from .conftest import Worker, check_completed_once
from .procs_worker import HOOK_TABLE

RUNS = 300


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


async def _sh(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"{args}: {out.decode()}"


class Server:
    """One throwaway PostgreSQL server: ``stop()`` and ``start()`` it as often as needed."""

    def __init__(self, bindir: str, base: str) -> None:
        self.bindir, self.base = bindir, base
        self.data = os.path.join(base, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", os.path.join(self.bindir, tool), *args]

    async def init(self) -> None:
        await _sh(
            *self._as_postgres("initdb", "-D", self.data, "-U", "postgres", "--auth=trust"),
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    async def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off"
        log = os.path.join(self.base, "server.log")
        await _sh(
            *self._as_postgres(
                "pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60", "-o", opts, "start"
            )
        )

    async def stop(self, mode: str = "fast") -> None:
        await _sh(*self._as_postgres("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if os.geteuid() != 0 or not bins or not shutil.which("runuser"):
        _skip_or_fail("the database-restart test needs root and a local PostgreSQL (initdb)")
    base = tempfile.mkdtemp(prefix="workflow-pgrestart.")
    os.chmod(base, 0o755)
    shutil.chown(base, "postgres", "postgres")
    srv = Server(os.path.dirname(bins[-1]), base)
    try:
        await srv.init()
        await srv.start()
    except AssertionError as e:
        shutil.rmtree(base, ignore_errors=True)
        _skip_or_fail(f"the throwaway PostgreSQL did not start: {e}")
    try:
        yield srv
    finally:
        try:
            await srv.stop("immediate")
        finally:
            shutil.rmtree(base, ignore_errors=True)


async def test_workers_reconnect_after_a_database_restart(server: Server) -> None:
    """The worker's engine is a plain pool (no ``pool_pre_ping``, as in production code that
    calls ``make_engine(url)``): it recovers without it, so ``--pre-ping`` was not needed."""
    engine = make_engine(server.url)
    await create_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.text(HOOK_TABLE))
    worker = await Worker.spawn(server.url, None)
    try:
        await worker.started()
        wf, streamer, roles = build(engine, registry=CollectorRegistry())
        for i in range(RUNS):
            await wf.trigger(f"order-{i}")  # a producer-only process
        await streamer.close()
        await roles.close()
        while await count_done(engine) < RUNS // 10:
            assert worker.proc.returncode is None, "the worker died before the restart"
            await asyncio.sleep(0.05)
        await engine.dispose()  # the test's own connections die with the server
        await server.stop("fast")
        await asyncio.sleep(2)  # the database is down for a while
        await server.start()
        done = await count_done(engine)
        assert done < RUNS, "the load finished before the restart; raise RUNS"
        await check_completed_once(engine, RUNS, timeout=60)
        assert worker.proc.returncode is None, "the worker process died"
    finally:
        code = await worker.stop()
        await engine.dispose()
    assert code == 0
