"""The conformance suites of ``workflow.adapters.adaptertest`` against the in-memory adapters, and
proof that the suites fail on adapters that break the contract."""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from workflow import (
    ConnectorEvent,
    Event,
    EventReceiver,
    Filter,
    Lease,
    Meta,
    Order,
    OutboxEvent,
    Record,
    RecordNotFoundError,
    RoleScheduler,
    RunState,
    TimeoutRecord,
)
from workflow._adapters import Ack
from workflow.adapters import adaptertest
from workflow.adapters.adaptertest import (
    _roles,
    run_connector_test,
    run_event_streamer_test,
    run_record_store_test,
    run_role_scheduler_test,
    run_timeout_store_test,
)
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemConnector, MemStreamer
from workflow.adapters.memtimeoutstore import MemTimeoutStore


@pytest.fixture
def short_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken adapters that hang are caught by the suites' 5 s guard; shorten it here."""
    monkeypatch.setattr(_roles, "GUARD", 0.3)


def mem_roles(instances: int) -> list[RoleScheduler]:
    scheduler = MemRoleScheduler()
    return [scheduler] * instances


# -- the in-memory adapters pass ------------------------------------------------------------


async def test_mem_streamer_passes() -> None:
    await run_event_streamer_test(MemStreamer)


async def test_mem_record_store_passes() -> None:
    await run_record_store_test(MemRecordStore)


async def test_mem_timeout_store_passes() -> None:
    await run_timeout_store_test(MemTimeoutStore)


async def test_mem_role_scheduler_passes() -> None:
    await run_role_scheduler_test(mem_roles)


async def test_mem_connector_passes() -> None:
    await run_connector_test(MemConnector)


async def test_async_factories_are_awaited() -> None:
    made: list[str] = []

    async def store() -> MemRecordStore:
        made.append("store")
        return MemRecordStore()

    async def roles(instances: int) -> list[RoleScheduler]:
        made.append("roles")
        return mem_roles(instances)

    async def connector(events: list[ConnectorEvent]) -> MemConnector:
        made.append("connector")
        return MemConnector(events)

    await run_record_store_test(store)
    await run_role_scheduler_test(roles)
    await run_connector_test(connector)
    # one fresh adapter per behaviour
    assert made.count("store") >= 10
    assert made.count("roles") == 5
    assert made.count("connector") == 2


def test_public_names() -> None:
    assert set(adaptertest.__all__) >= {
        "run_event_streamer_test",
        "run_record_store_test",
        "run_timeout_store_test",
        "run_role_scheduler_test",
        "run_connector_test",
    }


async def test_mem_record_store_history_keeps_every_version() -> None:
    store = MemRecordStore()
    at = datetime(2024, 1, 1, tzinfo=UTC)
    v1 = Record("wf", "fid", "run-1", RunState.INITIATED, 1, b"{}", at, at, Meta(version=1))
    v2 = replace(v1, run_state=RunState.RUNNING, status=2, meta=Meta(version=2))
    v3 = replace(v2, run_state=RunState.COMPLETED, status=3, meta=Meta(version=3))
    for record in (v1, v2, v3):
        await store.store(record)
    assert await store.history("run-1") == [v1, v2, v3]
    with pytest.raises(RecordNotFoundError):
        await store.history("absent")


# -- broken event streamers are caught -------------------------------------------------------


class _Receiver:
    """Wraps a receiver; ``mode`` breaks its acks."""

    def __init__(self, inner: EventReceiver, mode: str) -> None:
        self.inner = inner
        self.mode = mode

    async def recv(self) -> tuple[Event, Ack]:
        event, ack = await self.inner.recv()
        if self.mode == "auto-ack":
            await ack()

        async def nothing() -> None:
            return None

        return event, nothing if self.mode in ("no-ack", "auto-ack") else ack

    async def close(self) -> None:
        await self.inner.close()


def broken_streamer(mode: str) -> type[MemStreamer]:
    class Broken(MemStreamer):
        async def new_sender(self, topic: str):  # type: ignore[no-untyped-def]
            return await super().new_sender("shared" if mode == "one-topic" else topic)

        async def new_receiver(  # type: ignore[no-untyped-def]
            self,
            topic: str,
            name: str,
            *,
            poll_frequency: float | None = None,
            stream_from_latest: bool = False,
        ):
            if mode == "one-topic":
                topic = "shared"
            if mode == "ignore-latest":
                stream_from_latest = False
            if mode == "always-latest" and stream_from_latest:
                self._cursors.pop((topic, name), None)
            inner = await super().new_receiver(
                topic, name, poll_frequency=poll_frequency, stream_from_latest=stream_from_latest
            )
            return _Receiver(inner, mode)

    return Broken


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("no-ack", "did not resume after the last acked event"),
        ("auto-ack", "not acked was not redelivered"),
        ("ignore-latest", "stream_from_latest=True on a fresh name delivered an old event"),
        ("always-latest", "stream_from_latest=True"),
        ("one-topic", "topics are not isolated"),
    ],
)
async def test_broken_streamer_fails(short_guard: None, mode: str, message: str) -> None:
    with pytest.raises(AssertionError, match=f"^event streamer: .*{message}"):
        await run_event_streamer_test(broken_streamer(mode))


