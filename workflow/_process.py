"""Background processes: role-guarded supervision, error backoff and the generic consume loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._adapters import Ack
from ._errors import StepInterruptedError
from ._record import Event, Header
from ._runstate import State
from ._usercode import is_user_error, mark_user_error

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = [
    "ErrorCounter",
    "MemErrorCounter",
    "Process",
    "consume",
    "event_foreign_id",
    "event_time",
    "inside",
    "shard_of",
]


class ErrorCounter(Protocol):
    """Counts consecutive errors of one run in one process (for ``pause_after_err_count``)."""

    def add(self, process: str, run_id: str) -> int:
        """Count one more error and return the count."""
        ...

    def clear(self, process: str, run_id: str) -> None:
        """Forget the run's count (after a success or a pause)."""
        ...


class MemErrorCounter:
    """The default counter: in memory, entries removed on success, so it does not grow."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, process: str, run_id: str) -> int:
        key = (process, run_id)
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n

    def clear(self, process: str, run_id: str) -> None:
        self._counts.pop((process, run_id), None)

    def __len__(self) -> int:
        return len(self._counts)


inside: contextvars.ContextVar[Any] = contextvars.ContextVar("workflow_inside", default=None)
"""The workflow whose background process runs the current task (None outside of them)."""


def shard_of(key: str, shards: int) -> int:
    """The shard (0-based) that owns ``key``: a stable hash, identical in every process."""
    return zlib.crc32(key.encode()) % shards


class Process:
    """One named background process, run under its role, restarted after errors."""

    def __init__(
        self,
        wf: Engine[Any, Any],
        name: str,
        role: str,
        body: Callable[[Process], Coroutine[Any, Any, None]],
        err_backoff: timedelta,
    ) -> None:
        self.wf = wf
        self.name = name
        self.role = role
        self.body = body
        self.err_backoff = err_backoff
        self.state = State.UNKNOWN
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self._gauge = wf.metrics.process_states.labels(wf.name, name)
        self.errors = wf.metrics.process_errors.labels(wf.name, name)
        self.latency = wf.metrics.process_latency.labels(wf.name, name)
        self.lag_gauge = wf.metrics.process_lag.labels(wf.name, name)
        self.lag_alert_gauge = wf.metrics.process_lag_alert.labels(wf.name, name)
        self._skips: dict[str, Any] = {}
        self._last_error = ""
        self._last_logged = 0.0
        self._repeats = 0
        self.set_state(State.IDLE)

    @property
    def stopping(self) -> bool:
        return self.wf.stopping

    def set_state(self, state: State) -> None:
        self.state = state
        self._gauge.set(int(state))

    def skip(self, reason: str) -> None:
        c = self._skips.get(reason)
        if c is None:
            c = self._skips[reason] = self.wf.metrics.process_skipped.labels(
                self.wf.name, self.name, reason
            )
        c.inc()

    def start(self) -> None:
        self.set_state(State.IDLE)
        self.task = asyncio.create_task(self._supervise(), name=f"workflow:{self.name}")

    async def _supervise(self) -> None:
        wf = self.wf
        inside.set(wf)  # seen by every task this process starts (user code included)
        failures = 0  # consecutive role scheduler errors
        logged_at = 0.0
        try:
            while not self.stopping:
                self.set_state(State.IDLE)
                try:
                    lease = await wf.roles.await_role(self.role)
                except Exception as err:
                    # An outage fails every attempt: the first one is logged with its
                    # traceback, then one line every ROLE_ERROR_LOG_EVERY seconds.
                    failures += 1
                    now = time.monotonic()
                    if failures == 1:
                        wf.log.error(
                            "role scheduler error", exc=True, role=self.role, process=self.name
                        )
                        logged_at = now
                    elif now - logged_at >= ROLE_ERROR_LOG_EVERY:
                        wf.log.error(
                            f"role scheduler still failing ({failures} attempts): {err!r}",
                            role=self.role,
                            process=self.name,
                        )
                        logged_at = now
                    self.errors.inc()
                    await self._backoff(err)
                    continue
                if failures:
                    wf.log.info(
                        f"role scheduler recovered after {failures} failed attempts",
                        role=self.role,
                        process=self.name,
                    )
                    failures = 0
                error: BaseException | None = None
                finished = False
                body = asyncio.create_task(self.body(self))
                lost = asyncio.create_task(lease.wait_lost())
                try:
                    self.set_state(State.RUNNING)
                    await asyncio.wait({body, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    if not body.done():
                        body.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await body
                    elif body.cancelled():
                        # Nobody here cancelled it (a stop or a lost role cancels it above):
                        # user code cancelled its own task. An error like any other.
                        error = mark_user_error(
                            StepInterruptedError(
                                f"process {self.name} was cancelled from inside (user code "
                                "cancelled its own task); restarting it after the backoff"
                            )
                        )
                    else:
                        error = body.exception()
                        finished = error is None
                    await lease.release()
                if error is not None:
                    if not error.__dict__.get("_workflow_logged"):
                        self._log_error(error)
                    self.errors.inc()
                    await self._backoff(error)
                elif finished:
                    return  # the body saw the stop request and returned
        finally:
            self.busy = False
            self.set_state(State.SHUTDOWN)

    def _log_error(self, error: BaseException) -> None:
        """A process error (not a run's: those are logged with the run). The same error again
        (an outage) is logged at most once every ``ROLE_ERROR_LOG_EVERY`` seconds, with the
        number of repeats left out in between."""
        text = f"{type(error).__name__}: {error}"
        now = time.monotonic()
        if text == self._last_error and now - self._last_logged < ROLE_ERROR_LOG_EVERY:
            self._repeats += 1
            return
        repeats = (
            f" (the previous error repeated {self._repeats} more times)" if self._repeats else ""
        )
        self._last_error, self._last_logged, self._repeats = text, now, 0
        self.wf.log.error(
            f"run error [role={self.role}], [process={self.name}]: {error!r}{repeats}",
            role=self.role,
            process=self.name,
        )

    async def _backoff(self, error: BaseException) -> None:
        """Wait ``err_backoff`` before the next try: on the workflow's clock after an error of
        user code (a hook, connector or delete function: business time, which a test's fake
        clock steps), in real time after any other (the database or broker failed: it
        recovers in real time, also while a test's fake clock stands still)."""
        if self.err_backoff <= timedelta(0):
            await asyncio.sleep(0)  # no backoff still lets the event loop run (no busy loop)
            return
        if is_user_error(error):
            clock = self.wf.clock
            await clock.sleep_until(clock.now() + self.err_backoff)
        else:
            await asyncio.sleep(self.err_backoff.total_seconds())

    async def stop(self, deadline: float) -> None:
        """Let the event in hand finish until ``deadline`` (monotonic), then cancel."""
        task = self.task
        if task is None or task.done():
            self.set_state(State.SHUTDOWN)
            return
        if self.busy:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), remaining)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self.set_state(State.SHUTDOWN)


