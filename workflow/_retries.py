"""Failed attempts: a step's failure schedules that run's retry durably (on the run record:
``meta.attempt`` and ``meta.retry_at``) and releases the event, so the consumer goes on with
the other runs; a retry process per step runs each retry when it is due. When the policy
gives up, ``on_exhausted`` decides (pause, cancel, or a status).

Who handles a run at a given version is decided by the record alone: a status consumer
skips a run whose retry is scheduled (``retry_at`` set) and the retry process handles only
those, so no run is handled by both; every write is a compare-and-set on the version."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import _tracing as tracing
from ._errors import ConcurrentUpdateError, NonRetryableError
from ._options import ProcessOptions
from ._options import resolved as _opt
from ._process import Process
from ._record import Record
from ._retry import PausedBy, RetryPolicy
from ._run import Run
from ._runstate import RunState
from ._saga import begin, compensate, compensation_policy

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = [
    "AUTO_PAUSE_REASON",
    "DueTimes",
    "give_up",
    "run_context",
    "attempt",
    "retry_process",
    "sleep_or_wake",
]

Work = Callable[[Process, Run[Any, Any]], Awaitable[None]]

AUTO_PAUSE_REASON = "max error retry threshold hit - automatically paused"

# How many due retries one read takes.
_BATCH = 64


class DueTimes:
    """The due times of the retries this process scheduled at one status, so that its
    retry process wakes exactly then (retries scheduled elsewhere are found by polling)."""

    __slots__ = ("_heap", "wake")

    def __init__(self) -> None:
        self._heap: list[datetime] = []
        self.wake = asyncio.Event()

    def add(self, due: datetime) -> None:
        heapq.heappush(self._heap, due)
        self.wake.set()

    def next_after(self, now: datetime) -> datetime | None:
        """The earliest due time later than ``now`` (earlier ones are dropped)."""
        heap = self._heap
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return heap[0] if heap else None


def _due_times(wf: Engine[Any, Any], status: int) -> DueTimes:
    due = wf.retry_due.get(status)
    if due is None:
        due = wf.retry_due[status] = DueTimes()
    return due


async def attempt(
    wf: Engine[Any, Any],
    proc: Process,
    record: Record,
    work: Work,
    policy: RetryPolicy,
    *,
    span: str = tracing.STEP,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """Run one attempt of ``work`` on ``record``, in a ``span`` (a child of the event's
    trace context in ``headers``). A failure is handled here (retry scheduled or the policy
    gives up) and counted as the process's error. True when it succeeded."""
    with tracing.run_span(span, wf, record, headers=headers, process=proc.name) as traced:
        try:
            await work(proc, wf.new_run(record))
            return True
        except ConcurrentUpdateError:
            proc.skip("record modified concurrently")
            return True
        except Exception as err:
            traced.failed(err)
            proc.errors.inc()
            await failed(wf, proc, record, err, policy)
            return False


def run_context(
    wf: Engine[Any, Any], proc: Process, record: Record, attempt: int
) -> dict[str, Any]:
    """The log context of a failed attempt of a run."""
    return {
        "process": proc.name,
        "foreign_id": record.foreign_id,
        "run_id": record.run_id,
        "status": wf.status_name(record.status),
        "attempt": attempt,
    }


async def failed(
    wf: Engine[Any, Any], proc: Process, record: Record, err: Exception, policy: RetryPolicy
) -> None:
    """Attempt ``record.meta.attempt`` failed with ``err``: schedule the next one, or give up."""
    n = record.meta.attempt
    ctx = run_context(wf, proc, record, n)
    non_retryable = policy.gives_up_on(err)
    if not non_retryable and not policy.exhausted(n):
        due = wf.clock.now() + policy.backoff(n)
        new = wf.next_version(record, run_state=record.run_state, attempt=n + 1, retry_at=due)
        try:
            await wf.write(new, record.run_state)
        except ConcurrentUpdateError:
            proc.skip("record modified concurrently")
            return
        _due_times(wf, record.status).add(due)
        wf.metrics.retries_scheduled.labels(wf.name, proc.name).inc()
        wf.log.error(
            f"attempt {n} failed, attempt {n + 1} at {due.isoformat()}: {err!r}", exc=True, **ctx
        )
        return
    await give_up(wf, proc, record, err, policy, non_retryable, ctx)