class _SlowWakeStreamer(MemStreamer):
    """Events become visible to a waiting receiver only when another event is sent."""

    def _send(self, topic: str, foreign_id: str, status_type: int, headers: dict[str, str]) -> None:
        log = self._topic(topic)
        waiters, log.waiters = log.waiters, []
        super()._send(topic, foreign_id, status_type, headers)
        log.waiters.extend(waiters)


async def test_streamer_that_does_not_wake_receivers_fails(short_guard: None) -> None:
    with pytest.raises(AssertionError, match="recv returning once an event is sent"):
        await run_event_streamer_test(_SlowWakeStreamer)


# -- broken record stores are caught ---------------------------------------------------------


class _NoVersionCheck(MemRecordStore):
    async def store(self, record: Record) -> None:
        current = self._records.get(record.run_id)
        if current is not None:  # pretend the stored version is always the expected one
            meta = replace(current.meta, version=record.meta.version - 1)
            self._records[record.run_id] = replace(current, meta=meta)
        await super().store(record)


class _LatestWritten(MemRecordStore):
    """luno's mem bug: latest is the last written run, not the last created."""

    async def store(self, record: Record) -> None:
        await super().store(record)
        self._latest[(record.workflow_name, record.foreign_id)] = record.run_id


class _DescReversesAscPage(MemRecordStore):
    """luno's mem bug: a desc page is the asc page reversed."""

    async def list(
        self,
        workflow_name: str = "",
        offset_id: int = 0,
        limit: int = 25,
        order: Order = "asc",
        *filters: Filter,
    ) -> builtins.list[Record]:
        page = await super().list(workflow_name, offset_id, limit, "asc", *filters)
        return page[::-1] if order == "desc" else page


class _TwoRunsAtOnce(MemRecordStore):
    async def store(self, record: Record) -> None:
        if record.meta.version == 1:
            self._latest.pop((record.workflow_name, record.foreign_id), None)
        await super().store(record)


class _OutboxNewestFirst(MemRecordStore):
    async def list_outbox_events(
        self, workflow_name: str, limit: int
    ) -> builtins.list[OutboxEvent]:
        return list(reversed(await super().list_outbox_events(workflow_name, 10_000)))[:limit]


class _KeyErrorLookup(MemRecordStore):
    async def lookup(self, run_id: str) -> Record:
        return self._records[run_id]


class _KeepsDeletedData(MemRecordStore):
    """Keeps every version as written (luno's stores did): deleted data survives."""

    async def store(self, record: Record) -> None:
        kept = list(self._history.get(record.run_id, []))
        await super().store(record)
        self._history[record.run_id][: len(kept)] = kept


class _OneAtATime(MemRecordStore):
    """store_many as a loop of stores: what is written before a refusal stays."""

    async def store_many(
        self, records: Sequence[Record], events: Sequence[OutboxEvent] = ()
    ) -> None:
        for record in records:
            await self.store(record)
        await super().store_many([], events)


class _DropsExtraEvents(MemRecordStore):
    async def store_many(
        self, records: Sequence[Record], events: Sequence[OutboxEvent] = ()
    ) -> None:
        await super().store_many(records)


class _ForgetsTheParent(MemRecordStore):
    async def store(self, record: Record) -> None:
        meta = replace(record.meta, parent_workflow="", parent_run_id="")
        await super().store(replace(record, meta=meta))


class _LastCompensationOnly(MemRecordStore):
    async def store(self, record: Record) -> None:
        meta = replace(record.meta, compensations=record.meta.compensations[-1:])
        await super().store(replace(record, meta=meta))


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (_NoVersionCheck, "storing version 3 over version 1 was accepted"),
        (_OneAtATime, r"a refused store_many \(one stale update among new runs\) published"),
        (_DropsExtraEvents, "want each record's event and the extra event"),
        (_ForgetsTheParent, "lookup of a child run"),
        (_LastCompensationOnly, r"history version 3 \(compensations\)"),
        (_LatestWritten, r"latest \(after an update of an older run\)"),
        (_DescReversesAscPage, "desc must return the newest first"),
        (_TwoRunsAtOnce, "a second run of a foreign id whose run is unfinished"),
        (_OutboxNewestFirst, "outbox rows are not oldest first"),
        (_KeyErrorLookup, "unexpected KeyError"),
        (_KeepsDeletedData, "deleted data must not survive in the history"),
    ],
)
async def test_broken_record_store_fails(store: type[MemRecordStore], message: str) -> None:
    with pytest.raises(AssertionError, match=f"^record store: .*{message}"):
        await run_record_store_test(store)


