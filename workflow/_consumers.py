"""The background processes of a workflow: steps, hooks, delete, pause retry, connectors,
the outbox relay and schedules (timeouts live in ``_timeouts``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import _tracing as tracing
from ._adapters import (
    BatchSender,
    EventSender,
    OutboxBulkDelete,
    ReadyReceiver,
    RecordHistory,
)
from ._children import fan_in_work
from ._errors import (
    ConcurrentUpdateError,
    RecordNotFoundError,
    WorkflowError,
    WorkflowInProgressError,
)
from ._options import ProcessOptions, retry_policy, timeout_seconds
from ._options import resolved as _opt
from ._process import Process, consume, event_foreign_id, event_time
from ._record import (
    ConnectorEvent,
    Event,
    Header,
    Record,
    TypedRecord,
    children_topic,
    compensation_topic,
    delete_topic,
    run_state_change_topic,
    topic,
)
from ._retries import attempt, retry_process
from ._retry import FRESH_ATTEMPTS_ON_RESUME, RetryPolicy
from ._run import Run
from ._runstate import RunState
from ._saga import compensate, compensation_policy
from ._usercode import call_user

if TYPE_CHECKING:
    from ._engine import Engine, Schedule

__all__ = [
    "child_finished_process",
    "compensation_process",
    "connector_processes",
    "delete_process",
    "hook_processes",
    "load_for_event",
    "lookup_for_event",
    "outbox_process",
    "pause_retry_process",
    "resumed",
    "schedule_process",
    "status_consumer",
    "step_processes",
]

DELETED_OBJECT = b'{"result":"deleted"}'


class StaleRecordError(WorkflowError):
    """The store returned an older version than the event announced (a lagging replica)."""

    retriable = True


def _role(wf: Engine[Any, Any], name: str) -> str:
    return f"{wf.name.replace(' ', '_')}-{name}"


# -- shared event handling ---------------------------------------------------------------


async def lookup_for_event(
    wf: Engine[Any, Any], proc: Process, event: Event
) -> tuple[Record, int] | None:
    """The run a status event is about, as stored now, with the version the event announced;
    None (skipped) when there is no such run. Raises :class:`StaleRecordError` when the
    store lags the event (it has an older version than the event's)."""
    try:
        record = await wf.store.lookup(event.foreign_id)
    except RecordNotFoundError:
        proc.skip("record not found")
        return None
    version = int(event.headers.get(Header.RECORD_VERSION) or 0)
    if record.meta.version < version:
        raise StaleRecordError(
            f"stale record lookup: run {record.run_id} is at version {record.meta.version} "
            f"but the event is for version {version}"
        )
    return record, version


async def load_for_event(
    wf: Engine[Any, Any], proc: Process, event: Event, status: int
) -> Record | None:
    """The run an event is about, or None (skipped) when the event is stale, the run is
    stopped or elsewhere, or its retry is scheduled (the retry process owns it then).
    Raises :class:`StaleRecordError` when the store lags the event."""
    found = await lookup_for_event(wf, proc, event)
    if found is None:
        return None
    record, version = found
    if record.meta.version > version:
        proc.skip("event record version lower than latest record version")
        return None
    if record.run_state.stopped:
        proc.skip("record stopped")
        wf.log.debug(
            "skipping consumption of stopped run",
            process=proc.name,
            foreign_id=record.foreign_id,
            run_id=record.run_id,
            run_state=record.run_state,
        )
        return None
    if record.status != status:
        proc.skip("record status not in expected state")
        return None
    if record.meta.retry_at is not None:
        proc.skip("retry scheduled")
        return None
    if record.meta.compensating:
        proc.skip("compensating")
        return None
    return record


# -- steps -----------------------------------------------------------------------------


def status_consumer(
    wf: Engine[Any, Any],
    status: int,
    name: str,
    role: str,
    opts: ProcessOptions,
    work: Callable[[Process, Run[Any, Any]], Awaitable[None]],
    policy: RetryPolicy,
    *,
    shard: tuple[int, int] | None = None,
) -> Process:
    """A consumer of a status topic: each event's run (if current, not stopped and without
    a scheduled retry) gets one attempt of ``work``; a failure schedules the run's retry
    under ``policy`` and the consumer goes on (see ``_retries``)."""

    async def body(proc: Process) -> None:
        async def handle(event: Event) -> None:
            record = await load_for_event(wf, proc, event, status)
            if record is not None:
                await attempt(wf, proc, record, work, policy, headers=event.headers)

        receiver = await wf.streamer.new_receiver(
            topic(wf.name, status),
            role,
            poll_frequency=_opt(opts, "polling_frequency").total_seconds(),
        )
        try:
            await consume(
                proc,
                receiver.recv,
                handle,
                created_at=event_time,
                shard_key=event_foreign_id,
                shard=shard,
                lag=_opt(opts, "lag"),
                lag_alert=_opt(opts, "lag_alert"),
                concurrency=_opt(opts, "concurrency"),
                run_key=_run_id,
                ready=receiver.recv_ready if isinstance(receiver, ReadyReceiver) else None,
            )
        finally:
            await receiver.close()

    return Process(wf, name, role, body, _opt(opts, "err_backoff"))


def _run_id(event: Event) -> str:
    return event.foreign_id  # on workflow topics the event's foreign id is the run id


def step_processes(wf: Engine[Any, Any]) -> Iterator[Process]:
    for status, cfg in wf.steps.items():
        opts = cfg.options.over(wf.defaults)
        policy = retry_policy(cfg.options, wf.defaults)
        n = _opt(opts, "parallel_count")
        label = wf.status_type(status).name.lower()

        def step(
            fn: Callable[..., Any], timeout: float | None, compensable: bool
        ) -> Callable[[Process, Run[Any, Any]], Awaitable[None]]:
            async def work(proc: Process, run: Run[Any, Any]) -> None:
                result = await call_user(fn, run, timeout=timeout)
                if not await wf.apply(run.record, run, result, compensable=compensable):
                    proc.skip("next value specified skip")

            return work

        if cfg.children_done:
            handler = fan_in_work(wf, cfg.fn, timeout_seconds(opts))
        else:
            handler = step(cfg.fn, timeout_seconds(opts), cfg.compensation is not None)
        for i in range(1, n + 1):
            yield status_consumer(
                wf,
                status,
                f"{label}-consumer-{i}-of-{n}",
                _role(wf, f"{status}-consumer-{i}-of-{n}"),
                opts,
                handler,
                policy,
                shard=(i - 1, n) if n > 1 else None,
            )
        yield retry_process(
            wf,
            status,
            f"{label}-retry-consumer",
            _role(wf, f"{status}-retry-consumer"),
            opts,
            handler,
            policy,
        )


# -- run-state-change consumers ----------------------------------------------------------


def _event_consumer(
    wf: Engine[Any, Any],
    name: str,
    topic_name: str,
    handle: Callable[[Process, Event], Awaitable[None]],
    *,
    accept: Callable[[Event], bool] | None = None,
    before: Callable[[Event], Awaitable[None]] | None = None,
    lag_alert: timedelta | None = None,
) -> Process:
    role = _role(wf, name)
    alert = lag_alert if lag_alert is not None else _opt(wf.defaults, "lag_alert")

    async def body(proc: Process) -> None:
        receiver = await wf.streamer.new_receiver(
            topic_name, role, poll_frequency=_opt(wf.defaults, "polling_frequency").total_seconds()
        )
        try:
            await consume(
                proc,
                receiver.recv,
                lambda event: handle(proc, event),
                created_at=event_time,
                accept=accept,
                before=before,
                lag_alert=alert,
            )
        finally:
            await receiver.close()

    return Process(wf, name, role, body, _opt(wf.defaults, "err_backoff"))


def _run_state_is(state: RunState) -> Callable[[Event], bool]:
    value = str(int(state))
    return lambda event: event.headers.get(Header.RUN_STATE) == value


def hook_processes(wf: Engine[Any, Any]) -> Iterator[Process]:
    for state, hook in wf.hooks.items():

        async def handle(proc: Process, event: Event, hook: Callable[..., Any] = hook) -> None:
            try:
                record = await wf.store.lookup(event.foreign_id)
            except RecordNotFoundError:
                proc.skip("record not found")
                return
            record = await _version_of_event(wf, record, event)
            try:
                run = wf.new_run(record)
            except ValueError:
                proc.skip("unable to unmarshal object")
                return
            with tracing.run_span(
                tracing.HOOK, wf, record, headers=event.headers, process=proc.name
            ):
                await call_user(hook, TypedRecord(record, run.status, run.object))

        name = f"{state.name.lower()}-run-state-change-hook-consumer"
        yield _event_consumer(
            wf, name, run_state_change_topic(wf.name), handle, accept=_run_state_is(state)
        )


async def _version_of_event(wf: Engine[Any, Any], record: Record, event: Event) -> Record:
    """The version of the run that ``event`` announced (luno bug 20: its hooks got the run as
    it was when the hook ran, e.g. a pause hook saw the run already resumed). Taken from the
    store's history when the run has moved on since; a store without ``history`` gives the
    current version."""
    try:
        version = int(event.headers.get(Header.RECORD_VERSION) or 0)
    except ValueError:
        return record
    store = wf.store
    if version <= 0 or record.meta.version == version or not isinstance(store, RecordHistory):
        return record
    for r in await store.history(record.run_id):
        if r.meta.version == version:
            return r
    return record


def delete_process(wf: Engine[Any, Any]) -> Process:
    async def handle(proc: Process, event: Event) -> None:
        try:
            record = await wf.store.lookup(event.foreign_id)
        except RecordNotFoundError:
            proc.skip("record not found")
            return
        version = int(event.headers.get(Header.RECORD_VERSION) or 0)
        if (
            record.run_state is not RunState.REQUESTED_DATA_DELETED
            or record.meta.version != version
        ):
            proc.skip("record not awaiting deletion")
            return
        if wf.custom_delete is None:
            data = DELETED_OBJECT
        else:
            obj = wf.decode(record.object)
            data = wf.encode(await call_user(wf.custom_delete, obj))
        new = wf.next_version(record, run_state=RunState.DATA_DELETED, obj=data)
        try:
            await wf.write(new, record.run_state)
        except ConcurrentUpdateError:
            proc.skip("record modified concurrently")

    return _event_consumer(wf, "delete-consumer", delete_topic(wf.name), handle)


def resumed(wf: Engine[Any, Any], record: Record) -> Record:
    """The running version after a paused ``record``. A run paused because its retry policy
    gave up gets a fresh set of attempts."""
    fresh = record.meta.paused_by in FRESH_ATTEMPTS_ON_RESUME
    return wf.next_version(
        record, run_state=RunState.RUNNING, reason="", attempt=1 if fresh else None
    )


def pause_retry_process(wf: Engine[Any, Any]) -> Process:
    retry = wf.pause_retry
    assert retry is not None
    clock = wf.clock

    async def wait_until_due(event: Event) -> None:
        # Wait (outside the in-flight window) until the pause is `retry` old on the
        # engine's clock. The record's updated_at is the moment it was paused.
        with contextlib.suppress(RecordNotFoundError):
            record = await wf.store.lookup(event.foreign_id)
            if record.run_state is RunState.PAUSED:
                await clock.sleep_until(record.updated_at + retry)

    async def handle(proc: Process, event: Event) -> None:
        try:
            record = await wf.store.lookup(event.foreign_id)
        except RecordNotFoundError:
            proc.skip("record not found")
            return
        version = int(event.headers.get(Header.RECORD_VERSION) or 0)
        if record.run_state is not RunState.PAUSED or record.meta.version != version:
            proc.skip("record no longer paused at this version")
            return
        by = record.meta.paused_by
        if by and by not in wf.pause_retry_for:
            proc.skip(f"paused by {by}: not resumed automatically")
            return
        if record.updated_at + retry > clock.now():
            await clock.sleep_until(record.updated_at + retry)
        try:
            await wf.write(resumed(wf, record), record.run_state)
            wf.log.debug("resumed paused run", run_id=record.run_id, foreign_id=record.foreign_id)
        except ConcurrentUpdateError:
            proc.skip("record modified concurrently")

    alert = retry * 3 if retry * 3 >= timedelta(minutes=1) else retry + timedelta(minutes=5)
    return _event_consumer(
        wf,
        "paused-records-retry-consumer",
        run_state_change_topic(wf.name),
        handle,
        accept=_run_state_is(RunState.PAUSED),
        before=wait_until_due,
        lag_alert=alert,
    )


# -- composition: fan-in wake-ups and sagas ------------------------------------------------


def child_finished_process(wf: Engine[Any, Any]) -> Process:
    """Hears that a child of one of this workflow's runs finished (see ``_children``) and
    re-checks the parent if it waits at a fan-in status."""
    works: dict[int, tuple[Any, RetryPolicy]] = {}
    for status, cfg in wf.steps.items():
        if cfg.children_done:
            opts = cfg.options.over(wf.defaults)
            policy = retry_policy(cfg.options, wf.defaults)
            works[status] = (fan_in_work(wf, cfg.fn, timeout_seconds(opts)), policy)

    async def handle(proc: Process, event: Event) -> None:
        try:
            record = await wf.store.lookup(event.foreign_id)
        except RecordNotFoundError:
            proc.skip("record not found")
            return
        found = works.get(record.status)
        meta = record.meta
        if found is None or record.run_state.stopped or record.run_state.finished:
            proc.skip("parent not waiting for its children")
        elif meta.retry_at is not None or meta.compensating:
            proc.skip("parent busy")
        else:
            await attempt(wf, proc, record, found[0], found[1], headers=event.headers)

    return _event_consumer(wf, "child-finished-consumer", children_topic(wf.name), handle)


def compensation_process(wf: Engine[Any, Any]) -> Process:
    """Runs the compensations of the runs whose saga started (see ``_saga``)."""

    async def work(proc: Process, run: Run[Any, Any]) -> None:
        await compensate(wf, proc, run)

    async def handle(proc: Process, event: Event) -> None:
        found = await lookup_for_event(wf, proc, event)
        if found is None:
            return
        record, version = found
        if record.meta.version > version:
            proc.skip("event record version lower than latest record version")
        elif record.run_state.stopped or not record.meta.compensating:
            proc.skip("record not compensating")
        elif record.meta.retry_at is not None:
            proc.skip("retry scheduled")
        else:
            policy = compensation_policy(wf, record)
            await attempt(
                wf, proc, record, work, policy, span=tracing.COMPENSATION, headers=event.headers
            )

    return _event_consumer(wf, "compensation-consumer", compensation_topic(wf.name), handle)


# -- connectors ------------------------------------------------------------------------


def _connector_time(wf: Engine[Any, Any]) -> Callable[[ConnectorEvent], datetime]:
    return lambda ce: ce.created_at if ce.created_at is not None else wf.clock.now()


def connector_processes(wf: Engine[Any, Any]) -> Iterator[Process]:
    for cname, cfg in wf.connectors.items():
        opts = cfg.options.over(wf.defaults)
        n = _opt(opts, "parallel_count")
        for i in range(1, n + 1):
            name = f"{cname}-connector-to-{wf.name.replace(' ', '_')}-consumer-{i}-of-{n}"
            role = _role(wf, name)

            def make_body(
                cfg: Any = cfg,
                opts: ProcessOptions = opts,
                role: str = role,
                shard: tuple[int, int] | None = (i - 1, n) if n > 1 else None,
            ) -> Callable[[Process], Coroutine[Any, Any, None]]:
                async def body(proc: Process) -> None:
                    consumer = await cfg.constructor.make(role)

                    async def handle(ce: ConnectorEvent) -> None:
                        await call_user(cfg.fn, wf.api, ce)

                    try:
                        await consume(
                            proc,
                            consumer.recv,
                            handle,
                            created_at=_connector_time(wf),
                            shard_key=lambda ce: ce.foreign_id,
                            shard=shard,
                            lag=_opt(opts, "lag"),
                            lag_alert=_opt(opts, "lag_alert"),
                            concurrency=_opt(opts, "concurrency"),
                            run_key=lambda ce: ce.foreign_id,
                        )
                    finally:
                        await consumer.close()

                return body

            yield Process(wf, name, role, make_body(), _opt(opts, "err_backoff"))


# -- outbox relay ------------------------------------------------------------------------


def outbox_process(wf: Engine[Any, Any]) -> Process:
    cfg = wf.outbox
    assert cfg is not None
    store = wf.store
    poll = cfg.polling_frequency.total_seconds()
    alert_s = cfg.lag_alert.total_seconds()
    bulk_delete = store.delete_outbox_events if isinstance(store, OutboxBulkDelete) else None

    async def body(proc: Process) -> None:
        senders: dict[str, EventSender] = {}
        signal = wf.signals.outbox_event(wf.name)
        try:
            while not proc.stopping:
                signal.clear()
                events = await store.list_outbox_events(wf.name, cfg.lookup_limit)
                if not events:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(signal.wait(), poll)
                    continue
                proc.busy = True
                try:
                    t0 = time.perf_counter()
                    batches: dict[str, list[tuple[str, int, dict[str, str]]]] = {}
                    for ev in events:
                        parts = ev.parts()
                        batches.setdefault(parts[2][Header.TOPIC], []).append(parts)
                    for tp, batch in batches.items():
                        sender = senders.get(tp)
                        if sender is None:
                            sender = senders[tp] = await wf.streamer.new_sender(tp)
                        if isinstance(sender, BatchSender) and len(batch) > 1:
                            await sender.send_many(batch)  # one round trip for the batch
                        else:
                            for run_id, status, headers in batch:
                                await sender.send(run_id, status, headers)
                    if bulk_delete is not None:
                        await bulk_delete([ev.id for ev in events])
                    else:
                        for ev in events:
                            await store.delete_outbox_event(ev.id)
                    lag_s = (wf.clock.now() - events[0].created_at).total_seconds()
                    proc.lag_gauge.set(lag_s)
                    proc.lag_alert_gauge.set(1 if lag_s > alert_s else 0)
                    proc.latency.observe((time.perf_counter() - t0) / len(events))
                finally:
                    proc.busy = False
        finally:
            for sender in senders.values():
                with contextlib.suppress(Exception):
                    await sender.close()

    return Process(wf, "outbox-consumer", _role(wf, "outbox-consumer"), body, cfg.err_backoff)


# -- schedules ---------------------------------------------------------------------------


def schedule_process(wf: Engine[Any, Any], sched: Schedule) -> Process:
    clock = wf.clock
    name = f"{sched.foreign_id}-scheduler-{sched.cron.spec}"

    async def body(proc: Process) -> None:
        # The position survives restarts of this body (an error is retried at the same tick)
        # and is initialised once: from the latest run, so a restarted process never
        # triggers a tick twice, or from now.
        if sched.last is None:
            try:
                sched.last = (await wf.store.latest(wf.name, sched.foreign_id)).created_at
            except RecordNotFoundError:
                sched.last = clock.now()
        while not proc.stopping:
            due = sched.cron.next(sched.last)
            await clock.sleep_until(due)
            proc.busy = True
            try:
                if sched.filter is not None and not await call_user(sched.filter):
                    wf.log.debug("schedule tick filtered out", foreign_id=sched.foreign_id)
                else:
                    try:
                        await wf.trigger(sched.foreign_id, initial_value=sched.initial)
                    except WorkflowInProgressError:
                        proc.skip("run in progress")
                sched.last = max(due, clock.now())
            finally:
                proc.busy = False

    return Process(wf, name, _role(wf, name), body, _opt(wf.defaults, "err_backoff"))