X = TypeVar("X")

ROLE_ERROR_LOG_EVERY = 30.0
"""Seconds between two log lines of a role scheduler that keeps failing (an outage)."""


async def consume(
    proc: Process,
    recv: Callable[[], Awaitable[tuple[X, Ack]]],
    handle: Callable[[X], Awaitable[None]],
    *,
    created_at: Callable[[X], datetime],
    shard_key: Callable[[X], str] | None = None,
    shard: tuple[int, int] | None = None,
    accept: Callable[[X], bool] | None = None,
    lag: timedelta = timedelta(0),
    lag_alert: timedelta = timedelta(0),
    before: Callable[[X], Awaitable[None]] | None = None,
    concurrency: int = 1,
    run_key: Callable[[X], str] | None = None,
    ready: Callable[[int], list[tuple[X, Ack]]] | None = None,
) -> None:
    """Receive, wait out the lag, filter, handle, ack — until the workflow stops.

    ``before`` runs outside the in-flight window (a long wait there does not hold up
    ``stop()``). An exception from ``handle`` leaves the item unacknowledged and ends the
    attempt; the supervisor backs off and a new receiver delivers the same item again.
    With ``concurrency > 1`` up to that many items are handled at once (see
    :func:`_consume_concurrently`).
    """
    if concurrency > 1:
        await _consume_concurrently(
            proc,
            recv,
            handle,
            created_at=created_at,
            keep=_keep(shard_key, shard, accept),
            lag=lag,
            lag_alert=lag_alert,
            limit=concurrency,
            run_key=run_key,
            ready=ready,
        )
        return
    clock = proc.wf.clock
    alert_s = lag_alert.total_seconds()
    lagged = lag > timedelta(0)
    keep = _keep(shard_key, shard, accept)
    next_gauge = 0.0
    while not proc.stopping:
        item, ack = await recv()
        if not keep(item):
            await ack()
            proc.skip("filtered out")
            continue
        if lagged:
            await clock.sleep_until(created_at(item) + lag)
        # The lag gauges are refreshed at most ten times a second: cheap on the hot path,
        # still current for anyone scraping.
        if time.monotonic() >= next_gauge:
            next_gauge = time.monotonic() + 0.1
            lag_s = (clock.now() - created_at(item)).total_seconds()
            proc.lag_gauge.set(lag_s)
            if alert_s > 0:
                proc.lag_alert_gauge.set(1 if lag_s > alert_s else 0)
        if before is not None:
            await before(item)
        proc.busy = True
        try:
            t0 = time.perf_counter()
            await handle(item)
            await ack()
            proc.latency.observe(time.perf_counter() - t0)
        finally:
            proc.busy = False


