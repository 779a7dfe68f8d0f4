"""Shared helpers of the fault tests: worker processes of :mod:`tests.faults.procs_worker`
(started, killed, replaced) on a shared SQL database, and the checks run on the store after a
load (every run completed once, each transition once, the completion hook fired)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow.adapters.sqlschema import records

from ..procs.worker import count_done
from ..test_multiprocess import check_each_transition_once

__all__ = [
    "ROOT",
    "Worker",
    "check_completed_once",
    "hooked_runs",
    "wait_for_db",
]

ROOT = Path(__file__).resolve().parent.parent.parent


class Worker:
    """One ``tests.faults.procs_worker`` OS process; ``ready`` resolves when it runs. A spare
    (``spare=True``) is imported and ``armed`` but starts its workflow only on :meth:`go`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.armed = asyncio.Event()
        self.ready: asyncio.Task[bool] = asyncio.ensure_future(self._ready())

    async def _ready(self) -> bool:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).strip():
            if line == b"armed":
                self.armed.set()
            elif line == b"ready":
                return True
        return False

    @classmethod
    async def spawn(cls, url: str, schema: str | None, *extra: str, spare: bool = False) -> Worker:
        args = [sys.executable, "-m", "tests.faults.procs_worker", "--url", url, "--lease", "1"]
        if schema:
            args += ["--schema", schema]
        if spare:
            args.append("--wait-go")
        proc = await asyncio.create_subprocess_exec(
            *args,
            *extra,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE if spare else None,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        return cls(proc)

    async def go(self) -> None:
        """Start a spare's workflow (it must be armed)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def started(self, timeout: float = 60) -> Worker:
        ok = await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        assert ok, f"worker {self.proc.pid} did not start (exit code {self.proc.returncode})"
        return self

    def alive_and_ready(self) -> bool:
        return self.proc.returncode is None and self.ready.done() and self.ready.result()

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.ready.cancel()

    async def stop(self) -> int:
        """SIGTERM (graceful stop) and the exit code; a process already gone is reported."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        self.ready.cancel()
        return code


async def wait_for_db(engine: AsyncEngine, n: int, what: str, query: str, timeout: float) -> int:
    """Poll the shared database until ``query`` (a count) reaches ``n`` (the work is done by
    other processes: there is no in-process signal to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            got = int(await conn.scalar(sa.text(query)) or 0)
        if got >= n:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"only {got} of {n} {what} in {timeout}s")
        await asyncio.sleep(0.1)


async def hooked_runs(engine: AsyncEngine, n: int, timeout: float) -> int:
    """Wait until the on_complete hook fired for ``n`` distinct runs; return its call count."""
    await wait_for_db(
        engine, n, "runs with a hook call", "SELECT count(DISTINCT run_id) FROM hook_calls", timeout
    )
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT count(*) FROM hook_calls")) or 0)


async def check_completed_once(engine: AsyncEngine, n: int, timeout: float) -> None:
    """Every one of the ``n`` runs completes; none is left in another state; each run's
    history is versions 1..4 with statuses 1..4 and the steps applied once each; the
    completion hook fired at least once for every run (and for no other id)."""
    await wait_for_db(
        engine,
        n,
        "runs completed",
        "SELECT count(*) FROM workflow_records WHERE run_state = 5",
        timeout,
    )
    assert await count_done(engine) == n
    async with engine.connect() as conn:
        states = dict(
            (
                await conn.execute(
                    sa.select(records.c.run_state, sa.func.count()).group_by(records.c.run_state)
                )
            ).all()
        )
    assert states == {5: n}, f"runs not completed (run_state: count): {states}"
    await check_each_transition_once(engine, n)
    calls = await hooked_runs(engine, n, timeout)
    async with engine.connect() as conn:
        strangers = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM hook_calls WHERE run_id NOT IN "
                "(SELECT run_id FROM workflow_records)"
            )
        )
    assert strangers == 0
    assert calls >= n
