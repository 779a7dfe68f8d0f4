"""Behaviour the README documents that no other test exercised: a pause returned from a
plain ``def`` step, the lag-alert gauge, ``concurrency`` with ``lag``, objects that no longer
validate, run-state control retried after a compare-and-set conflict, and ``OutboxOptions``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, ConcurrentUpdateError, OutboxOptions, Record, Run, RunState
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, in_memory, wait_for

from .support import Obj, Status, build


async def to_done(run: Run[Any, Status]) -> Status:
    return Status.DONE


def gauge(registry: CollectorRegistry, name: str, wf: str, process: str) -> float | None:
    return registry.get_sample_value(name, {"workflow_name": wf, "process_name": process})


# -- steps ---------------------------------------------------------------------------------


async def test_a_plain_def_step_returns_run_pause(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    def hold(run: Run[Obj, Status]) -> Any:  # runs in a thread
        run.object.note = "held"
        return run.pause("needs a look")

    b = Builder[Obj, Status]("plain pause")
    b.add_step(Status.STARTED, hold, Status.DONE)
    wf = build(b, clock, registry, pause_retry=None)
    async with wf:
        rid = await wf.trigger("p")
        run = await wait_for(wf, "p", lambda r: r.run_state is RunState.PAUSED)
    assert run.run_id == rid
    assert run.meta.run_state_reason == "needs a look"
    assert run.object.note == "held"  # the step's object is stored with the pause
    assert run.status is Status.STARTED


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_lag_alert_gauge_is_set_by_an_old_event_only(
    clock: FakeClock, registry: CollectorRegistry, concurrency: int
) -> None:
    """``workflow_process_lag_alert`` is 1 for a consumer whose event is older than its
    ``lag_alert``, 0 for one whose event is younger. The STARTED event is put on the
    stream by a producer process two minutes before the consumers start."""
    streamer, store, roles = MemStreamer(clock), Counting(), MemRoleScheduler()

    async def waits(run: Run[Obj, Status], payload: bytes) -> Status:
        return Status.MIDDLE

    producer = Builder[Obj, Status]("alerting")
    producer.add_callback(Status.STARTED, waits, Status.MIDDLE)  # consumes nothing
    relay = producer.build(streamer, store, roles, clock=clock, metrics_registry=registry)
    async with relay:
        rid = await relay.trigger("old")
        await asyncio.wait_for(store.relayed.wait(), 5)
    clock.step(timedelta(minutes=2))

    b = Builder[Obj, Status]("alerting")
    b.add_step(Status.STARTED, lambda run: Status.MIDDLE, Status.MIDDLE).with_options(
        lag_alert=timedelta(minutes=1), concurrency=concurrency
    )
    b.add_step(Status.MIDDLE, to_done, Status.DONE).with_options(
        lag_alert=timedelta(minutes=1), concurrency=concurrency
    )
    wf = b.build(streamer, store, roles, clock=clock, metrics_registry=registry)
    async with wf:
        await wf.await_("old", rid, Status.DONE, timeout=5)
    started, middle = "started-consumer-1-of-1", "middle-consumer-1-of-1"
    assert gauge(registry, "workflow_process_lag_seconds", "alerting", started) == 120
    assert gauge(registry, "workflow_process_lag_alert", "alerting", started) == 1
    # MIDDLE's event was sent when it was consumed: no lag, no alert
    assert gauge(registry, "workflow_process_lag_seconds", "alerting", middle) == 0
    assert gauge(registry, "workflow_process_lag_alert", "alerting", middle) == 0


async def test_concurrency_with_lag_holds_every_event_until_old_enough(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    consumed: dict[str, Any] = {}

    async def stamp(run: Run[Obj, Status]) -> Status:
        consumed[run.foreign_id] = clock.now()
        return Status.DONE

    b = Builder[Obj, Status]("lagged")
    b.add_step(Status.STARTED, stamp, Status.DONE).with_options(
        concurrency=4, lag=timedelta(hours=1)
    )
    wf = build(b, clock, registry)
    t0 = clock.now()
    async with wf:
        ids = {f"l{i}": await wf.trigger(f"l{i}") for i in range(3)}
        await clock.until_waiting()  # the consumer holds the first event for an hour
        clock.step(timedelta(minutes=59))
        assert clock.waiting == 1  # still held
        assert consumed == {}
        clock.step(timedelta(minutes=1))
        for fid, rid in ids.items():
            await wf.await_(fid, rid, Status.DONE, timeout=5)
    assert consumed == dict.fromkeys(ids, t0 + timedelta(hours=1))


# -- objects that no longer validate -------------------------------------------------------


class Strict(BaseModel):
    required: int


async def test_objects_that_no_longer_decode_count_towards_the_pause(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """A run written with an older object type (no ``required``) fails to decode in the
    step's process: each failure counts, and pause_after_err_count pauses the run."""
    streamer, store, roles = MemStreamer(clock), MemRecordStore(), MemRoleScheduler()
    called = 0

    async def step(run: Run[Strict, Status]) -> Status:
        nonlocal called
        called += 1
        return Status.DONE

    old = Builder[Obj, Status]("evolving")
    old.add_step(Status.STARTED, to_done, Status.DONE)
    producer = old.build(streamer, store, roles, clock=clock, metrics_registry=registry)
    rid = await producer.trigger("legacy", initial_value=Obj(note="v1"))

    new = Builder[Strict, Status]("evolving")
    new.add_step(Status.STARTED, step, Status.DONE).with_options(
        pause_after_err_count=3, err_backoff=0
    )
    wf = new.build(streamer, store, roles, clock=clock, metrics_registry=registry)
    async with wf:
        record = await _wait_paused(wf, rid)
    assert called == 0
    assert "3 errors" in record.meta.run_state_reason
    assert "validation error" in record.meta.run_state_reason.lower()


