"""Durable timeouts: an auto-inserter that arms timers when a run reaches a status, and a
poller that fires them. Each timer is paired with the ``add_timeout`` call that created it
(``TimeoutRecord.index``) and is looked up by run id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import _tracing as tracing
from ._adapters import RecordHistory
from ._consumers import lookup_for_event
from ._errors import ConcurrentUpdateError, RecordNotFoundError
from ._options import ProcessOptions, retry_policy, timeout_seconds
from ._options import resolved as _opt
from ._process import Process, consume, event_time
from ._record import Event, Record, TimeoutRecord, topic
from ._retries import give_up, run_context, sleep_or_wake
from ._retry import RetryPolicy
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
        policy = retry_policy(cfg.options, wf.defaults)
        label = wf.status_type(status).name.lower()
        yield _inserter(wf, status, cfg, opts, policy, f"{label}-timeout-auto-inserter-consumer")
        yield _poller(wf, status, cfg, opts, policy, f"{label}-timeout-consumer")


def _role(wf: Engine[Any, Any], status: int, suffix: str) -> str:
    return f"{wf.name.replace(' ', '_')}-{status}-{suffix}"


async def _entry(
    wf: Engine[Any, Any], proc: Process, event: Event, status: int
) -> tuple[Record, int] | None:
    """The run and the event's version, when ``event`` announced its arrival at ``status``
    and it is still there (not stopped), else None. The arrival is the event's version, or
    an earlier version of a run whose later versions (same status) only scheduled retries:
    each of those adds one to both the version and ``meta.attempt``. Raises
    :class:`StaleRecordError` when the store lags the event."""
    found = await lookup_for_event(wf, proc, event)
    if found is None:
        return None
    record, version = found
    if record.status != status or record.run_state.stopped:
        proc.skip("record not at the status any more")
        return None
    if record.meta.version - (record.meta.attempt - 1) != version:
        proc.skip("not the run's arrival at the status")
        return None
    return found


async def _entered_at(wf: Engine[Any, Any], record: Record, version: int) -> datetime:
    """When the run arrived at its status: the time of version ``version`` (the record's own
    when it is that version, else from the store's history; the record's time without one)."""
    if record.meta.version != version and isinstance(wf.store, RecordHistory):
        for r in await wf.store.history(record.run_id):
            if r.meta.version == version:
                return r.updated_at
    return record.updated_at


async def _left_status(wf: Engine[Any, Any], timeout: TimeoutRecord) -> bool:
    """Whether the timer's run has left the timer's status or finished (or is gone): the write
    that did it removed the run's timers there (:meth:`Engine.write_after`). One that survived
    a failed removal is cancelled when the poller next lists it, as a timer of a run that has
    moved on."""
    try:
        record = await wf.store.lookup(timeout.run_id)
    except RecordNotFoundError:
        return True
    return record.status != timeout.status or record.run_state.finished


def _inserter(
    wf: Engine[Any, Any],
    status: int,
    cfg: TimeoutConfig,
    opts: ProcessOptions,
    policy: RetryPolicy,
    name: str,
) -> Process:
    """Arms a run's timers when it arrives at the status. Each timer function gets the time
    of arrival, so a lagging consumer does not lengthen a wait. A failing timer function is
    retried in place after ``err_backoff`` until the policy gives up."""
    store = wf.timeout_store
    assert store is not None
    signal = wf.signals.timeout_event(wf.name)
    role = _role(wf, status, "timeout-auto-inserter-consumer")
    limit = timeout_seconds(opts)

    async def arm(proc: Process, event: Event) -> None:
        found = await _entry(wf, proc, event, status)
        if found is None:
            return
        record, version = found
        run = wf.new_run(record)
        entered = await _entered_at(wf, record, version)
        expiries: list[tuple[int, datetime]] = []
        try:
            for index, (timer_fn, _) in enumerate(cfg.pairs):
                expire_at = await call_user(timer_fn, run, entered, timeout=limit)
                if expire_at is None:
                    continue
                if not isinstance(expire_at, datetime) or expire_at.tzinfo is None:
                    raise ValueError(
                        f"timer {index} of {wf.status_type(status).name} returned "
                        f"{expire_at!r}; return a timezone-aware datetime or None"
                    )
                expiries.append((index, expire_at))
        except Exception as err:
            # Retried in place (the timers are not armed yet); the error counter counts the
            # attempts, and the policy gives up as for a step.
            n = wf.error_counter.add(proc.name, record.run_id)
            non_retryable = policy.gives_up_on(err)
            if not non_retryable and not policy.exhausted(n):
                raise
            wf.error_counter.clear(proc.name, record.run_id)
            proc.errors.inc()
            ctx = run_context(wf, proc, record, n)
            await give_up(wf, proc, record, err, policy, non_retryable, ctx)
            return
        wf.error_counter.clear(proc.name, record.run_id)
        for index, expire_at in expiries:
            await store.create(wf.name, run.foreign_id, run.run_id, status, expire_at, index=index)
        signal.set()
        wf.signals.notify(f"armed:{wf.name}")

    async def body(proc: Process) -> None:
        receiver = await wf.streamer.new_receiver(
            topic(wf.name, status),
            role,
            poll_frequency=_opt(opts, "polling_frequency").total_seconds(),
        )
        try:
            await consume(
                proc,
                receiver.recv,
                lambda event: arm(proc, event),
                created_at=event_time,
                lag_alert=_opt(opts, "lag_alert"),
            )
        finally:
            await receiver.close()

    return Process(wf, name, role, body, _opt(opts, "err_backoff"))


def _poller(
    wf: Engine[Any, Any],
    status: int,
    cfg: TimeoutConfig,
    opts: ProcessOptions,
    policy: RetryPolicy,
    name: str,
) -> Process:
    """Fires expired timers. A failing timeout function is retried under ``policy`` for
    that timer alone (the timer stays stored, so a restart tries it again from attempt 1);
    when the policy gives up, its ``on_exhausted`` applies to the run."""
    store = wf.timeout_store
    assert store is not None
    clock = wf.clock
    role = _role(wf, status, "timeout-consumer")
    limit = timeout_seconds(opts)
    poll = _opt(opts, "polling_frequency").total_seconds()
    signal = wf.signals.timeout_event(wf.name)

    async def fire(
        proc: Process, timeout: TimeoutRecord, failed: dict[int, tuple[datetime, int]]
    ) -> None:
        """Fire one expired timer. Leaves it for later when the run is paused."""
        try:
            record = await wf.store.lookup(timeout.run_id)
        except RecordNotFoundError:
            await store.cancel(timeout.id)
            return
        if (
            record.status != timeout.status
            or record.run_state.finished
            or record.meta.compensating  # undoing its steps (a saga): no timer moves it
        ):
            await store.cancel(timeout.id)
            return
        if record.run_state.stopped:
            return  # paused: fires after resume
        if timeout.index >= len(cfg.pairs):
            wf.log.error(f"timeout {timeout.id} has no handler {timeout.index}; cancelling it")
            await store.cancel(timeout.id)
            return
        _, timeout_fn = cfg.pairs[timeout.index]
        n = failed[timeout.id][1] if timeout.id in failed else 1
        run = wf.new_run(record)
        run.attempt = n
        wrote = False
        with tracing.run_span(tracing.TIMEOUT, wf, record, attempt=n, process=proc.name) as traced:
            try:
                result = await call_user(timeout_fn, run, clock.now(), timeout=limit)
                wrote = await wf.apply(record, run, result)
                if not wrote:
                    proc.skip("next value specified skip")
            except ConcurrentUpdateError:
                # The run changed meanwhile (e.g. its step's retry wrote a version): the
                # timer stays, and fires against the run as it is now at the next look.
                proc.skip("record modified concurrently")
                return
            except Exception as err:
                traced.failed(err)
                proc.errors.inc()
                ctx = run_context(wf, proc, record, n)
                non_retryable = policy.gives_up_on(err)
                if not non_retryable and not policy.exhausted(n):
                    due = clock.now() + policy.backoff(n)
                    failed[timeout.id] = (due, n + 1)
                    wf.log.error(f"timeout attempt {n} failed: {err!r}", exc=True, **ctx)
                    return
                failed.pop(timeout.id, None)
                await give_up(wf, proc, record, err, policy, non_retryable, ctx)
                wrote = True  # paused, cancelled or moved the run
        failed.pop(timeout.id, None)
        # Fired (moved, skipped, or given up on): done with this timer. Unless the run's own
        # write has already removed it: the id is not used again then (a store that reused a
        # removed timer's id would have another run's timer completed here, unfired).
        if wrote and await _left_status(wf, timeout):
            return
        await store.complete(timeout.id)

    async def body(proc: Process) -> None:
        failed: dict[int, tuple[datetime, int]] = {}
        while not proc.stopping:
            signal.clear()
            now = clock.now()
            proc.busy = True
            try:
                for t in await store.list_valid(wf.name, status, now):
                    retry = failed.get(t.id)
                    if retry is not None and retry[0] > now:
                        continue
                    await fire(proc, t, failed)
                    if proc.stopping:
                        return
            finally:
                proc.busy = False
            pending = [t for t in await store.list(wf.name) if t.status == status]
            now = clock.now()
            wake = [failed[t.id][0] if t.id in failed else t.expire_at for t in pending]
            future = [w for w in wake if w > now]
            await sleep_or_wake(clock.sleep_until(min(future)) if future else None, signal, poll)

    return Process(wf, name, role, body, _opt(opts, "err_backoff"))