# -- broken timeout stores are caught --------------------------------------------------------


class _CancelRemovesFirst(MemTimeoutStore):
    """luno's mem bug: cancelling an absent id removes the first timer."""

    async def cancel(self, id: int) -> None:
        if id not in self._timeouts and self._timeouts:
            id = next(iter(self._timeouts))
        await super().cancel(id)


class _StrictlyBefore(MemTimeoutStore):
    async def list_valid(
        self, workflow_name: str, status: int, now: datetime
    ) -> builtins.list[TimeoutRecord]:
        valid = await super().list_valid(workflow_name, status, now)
        return [t for t in valid if t.expire_at < now]


class _ListsCompleted(MemTimeoutStore):
    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        return [t for t in self._timeouts.values() if t.workflow_name == workflow_name]


class _ReusesIds(MemTimeoutStore):
    """SQLite's plain ``INTEGER PRIMARY KEY``: a new timer's id is the largest stored id + 1,
    so removing the newest timer hands its id to the next one."""

    async def create(self, *args: Any, **kwargs: Any) -> int:
        self._ids = itertools.count(max(self._timeouts, default=0) + 1)
        return await super().create(*args, **kwargs)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (_CancelRemovesFirst, "list after cancelling an absent id"),
        (_ReusesIds, "gave the id 1 of a timer removed by cancel_run to a new timer"),
        (_StrictlyBefore, "missed a timer whose expire_at == now"),
        (_ListsCompleted, "list after complete and cancel"),
    ],
)
async def test_broken_timeout_store_fails(store: type[MemTimeoutStore], message: str) -> None:
    with pytest.raises(AssertionError, match=f"^timeout store: .*{message}"):
        await run_timeout_store_test(store)


# -- broken role schedulers are caught -------------------------------------------------------


class _Greedy:
    """Grants every role to everybody."""

    async def await_role(self, role: str) -> Lease:
        async def release() -> None:
            return None

        return Lease(role, release)


class _Phantom:
    """Hands a released role to the oldest waiter even if that waiter was cancelled."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.queues: dict[str, deque[asyncio.Future[Lease]]] = {}

    def _lease(self, role: str) -> Lease:
        self.held.add(role)
        return Lease(role, lambda: self._release(role))

    async def await_role(self, role: str) -> Lease:
        if role not in self.held:
            return self._lease(role)
        fut: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self.queues.setdefault(role, deque()).append(fut)
        return await fut  # no clean-up when cancelled

    async def _release(self, role: str) -> None:
        queue = self.queues.get(role)
        if queue:
            fut = queue.popleft()
            if not fut.cancelled():
                fut.set_result(self._lease(role))
            return  # a cancelled waiter "holds" the role forever
        self.held.discard(role)


class _SloppyLease(Lease):
    """A lease whose release is not idempotent."""

    async def release(self) -> None:
        self.revoke()
        await self._release()


class _ReleaseByRole(MemRoleScheduler):
    """A lease's release frees the role whoever holds it, and may be repeated: a stale
    lease releases the next holder's role."""

    def _grant(self, role: str) -> Lease:
        async def release() -> None:
            current = self._holders.get(role)
            if current is not None:
                await self._release(role, current)

        lease = _SloppyLease(role, release)
        self._holders[role] = lease
        return lease


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _Greedy(), "two holders held one role at once"),
        (lambda: _Phantom(), "hand-over to the waiter left after one was cancelled"),
        (_ReleaseByRole, "released the next holder's role"),
    ],
)
async def test_broken_role_scheduler_fails(short_guard: None, make: object, message: str) -> None:
    def factory(instances: int) -> list[RoleScheduler]:
        scheduler = make()  # type: ignore[operator]
        return [scheduler] * instances

    with pytest.raises(AssertionError, match=f"^role scheduler: .*{message}"):
        await run_role_scheduler_test(factory)


# -- broken connectors are caught ------------------------------------------------------------


class _AutoAckConnector(MemConnector):
    async def make(self, name: str):  # type: ignore[no-untyped-def]
        inner = await super().make(name)

        class AutoAck:
            async def recv(self) -> tuple[ConnectorEvent, Ack]:
                event, ack = await inner.recv()
                await ack()
                return event, ack

            async def close(self) -> None:
                await inner.close()

        return AutoAck()


async def test_broken_connector_fails() -> None:
    with pytest.raises(AssertionError, match=r"^connector: .*did not resume at the first unacked"):
        await run_connector_test(_AutoAckConnector)