def _keep(
    shard_key: Callable[[X], str] | None,
    shard: tuple[int, int] | None,
    accept: Callable[[X], bool] | None,
) -> Callable[[X], bool]:
    shard_index, shards = shard if shard is not None else (0, 1)
    key = shard_key if shards > 1 else None

    def keep(item: X) -> bool:
        if key is not None and shard_of(key(item), shards) != shard_index:
            return False
        return accept is None or accept(item)

    return keep


async def _consume_concurrently(
    proc: Process,
    recv: Callable[[], Awaitable[tuple[X, Ack]]],
    handle: Callable[[X], Awaitable[None]],
    *,
    created_at: Callable[[X], datetime],
    keep: Callable[[X], bool],
    lag: timedelta,
    lag_alert: timedelta,
    limit: int,
    run_key: Callable[[X], str] | None,
    ready: Callable[[int], list[tuple[X, Ack]]] | None,
) -> None:
    """Handle up to ``limit`` items at once, acknowledging strictly in order. After each
    item received, the items the receiver already holds (``ready``) are started with it, in
    the same turn of the event loop: their lookups and writes go to a store that batches
    concurrent calls together.

    Items are acked only once every earlier item is done, so the durable cursor never
    passes an unfinished item: after a crash or an error everything from the first
    unfinished item on is delivered again (and the version check skips what was already
    applied). Items of one run (``run_key``) are handled one after another. The first error
    stops the attempt: nothing after the failed item is acked.
    """
    clock = proc.wf.clock
    alert_s = lag_alert.total_seconds()
    window: deque[tuple[Ack, asyncio.Future[None]]] = deque()
    by_run: dict[str, asyncio.Future[None]] = {}
    reading: asyncio.Task[tuple[X, Ack]] | None = None

    async def run(item: X, after: asyncio.Future[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        t0 = time.perf_counter()
        await handle(item)
        proc.latency.observe(time.perf_counter() - t0)

    async def admit(item: X, ack: Ack) -> None:
        if not keep(item):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            window.append((ack, done))
            proc.skip("filtered out")
            return
        if lag > timedelta(0):
            await clock.sleep_until(created_at(item) + lag)
        lag_s = (clock.now() - created_at(item)).total_seconds()
        proc.lag_gauge.set(lag_s)
        if alert_s > 0:
            proc.lag_alert_gauge.set(1 if lag_s > alert_s else 0)
        key = run_key(item) if run_key is not None else None
        previous = by_run.get(key) if key is not None else None
        task = asyncio.ensure_future(run(item, previous))
        if key is not None:
            by_run[key] = task
            task.add_done_callback(_forget(by_run, key))
        window.append((ack, task))

    try:
        while True:
            while window and window[0][1].done():  # ack the finished prefix, in order
                ack, fut = window.popleft()
                fut.result()  # the first error ends the attempt, unacknowledged
                await ack()
            proc.busy = bool(window)
            if proc.stopping and not window:
                return
            waits: set[asyncio.Future[Any]] = {fut for _, fut in window if not fut.done()}
            if len(window) < limit and not proc.stopping:
                if reading is None:
                    reading = asyncio.ensure_future(recv())
                waits.add(reading)
            if waits:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if reading is None or not reading.done():
                continue
            item, ack = reading.result()
            reading = None
            await admit(item, ack)
            if ready is not None:  # the events already in hand: started together
                for item, ack in ready(limit - len(window)):
                    await admit(item, ack)
    finally:
        if reading is not None:
            reading.cancel()
        pending = [fut for _, fut in window if not fut.done()]
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for _, fut in window:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: the first one is re-raised above
        proc.busy = False


def _forget(
    by_run: dict[str, asyncio.Future[None]], key: str
) -> Callable[[asyncio.Future[None]], None]:
    def done(task: asyncio.Future[None]) -> None:
        if by_run.get(key) is task:
            del by_run[key]

    return done


def event_time(event: Event) -> datetime:
    return event.created_at


def event_foreign_id(event: Event) -> str:
    return event.headers.get(Header.FOREIGN_ID, "")
