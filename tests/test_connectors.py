"""Connectors (luno TestConnector, inventory §4.12 / §7.10), with luno bugs 2 and 3 fixed:
shards from ``default_options`` start, and every event is handled by exactly one shard."""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from workflow import (
    Builder,
    ConnectorEvent,
    Run,
    State,
    Workflow,
    WorkflowInProgressError,
)
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemConnector, MemStreamer
from workflow.testing import FakeClock, require

WF = "example"


class Status(enum.IntEnum):
    UNKNOWN = 0
    START = 9
    END = 11


class TypeX(BaseModel):
    val: str = ""


async def step(run: Run[TypeX, Status]) -> Status:
    run.object.val = "workflow step set value"
    return Status.END


def event(i: int | str, fid: str) -> ConnectorEvent:
    return ConnectorEvent(
        id=str(i), foreign_id=fid, type="2", created_at=datetime(2023, 4, 9, tzinfo=UTC)
    )


class Tracking:
    """Wraps a connector constructor and records, per consumer name, which events were
    acknowledged, so a test knows when every shard has read the whole stream."""

    def __init__(self, inner: MemConnector) -> None:
        self.inner = inner
        self.acked: dict[str, list[str]] = {}
        self.changed = asyncio.Event()

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``cond()`` holds, re-checked at each acknowledgement."""
        await _until(self.changed, cond, timeout)

    def all_read(self, consumers: int, events: int) -> bool:
        """Whether ``consumers`` distinct consumers have each acknowledged ``events``."""
        done = [n for n, ids in self.acked.items() if len(ids) == events]
        return len(self.acked) == consumers and len(done) == consumers

    async def make(self, name: str) -> Any:
        consumer = await self.inner.make(name)
        acked = self.acked.setdefault(name, [])
        tracking = self

        class Consumer:
            async def recv(self) -> Any:
                ev, ack = await consumer.recv()

                async def tracked_ack() -> None:
                    await ack()
                    acked.append(ev.id)
                    tracking.changed.set()

                return ev, tracked_ack

            async def close(self) -> None:
                await consumer.close()

        return Consumer()


class Handler:
    """A connector function that triggers a run per event and counts calls by foreign id."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_first = fail_first
        self.called = asyncio.Event()

    async def __call__(self, wf: Workflow[TypeX, Status], ev: ConnectorEvent) -> None:
        self.calls[ev.foreign_id] += 1
        self.called.set()
        if sum(self.calls.values()) <= self.fail_first:
            raise RuntimeError("connector failure")
        try:
            await wf.trigger(ev.foreign_id, initial_value=TypeX(val="trigger set value"))
        except WorkflowInProgressError:
            pass  # a redelivered event: the run exists


async def _until(changed: asyncio.Event, cond: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            changed.clear()
            if cond():
                return
            await changed.wait()


def build(
    constructor: Any,
    handler: Handler,
    clock: FakeClock,
    registry: Any,
    *,
    name: str = "my-test-connector",
    default_options: dict[str, Any] | None = None,
    **options: Any,
) -> Workflow[TypeX, Status]:
    b = Builder[TypeX, Status](WF)
    b.add_step(Status.START, step, Status.END)
    h = b.add_connector(name, constructor, handler)
    if options:
        h.with_options(**options)
    return b.build(
        MemStreamer(clock),
        MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
        default_options=default_options,
    )


async def test_connector_events_trigger_runs_that_complete(clock, registry):
    fids = ["SDFJKH-SDKFJHBSD-SDKFJBS", "XCVXCM-EIXCASDBJ-SDFBJKZ"]
    handler = Handler()
    wf = build(MemConnector([event(1, fids[0]), event(2, fids[1])]), handler, clock, registry)
    async with wf:
        for fid in fids:
            await require(wf, fid, Status.START, TypeX(val="trigger set value"), timeout=5)
            await require(wf, fid, Status.END, TypeX(val="workflow step set value"), timeout=5)
        assert handler.calls == Counter(dict.fromkeys(fids, 1))


async def test_parallel_connector_shards_handle_every_event_exactly_once(clock, registry):
    # luno bug 3: a negative hash lost events with parallel_count >= 2 ("2" was one).
    fids = [f"user-{i}" for i in range(40)]
    events = [event(i + 1, fid) for i, fid in enumerate(fids)]
    tracking = Tracking(MemConnector(events))
    handler = Handler()
    wf = build(tracking, handler, clock, registry, parallel_count=2)
    shards = [f"my-test-connector-connector-to-{WF}-consumer-{i}-of-2" for i in (1, 2)]
    async with wf:
        assert set(shards) <= set(wf.states())
        # Every shard reads (and acknowledges) the whole stream.
        await tracking.until(lambda: tracking.all_read(2, len(events)))
        for fid in fids:
            await require(wf, fid, Status.END, TypeX(val="workflow step set value"), timeout=5)
    assert handler.calls == Counter(dict.fromkeys(fids, 1))
    assert len(await wf.list(limit=100)) == len(fids)
    assert set(wf.states().values()) == {State.SHUTDOWN}


async def test_parallel_count_from_default_options_starts_every_shard(clock, registry):
    # luno bug 2: a parallel count that came from the workflow defaults launched nothing.
    fids = [f"user-{i}" for i in range(10)]
    tracking = Tracking(MemConnector([event(i, fid) for i, fid in enumerate(fids)]))
    handler = Handler()
    wf = build(tracking, handler, clock, registry, default_options={"parallel_count": 2})
    async with wf:
        names = [n for n in wf.states() if "-connector-to-" in n]
        assert sorted(names) == [
            f"my-test-connector-connector-to-{WF}-consumer-{i}-of-2" for i in (1, 2)
        ]
        await tracking.until(lambda: tracking.all_read(2, len(fids)))
        for fid in fids:
            await require(wf, fid, Status.END, TypeX(val="workflow step set value"), timeout=5)
    assert handler.calls == Counter(dict.fromkeys(fids, 1))


async def test_connector_error_is_retried_after_backoff_and_the_event_is_not_lost(clock, registry):
    tracking = Tracking(MemConnector([event(1, "first"), event(2, "second")]))
    handler = Handler(fail_first=1)
    wf = build(tracking, handler, clock, registry, err_backoff=timedelta(minutes=1))
    async with wf:
        await _until(handler.called, lambda: handler.calls["first"] == 1, 5)
        await clock.until_waiting(1, timeout=5)  # backing off on the clock
        assert clock.waiting == 1
        assert handler.calls == Counter(first=1)  # not retried, and "second" waits its turn
        assert [ids for ids in tracking.acked.values() if ids] == []
        clock.step(timedelta(minutes=1))
        await require(wf, "first", Status.END, TypeX(val="workflow step set value"), timeout=5)
        await require(wf, "second", Status.END, TypeX(val="workflow step set value"), timeout=5)
        await tracking.until(lambda: ["1", "2"] in tracking.acked.values())
        assert handler.calls == Counter(first=2, second=1)


def test_duplicate_connector_names_are_a_value_error():
    b = Builder[TypeX, Status](WF)
    b.add_step(Status.START, step, Status.END)
    b.add_connector("dup", MemConnector(), Handler())
    with pytest.raises(ValueError, match="unique"):
        b.add_connector("dup", MemConnector(), Handler())
    b.add_connector("other", MemConnector(), Handler())  # a different name is fine