async def give_up(
    wf: Engine[Any, Any],
    proc: Process,
    record: Record,
    err: Exception,
    policy: RetryPolicy,
    non_retryable: bool,
    ctx: dict[str, Any],
) -> None:
    """The policy's ``on_exhausted``: pause (saying why), cancel, or move to a status."""
    n = record.meta.attempt
    if non_retryable:
        why = f"non-retryable error: {err!r}"
    elif policy.on_exhausted == "pause":
        why = f"{AUTO_PAUSE_REASON} ({n} errors, last: {err!r})"  # luno's words
    else:
        why = f"retries exhausted ({n} errors, last: {err!r})"
    if isinstance(err, NonRetryableError):
        why = str(err)  # the user's own words, as before
    target = policy.on_exhausted
    if target == "compensate" and not record.meta.compensating:
        new = begin(wf, record, why)
        action, done = "compensate", "started the compensations of run"
    elif target == "cancel":
        new = wf.next_version(record, run_state=RunState.CANCELLED, reason=why)
        action, done = "cancel", "cancelled run"
    elif target == "pause" or record.meta.compensating:
        if record.meta.compensating:
            by = PausedBy.COMPENSATION_FAILED
            why = f"compensation failed: {why}"
        else:
            by = PausedBy.NON_RETRYABLE if non_retryable else PausedBy.RETRIES_EXHAUSTED
        new = wf.next_version(record, run_state=RunState.PAUSED, reason=why, paused_by=by)
        action, done = "pause", "paused run"
    else:
        status = int(target)
        terminal = wf.graph.is_terminal(status)
        state = RunState.COMPLETED if terminal else RunState.RUNNING
        new = wf.next_version(record, run_state=state, status=status, reason=why, attempt=1)
        action = wf.status_name(status)
        done = f"moved run to {action}"
    try:
        await wf.write_after(record, new)
    except ConcurrentUpdateError:
        proc.skip("record modified concurrently")
        return
    wf.metrics.retries_exhausted.labels(wf.name, proc.name, action).inc()
    wf.log.warning(f"{done} (its retry policy gave up): {why}", **ctx)


def retry_process(
    wf: Engine[Any, Any],
    status: int,
    name: str,
    role: str,
    opts: ProcessOptions,
    work: Work,
    policy: RetryPolicy,
) -> Process:
    """The process that runs the retries of one status when they are due: up to the step's
    ``concurrency`` at once, each run once at a time."""
    clock = wf.clock
    limit = _opt(opts, "concurrency")
    poll = _opt(opts, "polling_frequency").total_seconds()
    due_times = _due_times(wf, status)

    async def compensation(proc: Process, run: Run[Any, Any]) -> None:
        await compensate(wf, proc, run)

    outcomes = {
        ok: wf.metrics.retry_attempts.labels(wf.name, name, "ok" if ok else "failed")
        for ok in (True, False)
    }

    async def one(proc: Process, record: Record) -> None:
        t0 = time.perf_counter()
        if record.meta.compensating:  # a failed compensation's retry (see _saga)
            policy_ = compensation_policy(wf, record)
            ok = await attempt(wf, proc, record, compensation, policy_, span=tracing.COMPENSATION)
        else:
            ok = await attempt(wf, proc, record, work, policy)
        outcomes[ok].inc()
        proc.latency.observe(time.perf_counter() - t0)

    async def body(proc: Process) -> None:
        while not proc.stopping:
            due_times.wake.clear()
            now = clock.now()
            proc.busy = True
            try:
                due = await wf.store.due_retries(wf.name, status, now, _BATCH)
                for i in range(0, len(due), limit):
                    results = await asyncio.gather(
                        *(one(proc, r) for r in due[i : i + limit]), return_exceptions=True
                    )
                    for result in results:
                        if isinstance(result, BaseException):
                            raise result
                    if proc.stopping:
                        return
            finally:
                proc.busy = False
            if len(due) >= _BATCH:
                continue
            nxt = due_times.next_after(clock.now())
            await sleep_or_wake(
                clock.sleep_until(nxt) if nxt is not None else None, due_times.wake, poll
            )

    return Process(wf, name, role, body, _opt(opts, "err_backoff"))


async def sleep_or_wake(timer: Awaitable[Any] | None, wake: asyncio.Event, poll: float) -> None:
    """Wait for the clock deadline, a local wake-up, or the polling fallback."""
    waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(wake.wait())}
    if timer is not None:
        waits.add(asyncio.ensure_future(timer))
    try:
        await asyncio.wait(waits, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)
