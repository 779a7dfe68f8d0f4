"""Conformance suite for :class:`workflow.EventStreamer` adapters.

Run it against your own streamer from any test runner::

    from workflow.adapters.adaptertest import run_event_streamer_test

    async def test_my_streamer() -> None:
        await run_event_streamer_test(lambda: MyStreamer(...))

The factory (plain or ``async``) must return a fresh, empty streamer on every call: the suite
calls it once per behaviour. A failed behaviour raises ``AssertionError`` naming it, e.g.
``event streamer: an event received but not acked was not redelivered ...``. The last check
runs a whole workflow (steps, a timeout, parallel shards) on the streamer with the in-memory
record store, role scheduler and timeout store.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, Event, EventReceiver, EventStreamer, Run
from workflow.abc import Ack, Directive, ReadyReceiver
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memtimeoutstore import MemTimeoutStore
from workflow.testing import FakeClock, await_timeout_insert

from ._roles import check, resolve, run_checks, settle, stop, within

__all__ = ["EventStreamerFactory", "SyncStatus", "User", "run_event_streamer_test"]

EventStreamerFactory = Callable[[], EventStreamer | Awaitable[EventStreamer]]

POLL = 0.01
"""``poll_frequency`` hint given to every receiver, so a polling adapter reacts quickly."""

START = datetime(2023, 4, 9, 8, 30, tzinfo=UTC)


class User(BaseModel):
    """The object of the acceptance workflows (luno's adaptertest ``User``)."""

    uid: str = ""
    email: str = ""
    country_code: str = ""


class SyncStatus(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    EMAIL_SET = 2
    REGULATION_TIMEOUT = 3
    COMPLETED = 4


def _topic(what: str) -> str:
    return f"adaptertest-{what}-{uuid.uuid4().hex[:8]}"


async def _expect(receiver: EventReceiver, foreign_id: str, problem: str) -> Ack:
    """Receive one event, check it is ``foreign_id`` and return its ack."""
    event, ack = await within(receiver.recv(), f"{problem}: receiving event {foreign_id!r}")
    check(event.foreign_id == foreign_id, f"{problem}: expected {foreign_id!r}, got {event!r}")
    return ack


def _task(aw: Awaitable[tuple[Event, Ack]]) -> asyncio.Task[tuple[Event, Ack]]:
    return asyncio.ensure_future(aw)


async def _expect_nothing(receiver: EventReceiver, problem: str) -> None:
    task = _task(receiver.recv())
    try:
        done = await settle([task])
        check(not done, f"{problem}: recv returned {task.result() if done else None!r}")
    finally:
        await stop([task])


async def _send_all(streamer: EventStreamer, topic: str, *foreign_ids: str) -> None:
    sender = await streamer.new_sender(topic)
    try:
        for i, foreign_id in enumerate(foreign_ids):
            await sender.send(foreign_id, i + 1, {"topic": topic})
    finally:
        await sender.close()


async def _order_and_fields(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    topic = _topic("order")
    sent = [
        ("run-1", 1, {"topic": topic, "foreign_id": "fid-1", "run_state": "1"}),
        ("run-2", 2, {"topic": topic, "empty": "", "unicode": "\u00fcn\u00efc\u00f8de \u2713"}),
        ("run-3", 7, {"topic": topic}),
    ]
    sender = await streamer.new_sender(topic)
    try:
        for foreign_id, status, headers in sent:
            mine = dict(headers)
            await sender.send(foreign_id, status, mine)
            mine["mutated"] = "after send"
    finally:
        await sender.close()
    receiver = await streamer.new_receiver(topic, "adaptertest-order", poll_frequency=POLL)
    try:
        last: int | None = None
        for foreign_id, status, headers in sent:
            event, ack = await within(receiver.recv(), f"receiving sent event {foreign_id!r}")
            check(
                event.foreign_id == foreign_id,
                f"events out of order: expected foreign_id {foreign_id!r}, got {event!r}",
            )
            check(event.type == status, f"event type {status} came back as {event.type!r}")
            check(
                event.headers == headers,
                f"headers did not round-trip: sent {headers!r}, received {event.headers!r}",
            )
            check(
                isinstance(event.id, int) and not isinstance(event.id, bool),
                f"event id {event.id!r} is not an int",
            )
            check(
                last is None or event.id > last,
                f"event ids are not increasing within a topic: {last} then {event.id}",
            )
            last = event.id
            check(
                isinstance(event.created_at, datetime) and event.created_at.utcoffset() is not None,
                f"event created_at {event.created_at!r} is not timezone-aware",
            )
            await ack()
    finally:
        await receiver.close()


async def _isolated(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    a, b = _topic("a"), _topic("b")
    await _send_all(streamer, a, "a-1")
    await _send_all(streamer, b, "b-1")
    await _send_all(streamer, a, "a-2")
    ra = await streamer.new_receiver(a, "adaptertest-isolated-a", poll_frequency=POLL)
    rb = await streamer.new_receiver(b, "adaptertest-isolated-b", poll_frequency=POLL)
    try:
        await (await _expect(ra, "a-1", "topics are not isolated"))()
        await (await _expect(ra, "a-2", "topics are not isolated"))()
        await _expect_nothing(ra, "topics are not isolated (an extra event on topic a)")
        await (await _expect(rb, "b-1", "topics are not isolated"))()
        await _expect_nothing(rb, "topics are not isolated (an extra event on topic b)")
    finally:
        await ra.close()
        await rb.close()


async def _blocks_then_wakes(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    topic = _topic("wake")
    receiver = await streamer.new_receiver(topic, "adaptertest-wake", poll_frequency=POLL)
    task = _task(receiver.recv())
    try:
        done = await settle([task])
        check(not done, "recv returned on an empty topic instead of blocking")
        await _send_all(streamer, topic, "wake-1")
        event, ack = await within(task, "recv returning once an event is sent")
        check(event.foreign_id == "wake-1", f"recv woke with {event!r}")
        await ack()
    finally:
        await stop([task])
        await receiver.close()


async def _stream_from_latest(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    topic = _topic("latest")
    name = "adaptertest-latest"
    await _send_all(streamer, topic, "before-1", "before-2")
    receiver = await streamer.new_receiver(
        topic, name, poll_frequency=POLL, stream_from_latest=True
    )
    try:
        await _send_all(streamer, topic, "after-1")
        event, ack = await within(receiver.recv(), "receiving an event sent after new_receiver")
        check(
            not event.foreign_id.startswith("before"),
            f"stream_from_latest=True on a fresh name delivered an old event {event!r}",
        )
        check(
            event.foreign_id == "after-1",
            "stream_from_latest=True missed an event sent between new_receiver and the "
            f"first recv (got {event!r})",
        )
        await ack()
        await _send_all(streamer, topic, "after-2")
        await (await _expect(receiver, "after-2", "stream_from_latest lost a later event"))()
    finally:
        await receiver.close()
    await _send_all(streamer, topic, "while-closed")
    again = await streamer.new_receiver(topic, name, poll_frequency=POLL, stream_from_latest=True)
    try:
        await (
            await _expect(
                again,
                "while-closed",
                "a receiver name with a committed cursor did not resume there when "
                "stream_from_latest=True (it must only apply to a name without a cursor)",
            )
        )()
    finally:
        await again.close()


async def _durable_cursor(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    topic = _topic("durable")
    name = "adaptertest-durable"
    await _send_all(streamer, topic, "e1", "e2", "e3", "e4", "e5")
    first = await streamer.new_receiver(topic, name, poll_frequency=POLL)
    try:
        for fid in ("e1", "e2", "e3"):
            await (await _expect(first, fid, "events out of order"))()
    finally:
        await first.close()
    second = await streamer.new_receiver(topic, name, poll_frequency=POLL)
    try:
        await (
            await _expect(
                second,
                "e4",
                "a new receiver with the same name did not resume after the last acked event",
            )
        )()
    finally:
        await second.close()


async def _unacked_redelivered(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    topic = _topic("unacked")
    name = "adaptertest-unacked"
    await _send_all(streamer, topic, "e1", "e2", "e3")
    first = await streamer.new_receiver(topic, name, poll_frequency=POLL)
    try:
        await (await _expect(first, "e1", "events out of order"))()
        await _expect(first, "e2", "events out of order")  # received, never acked
    finally:
        await first.close()
    second = await streamer.new_receiver(topic, name, poll_frequency=POLL)
    try:
        await (
            await _expect(
                second,
                "e2",
                "an event received but not acked was not redelivered to a new receiver with "
                "the same name",
            )
        )()
        await (await _expect(second, "e3", "events out of order after a redelivery"))()
    finally:
        await second.close()


async def _ready(factory: EventStreamerFactory) -> None:
    """``recv_ready`` (a :class:`~workflow.abc.ReadyReceiver`) hands out, in order and without
    waiting, the events ``recv`` would return next; acked, they are not delivered again, and
    the ones it did not hand out are."""
    streamer = await resolve(factory())
    topic = _topic("ready")
    name = "adaptertest-ready"
    fids = [f"e{i}" for i in range(1, 9)]
    await _send_all(streamer, topic, *fids)
    first = await streamer.new_receiver(topic, name, poll_frequency=POLL)
    if not isinstance(first, ReadyReceiver):
        await first.close()
        return
    try:
        got: list[tuple[Event, Ack]] = []
        while len(got) < 6:  # recv waits for the next batch; recv_ready takes what is in hand
            got.append(await within(first.recv(), "receiving for recv_ready"))
            got += first.recv_ready(6 - len(got))
        check(len(got) == 6, f"recv_ready handed out more than its limit: {len(got)} events")
        seen = [e.foreign_id for e, _ in got]
        check(seen == fids[:6], f"recv and recv_ready gave {seen}, want {fids[:6]} in order")
        check(first.recv_ready(0) == [], "recv_ready(0) handed out events")
        for _, ack in got[:4]:
            await ack()
    finally:
        await first.close()
    second = await streamer.new_receiver(topic, name, poll_frequency=POLL)
    try:
        await (await _expect(second, "e5", "events handed out by recv_ready but not acked"))()
        rest = [await _expect(second, fid, "events after recv_ready") for fid in fids[5:]]
        for ack in rest:
            await ack()
    finally:
        await second.close()


async def _names_independent(factory: EventStreamerFactory) -> None:
    streamer = await resolve(factory())
    topic = _topic("names")
    await _send_all(streamer, topic, "e1", "e2", "e3")
    alpha = await streamer.new_receiver(topic, "adaptertest-alpha", poll_frequency=POLL)
    beta = await streamer.new_receiver(topic, "adaptertest-beta", poll_frequency=POLL)
    problem = "two receiver names did not each get every event"
    try:
        for fid in ("e1", "e2", "e3"):
            await (await _expect(alpha, fid, problem))()
        for fid in ("e1", "e2", "e3"):
            await (await _expect(beta, fid, problem))()
    finally:
        await alpha.close()
        await beta.close()


# -- acceptance: a whole workflow on the streamer --------------------------------------------


async def _set_email(run: Run[User, SyncStatus]) -> SyncStatus:
    run.object.email = "andrew@workflow.com"
    return SyncStatus.EMAIL_SET


def _regulation_timer(run: Run[User, SyncStatus], now: datetime) -> datetime | None:
    return now + timedelta(hours=1) if run.object.country_code == "GB" else None


def _regulation_timeout(run: Run[User, SyncStatus], now: datetime) -> SyncStatus | Directive:
    if run.object.email == "andrew@workflow.com":
        return SyncStatus.REGULATION_TIMEOUT
    return run.skip()


async def _set_uid(run: Run[User, SyncStatus]) -> SyncStatus:
    run.object.uid = str(uuid.uuid4())
    return SyncStatus.COMPLETED


async def _full_workflow(factory: EventStreamerFactory) -> None:
    clock = FakeClock(START)
    b = Builder[User, SyncStatus]("sync user 2")
    b.add_step(SyncStatus.STARTED, _set_email, SyncStatus.EMAIL_SET).with_options(
        polling_frequency=0.2, parallel_count=5
    )
    b.add_timeout(
        SyncStatus.EMAIL_SET,
        _regulation_timer,
        _regulation_timeout,
        SyncStatus.REGULATION_TIMEOUT,
    ).with_options(polling_frequency=0.2)
    b.add_step(SyncStatus.REGULATION_TIMEOUT, _set_uid, SyncStatus.COMPLETED).with_options(
        polling_frequency=0.2, parallel_count=5
    )
    wf = b.build(
        await resolve(factory()),
        MemRecordStore(clock),
        MemRoleScheduler(),
        timeout_store=MemTimeoutStore(clock),
        clock=clock,
        metrics_registry=CollectorRegistry(),
    )
    await wf.run()
    try:
        run_id = await wf.trigger("1", initial_value=User(country_code="GB"))
        try:
            await await_timeout_insert(wf, "1", run_id, SyncStatus.EMAIL_SET, timeout=10)
        except TimeoutError as err:
            raise AssertionError(
                f"full workflow: the run never reached EMAIL_SET and armed its timer ({err})"
            ) from None
        clock.step(timedelta(hours=1))
        try:
            done = await wf.await_("1", run_id, SyncStatus.COMPLETED, timeout=10)
        except TimeoutError as err:
            raise AssertionError(f"full workflow: the run never completed ({err})") from None
        check(
            done.object.email == "andrew@workflow.com",
            f"full workflow: completed without the email set: {done.object!r}",
        )
        check(done.object.uid != "", f"full workflow: completed without a uid: {done.object!r}")
        check(done.status is SyncStatus.COMPLETED, f"full workflow: ended at {done.status!r}")
    finally:
        await wf.stop()


async def run_event_streamer_test(factory: EventStreamerFactory) -> None:
    """Check an :class:`~workflow.EventStreamer`: order and fields, isolated topics, blocking
    ``recv``, ``stream_from_latest``, durable named cursors, redelivery of unacked events,
    independent names, ``recv_ready`` when the receiver offers it, and a whole workflow run
    through on it."""
    await run_checks(
        "event streamer",
        [
            ("send/recv order and fields", lambda: _order_and_fields(factory)),
            ("isolated topics", lambda: _isolated(factory)),
            ("recv blocks, then wakes on send", lambda: _blocks_then_wakes(factory)),
            ("durable cursor", lambda: _durable_cursor(factory)),
            ("unacked redelivery", lambda: _unacked_redelivered(factory)),
            ("stream_from_latest", lambda: _stream_from_latest(factory)),
            ("independent names", lambda: _names_independent(factory)),
            ("recv_ready hands out what is in hand", lambda: _ready(factory)),
            ("full workflow run through", lambda: _full_workflow(factory)),
        ],
    )