async def _wait_paused(wf: Any, rid: str) -> Record:
    # wait_for decodes each version (which fails here): watch the raw records instead
    watch = wf._engine.signals.watch(rid, 0.5)
    try:
        async with asyncio.timeout(5):
            while True:
                watch.take()  # what the lookup below sees: wait for versions after it
                record: Record = await wf._engine.store.lookup(rid)
                if record.run_state is RunState.PAUSED:
                    return record
                await watch.wait(None)
    finally:
        wf._engine.signals.unwatch(rid, watch)


async def test_a_deleted_object_that_no_longer_validates_comes_back_as_a_dict(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    b = Builder[Strict, Status]("forgetful")
    b.add_step(Status.STARTED, to_done, Status.DONE)
    wf = in_memory(b, clock=clock, metrics_registry=registry).wf
    async with wf:
        rid = await wf.trigger("f", initial_value=Strict(required=1))
        done = await wf.await_("f", rid, Status.DONE, timeout=5)
        assert done.object == Strict(required=1)
        await wf.delete_data(rid)
        deleted = await wait_for(wf, "f", lambda r: r.run_state is RunState.DATA_DELETED)
    assert deleted.object == {"result": "deleted"}
    assert (await wf.lookup(rid)).object == {"result": "deleted"}
    assert [r.object for r in await wf.list()] == [{"result": "deleted"}]


# -- run-state control after a compare-and-set conflict ------------------------------------


class Conflicting(MemRecordStore):
    """Refuses the next ``conflicts`` writes as if another writer had got there first."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0
        self.refused = 0

    async def store(self, record: Record) -> None:
        if self.conflicts > 0:
            self.conflicts -= 1
            self.refused += 1
            raise ConcurrentUpdateError(f"run {record.run_id} changed (test)")
        await super().store(record)


@pytest.mark.parametrize(
    ("verb", "before", "after"),
    [
        ("pause", (), RunState.PAUSED),
        ("resume", ("pause",), RunState.RUNNING),
        ("cancel", (), RunState.CANCELLED),
        ("delete_data", ("cancel",), RunState.REQUESTED_DATA_DELETED),
    ],
)
async def test_run_state_control_retries_after_a_conflict(
    clock: FakeClock,
    registry: CollectorRegistry,
    verb: str,
    before: tuple[str, ...],
    after: RunState,
) -> None:
    store = Conflicting()
    b = Builder[Obj, Status]("controlled")
    b.add_step(Status.STARTED, to_done, Status.DONE)
    wf = build(b, clock, registry, store=store)  # not running: only the calls write
    rid = await wf.trigger("c")
    for step in before:
        await getattr(wf, step)(rid)
    version = (await store.lookup(rid)).meta.version
    store.conflicts = 1
    await getattr(wf, verb)(rid)
    assert store.refused == 1
    record = await store.lookup(rid)
    assert record.run_state is after
    assert record.meta.version == version + 1  # one write landed, after the retry

    then = {RunState.PAUSED: "cancel", RunState.RUNNING: "pause", RunState.CANCELLED: "delete_data"}
    if after in then:  # a run that keeps changing: the call gives up, nothing written
        store.conflicts = 1000
        with pytest.raises(ConcurrentUpdateError, match="kept changing"):
            await getattr(wf, then[after])(rid)
        assert store.refused == 1 + 8  # eight attempts
        assert (await store.lookup(rid)).meta.version == version + 1


# -- OutboxOptions -------------------------------------------------------------------------


class Counting(MemRecordStore):
    """Counts the relay's look-ups (and their limits); can fail the next ``failures``."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[tuple[int, int]] = []  # (limit, rows returned)
        self.failures = 0
        self.looked = asyncio.Event()
        self.relayed = asyncio.Event()

    async def delete_outbox_events(self, ids: Any) -> None:
        await super().delete_outbox_events(ids)
        self.relayed.set()

    async def list_outbox_events(self, workflow_name: str, limit: int) -> Any:
        self.looked.set()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("outbox table unavailable")
        rows = await super().list_outbox_events(workflow_name, limit)
        self.lookups.append((limit, len(rows)))
        return rows


class OtherProcess:
    """The same store seen by "another process": its writes do not wake this process's
    relay (signals are per store object)."""

    def __init__(self, inner: MemRecordStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def relay_builder(name: str) -> Builder[Obj, Status]:
    b = Builder[Obj, Status](name)
    b.add_step(Status.STARTED, to_done, Status.DONE)
    return b


async def test_outbox_lookup_limit_caps_each_batch(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    store = Counting()
    wf = build(
        relay_builder("batched"), clock, registry, store=store, outbox=OutboxOptions(lookup_limit=2)
    )
    ids = {f"b{i}": await wf.trigger(f"b{i}") for i in range(5)}
    async with wf:
        for fid, rid in ids.items():
            await wf.await_(fid, rid, Status.DONE, timeout=5)
    assert {limit for limit, _ in store.lookups} == {2}
    assert max(rows for _, rows in store.lookups) == 2
    assert store.lookups[0] == (2, 2)  # five waiting rows: the first batch is two


async def test_outbox_err_backoff_after_a_store_error_is_real_time(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The relay's store fails once: it tries again after ``err_backoff`` of real time, so
    the run finishes although the test's fake clock never moves (an adapter recovers in real
    time; only user code's errors back off on the workflow's clock)."""
    store = Counting()
    store.failures = 1
    wf = build(
        relay_builder("backing off"),
        clock,
        registry,
        store=store,
        outbox=OutboxOptions(err_backoff=timedelta(milliseconds=50)),
    )
    rid = await wf.trigger("x")
    before = clock.now()
    async with wf:
        await wf.await_("x", rid, Status.DONE, timeout=5)
    assert clock.now() == before
    errors = registry.get_sample_value(
        "workflow_process_error_count_total",
        {"workflow_name": "backing off", "process_name": "outbox-consumer"},
    )
    assert errors == 1


@pytest.mark.parametrize("poll", ["often", "hourly"])
async def test_outbox_polling_frequency_finds_rows_of_other_processes(
    clock: FakeClock, registry: CollectorRegistry, poll: str
) -> None:
    """A row written by another process wakes nothing here: the relay finds it at its next
    poll (every 10 ms), or, polling hourly, only once a local write wakes it."""
    store = Counting()
    every = timedelta(milliseconds=10) if poll == "often" else timedelta(hours=1)
    wf = build(
        relay_builder("polled"),
        clock,
        registry,
        store=store,
        outbox=OutboxOptions(polling_frequency=every),
    )
    other = relay_builder("polled").build(
        MemStreamer(clock),
        OtherProcess(store),
        MemRoleScheduler(),
        clock=clock,  # type: ignore[arg-type]
    )
    async with wf:
        await asyncio.wait_for(store.looked.wait(), 5)  # the relay found nothing: it waits
        rid = await other.trigger("from elsewhere")
        if poll == "often":
            await wf.await_("from elsewhere", rid, Status.DONE, timeout=5)
            return
        looked = len(store.lookups)
        for _ in range(100):  # let every ready task run: nothing wakes the relay
            await asyncio.sleep(0)
        assert len(store.lookups) == looked
        assert len(await store.list_outbox_events("polled", 10)) == 1
        local = await wf.trigger("local")  # a local write wakes it: both rows go
        await wf.await_("local", local, Status.DONE, timeout=5)
        await wf.await_("from elsewhere", rid, Status.DONE, timeout=5)


@pytest.mark.parametrize(("alert_after", "expected"), [(timedelta(minutes=1), 1), (None, 0)])
async def test_outbox_lag_alert_gauge(
    clock: FakeClock,
    registry: CollectorRegistry,
    alert_after: timedelta | None,
    expected: int,
) -> None:
    """The relay's ``workflow_process_lag_alert`` compares the age of the rows it relays with
    ``OutboxOptions.lag_alert`` (default one minute... here 1 min against 5 min)."""
    seen = asyncio.Event()

    async def skip(run: Run[Obj, Status]) -> None:
        seen.set()  # stores nothing: the trigger's row is the only one relayed

    b = Builder[Obj, Status]("relay lag")
    b.add_step(Status.STARTED, skip, Status.DONE)
    outbox = OutboxOptions(lag_alert=alert_after or timedelta(minutes=5))
    wf = build(b, clock, registry, outbox=outbox)
    await wf.trigger("x")
    clock.step(timedelta(minutes=2))  # the row is two minutes old when relayed
    async with wf:
        await asyncio.wait_for(seen.wait(), 5)
    # stop() let the relay finish its batch
    relay = "outbox-consumer"
    assert gauge(registry, "workflow_process_lag_seconds", "relay lag", relay) == 120
    assert gauge(registry, "workflow_process_lag_alert", "relay lag", relay) == expected


def test_outbox_options_validate() -> None:
    assert OutboxOptions(polling_frequency=0.5).polling_frequency == timedelta(seconds=0.5)
    with pytest.raises(ValueError, match="lookup_limit"):
        OutboxOptions(lookup_limit=0)
