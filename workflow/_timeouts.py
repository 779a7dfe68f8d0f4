"""Durable timeouts: an auto-inserter that arms timers when a run reaches a status, and a
poller that fires them. Each timer is paired with the ``add_timeout`` call that created it
(``TimeoutRecord.index``) and is looked up by run id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._consumers import guarded, status_consumer
from ._errors import RecordNotFoundError
from ._options import ProcessOptions, timeout_seconds
from ._options import resolved as _opt
from ._process import Process
from ._record import TimeoutRecord
from ._run import Run
from ._usercode import call_user

if TYPE_CHECKING:
    from ._builder import TimeoutConfig
    from ._engine import Engine

__all__ = ["timeout_processes"]


def timeout_processes(wf: Engine[Any, Any]) -> Iterator[Process]:
    if wf.timeout_store is None:
        return
    for status, cfg in wf.timeouts.items():
        opts = cfg.options.over(wf.defaults)
        label = wf.status_type(status).name.lower()
        yield _inserter(wf, status, cfg, opts, f"{label}-timeout-auto-inserter-consumer")
        yield _poller(wf, status, cfg, opts, f"{label}-timeout-consumer")


def _role(wf: Engine[Any, Any], status: int, suffix: str) -> str:
    return f"{wf.name.replace(' ', '_')}-{status}-{suffix}"


def _inserter(
    wf: Engine[Any, Any], status: int, cfg: TimeoutConfig, opts: ProcessOptions, name: str
) -> Process:
    store = wf.timeout_store
    assert store is not None
    signal = wf.signals.timeout_event(wf.name)

    async def arm(proc: Process, run: Run[Any, Any]) -> None:
        now = wf.clock.now()
        for index, (timer_fn, _) in enumerate(cfg.pairs):
            expire_at = await call_user(timer_fn, run, now, timeout=timeout_seconds(opts))
            if expire_at is None:
                continue
            if not isinstance(expire_at, datetime) or expire_at.tzinfo is None:
                raise ValueError(
                    f"timer {index} of {wf.status_type(status).name} returned {expire_at!r};"
                    " return a timezone-aware datetime or None"
                )
            await store.create(wf.name, run.foreign_id, run.run_id, status, expire_at, index=index)
        signal.set()
        wf.signals.notify(f"armed:{wf.name}")

    role = _role(wf, status, "timeout-auto-inserter-consumer")
    return status_consumer(wf, status, name, role, opts, arm)


def _poller(
    wf: Engine[Any, Any], status: int, cfg: TimeoutConfig, opts: ProcessOptions, name: str
) -> Process:
    store = wf.timeout_store
    assert store is not None
    clock = wf.clock
    role = _role(wf, status, "timeout-consumer")
    pause_after = _opt(opts, "pause_after_err_count")
    limit = timeout_seconds(opts)
    backoff = _opt(opts, "err_backoff")
    poll = _opt(opts, "polling_frequency").total_seconds()
    signal = wf.signals.timeout_event(wf.name)

    async def fire(proc: Process, timeout: TimeoutRecord, failed: dict[int, datetime]) -> None:
        """Fire one expired timer. Leaves it for later when the run is paused."""
        try:
            record = await wf.store.lookup(timeout.run_id)
        except RecordNotFoundError:
            await store.cancel(timeout.id)
            return
        if record.status != timeout.status or record.run_state.finished:
            await store.cancel(timeout.id)
            return
        if record.run_state.stopped:
            return  # paused: fires after resume
        if timeout.index >= len(cfg.pairs):
            wf.log.error(f"timeout {timeout.id} has no handler {timeout.index}; cancelling it")
            await store.cancel(timeout.id)
            return
        _, timeout_fn = cfg.pairs[timeout.index]
        outcome: list[bool] = []

        async def work(run: Run[Any, Any]) -> None:
            result = await call_user(timeout_fn, run, clock.now(), timeout=limit)
            if not await wf.apply(record, run, result):
                proc.skip("next value specified skip")
            outcome.append(True)

        try:
            await guarded(wf, proc, record, work, pause_after)
        except Exception:
            proc.errors.inc()  # logged with the run's context by guarded()
            failed[timeout.id] = clock.now() + backoff
            return
        # Fired (moved, skipped, or the run was paused for its errors): done with this timer.
        if outcome or (await wf.store.lookup(record.run_id)).meta.version != record.meta.version:
            await store.complete(timeout.id)

    async def body(proc: Process) -> None:
        failed: dict[int, datetime] = {}
        while not proc.stopping:
            signal.clear()
            now = clock.now()
            proc.busy = True
            try:
                for t in await store.list_valid(wf.name, status, now):
                    retry_at = failed.get(t.id)
                    if retry_at is not None and retry_at > now:
                        continue
                    failed.pop(t.id, None)
                    await fire(proc, t, failed)
                    if proc.stopping:
                        return
            finally:
                proc.busy = False
            pending = [t for t in await store.list(wf.name) if t.status == status]
            now = clock.now()
            wake = [failed.get(t.id, t.expire_at) for t in pending]
            future = [w for w in wake if w > now]
            await _sleep(clock.sleep_until(min(future)) if future else None, signal, poll)

    return Process(wf, name, role, body, backoff)


async def _sleep(timer: Any, signal: asyncio.Event, poll: float) -> None:
    """Wait for the clock deadline, a local new-timer signal, or the polling fallback."""
    waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(signal.wait())}
    if timer is not None:
        waits.add(asyncio.ensure_future(timer))
    try:
        await asyncio.wait(waits, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)
