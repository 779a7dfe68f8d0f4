"""Record-store checks for composition: the parent and saga fields of ``Meta`` round-trip,
``Filter.by_parent`` lists a run's children, and (when the store offers it,
:class:`~workflow.abc.AtomicWrites`) ``store_many`` writes several runs and extra events all
together or, on the first refusal, not at all.

What a store published is read the way it publishes: its outbox (``list_outbox_events``), or,
for a store that appends events to a streamer itself (:class:`~workflow.abc.DirectPublisher`
with ``publishes_to`` set), that streamer's topics. Such a store cannot pass the outbox checks
of ``run_record_store_test``; :func:`run_atomic_writes_test` runs these checks alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from workflow import (
    ConcurrentUpdateError,
    Filter,
    IdempotencyKeyUsedError,
    OutboxEvent,
    Record,
    RecordStore,
    RunState,
    WorkflowInProgressError,
    make_outbox_event,
)
from workflow.abc import (
    AtomicWrites,
    DirectPublisher,
    EventReceiver,
    EventStreamer,
    Header,
    RecordHistory,
    make_child_finished_event,
)

from ._roles import check, resolve, run_checks, within
from ._store import WF, WF2, RecordStoreFactory, _absent, _next, _record, _same

__all__ = ["composition_checks", "run_atomic_writes_test"]

Published = tuple[str, str, str]
"""``(topic, run id, record version)`` of an event a store published."""

MARKER = "adaptertest-marker"


def _child(parent: Record, foreign_id: str, *, workflow_name: str = WF2) -> Record:
    """A new child run of ``parent``, as ``run.start_child`` writes it."""
    r = _record(foreign_id, workflow_name=workflow_name)
    return replace(
        r,
        meta=replace(r.meta, parent_workflow=parent.workflow_name, parent_run_id=parent.run_id),
    )


def _saga(record: Record, status: int, *compensations: int, compensating: bool = False) -> Record:
    """The record's next version at ``status`` with the saga's stack."""
    nxt = _next(record, RunState.RUNNING, status)
    return replace(
        nxt, meta=replace(nxt.meta, compensations=compensations, compensating=compensating)
    )


def _keyed(record: Record, key: str) -> Record:
    return replace(record, meta=replace(record.meta, idempotency_key=key))


def _published(event: OutboxEvent | Record) -> Published:
    if isinstance(event, Record):
        event = make_outbox_event(event)
    run_id, _, headers = event.parts()
    return headers[Header.TOPIC], run_id, headers.get(Header.RECORD_VERSION, "")


class _Probe:
    """What a store publishes from now on, to the topics (streamer) or workflows (outbox) of
    ``expected``: every event a record or extra event of theirs could make."""

    def __init__(self, store: RecordStore, topics: set[str], workflows: set[str]) -> None:
        self.store = store
        self.topics = topics
        self.workflows = workflows
        streamer = store.publishes_to if isinstance(store, DirectPublisher) else None
        self.streamer: EventStreamer | None = streamer
        self.receivers: dict[str, EventReceiver] = {}
        self.before: set[str] = set()

    @classmethod
    async def start(cls, store: RecordStore, *about: Record | OutboxEvent) -> _Probe:
        topics = {_published(a)[0] for a in about}
        workflows = {a.workflow_name for a in about}
        probe = cls(store, topics, workflows)
        if probe.streamer is None:
            probe.before = {e.id for e in await probe._outbox()}
            return probe
        name = f"adaptertest-{uuid.uuid4().hex}"
        for tp in sorted(topics):
            probe.receivers[tp] = await probe.streamer.new_receiver(
                tp, name, stream_from_latest=True
            )
        return probe

    async def _outbox(self) -> list[OutboxEvent]:
        found: list[OutboxEvent] = []
        for wf in sorted(self.workflows):
            found += await self.store.list_outbox_events(wf, 100_000)
        return found

    async def new(self) -> set[Published]:
        """The events published since :meth:`start` (then the probe is spent)."""
        if self.streamer is None:
            out = set()
            for e in await self._outbox():
                if e.id not in self.before:
                    out.add(_published(e))
            return out
        found: set[Published] = set()
        try:
            for tp, receiver in self.receivers.items():
                sender = await self.streamer.new_sender(tp)
                await sender.send(MARKER, 0, {Header.TOPIC: tp})
                await sender.close()
                while True:
                    event, ack = await within(receiver.recv(), f"receiving from topic {tp!r}")
                    await ack()
                    if event.foreign_id == MARKER:
                        break
                    version = event.headers.get(Header.RECORD_VERSION, "")
                    found.add((event.headers.get(Header.TOPIC, ""), event.foreign_id, version))
        finally:
            for receiver in self.receivers.values():
                await receiver.close()
        return found


def _want(*what: Record | OutboxEvent) -> set[Published]:
    return {_published(w) for w in what}


async def composition_round_trip(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    parent = _record("parent")
    await store.store(parent)
    child = _child(parent, "child")
    versions = [child, _saga(child, 2, 2), _saga(_saga(child, 2, 2), 3, 2, 3)]
    versions.append(_saga(versions[-1], 3, 2, 3, compensating=True))
    versions.append(_saga(versions[-1], 2, 2, compensating=True))
    for v in versions:
        await store.store(v)
    last = versions[-1]
    _same(await store.lookup(child.run_id), last, "lookup of a child run (parent, compensations)")
    _same(await store.latest(WF2, "child"), last, "latest of a child run")
    listed = await store.list(WF2, 0, 10)
    check(len(listed) == 1, f"list returned {len(listed)} runs, want 1")
    _same(listed[0], last, "list of a child run")
    _same(await store.lookup(parent.run_id), parent, "lookup of a run without a parent")
    if isinstance(store, RecordHistory):
        history = await store.history(child.run_id)
        check(len(history) == len(versions), f"history has {len(history)} versions")
        for got, want in zip(history, versions, strict=False):
            _same(got, want, f"history version {want.meta.version} (compensations)")


async def by_parent(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    p1, p2 = _record("p1"), _record("p2")
    c1, c2, c3 = _child(p1, "c1"), _child(p1, "c2", workflow_name=WF), _child(p2, "c3")
    grandchild = _child(c1, "g1")
    for r in (p1, c1, p2, c2, c3, grandchild, _record("alone", workflow_name=WF2)):
        await store.store(r)

    async def listed(workflow_name: str, *filters: Filter) -> list[str]:
        return [r.run_id for r in await store.list(workflow_name, 0, 100, "asc", *filters)]

    got = await listed("", Filter.by_parent(p1.run_id))
    check(got == [c1.run_id, c2.run_id], f"list('', by_parent(p1)) returned {got}")
    got = await listed(WF2, Filter.by_parent(p1.run_id))
    check(got == [c1.run_id], f"list(WF2, by_parent(p1)) returned {got}, want the child in WF2")
    got = await listed("", Filter.by_parent(p1.run_id, p2.run_id))
    want = [c1.run_id, c2.run_id, c3.run_id]
    check(got == want, f"list('', by_parent(p1, p2)) returned {got}, want {want}")
    got = await listed("", Filter.by_parent(c1.run_id))
    check(got == [grandchild.run_id], f"list('', by_parent(c1)) returned {got}")
    got = await listed("", Filter.by_parent("no-such-run"))
    check(got == [], f"list('', by_parent(unknown)) returned {got}")
    got = await listed("", Filter.by_parent(p1.run_id), Filter.by_foreign_id("c2"))
    check(got == [c2.run_id], f"by_parent with by_foreign_id returned {got}")
    alone = await store.latest(WF2, "alone")
    got = await listed("", Filter.by_parent(""))
    want = [p1.run_id, p2.run_id, alone.run_id]
    check(got == want, f"list('', by_parent('')) returned {got}, want the runs without a parent")


# -- store_many ------------------------------------------------------------------------------


async def _atomic(factory: RecordStoreFactory) -> tuple[RecordStore, AtomicWrites] | None:
    store = await resolve(factory())
    if not isinstance(store, AtomicWrites):
        return None  # an optional capability
    return store, store


async def _refused(
    store: AtomicWrites,
    records: Sequence[Record],
    events: Sequence[OutboxEvent],
    error: type[Exception] | tuple[type[Exception], ...],
    what: str,
) -> Exception:
    try:
        await store.store_many(records, events)
    except error as err:
        return err
    except Exception as err:
        raise AssertionError(f"store_many of {what} raised {type(err).__name__}: {err}") from err
    raise AssertionError(f"store_many of {what} was accepted (expected {error})")


async def store_many_writes_everything(factory: RecordStoreFactory) -> None:
    found = await _atomic(factory)
    if found is None:
        return
    store, atomic = found
    parent = _record("parent")
    await store.store(parent)
    moved = _saga(parent, 2, 2)
    c1, c2 = _child(parent, "c1"), _child(parent, "c2")
    finished = make_child_finished_event(replace(c1, run_state=RunState.COMPLETED))
    probe = await _Probe.start(store, moved, c1, c2, finished)
    await atomic.store_many([moved, c1, c2], [finished])
    got = await probe.new()
    want = _want(moved, c1, c2, finished)
    check(
        got == want,
        f"store_many published {sorted(got)}; want each record's event and the extra event "
        f"{sorted(want)}",
    )
    _same(await store.lookup(parent.run_id), moved, "lookup after store_many (an update)")
    for c in (c1, c2):
        _same(await store.lookup(c.run_id), c, "lookup of a child stored by store_many")
    children = [
        r.run_id for r in await store.list("", 0, 10, "asc", Filter.by_parent(parent.run_id))
    ]
    check(children == [c1.run_id, c2.run_id], f"by_parent after store_many returned {children}")
    if isinstance(store, RecordHistory):
        versions = [r.meta.version for r in await store.history(parent.run_id)]
        check(versions == [1, 2], f"history after store_many has versions {versions}")
        _same((await store.history(c2.run_id))[0], c2, "history of a run made by store_many")

    # only extra events; only records; nothing at all
    other = make_child_finished_event(replace(c2, run_state=RunState.CANCELLED))
    probe = await _Probe.start(store, other)
    await atomic.store_many([], [other])
    check(await probe.new() == _want(other), "store_many of an extra event alone lost it")
    done = _next(c2, RunState.COMPLETED, 9)
    probe = await _Probe.start(store, done)
    await atomic.store_many([done])
    check(await probe.new() == _want(done), "store_many of one record did not publish its event")
    _same(await store.lookup(c2.run_id), done, "lookup after store_many of one record")
    await atomic.store_many([])


async def store_many_is_all_or_nothing(factory: RecordStoreFactory) -> None:
    found = await _atomic(factory)
    if found is None:
        return
    store, atomic = found
    parent = _record("parent")
    await store.store(parent)
    current = _saga(parent, 2, 2)
    await store.store(current)
    live = _record("live")
    await store.store(live)

    async def nothing_written(
        records: Sequence[Record],
        error: type[Exception] | tuple[type[Exception], ...],
        what: str,
    ) -> Exception:
        extra = make_child_finished_event(
            replace(_child(parent, "x"), run_state=RunState.COMPLETED)
        )
        probe = await _Probe.start(store, *records, extra)
        err = await _refused(atomic, records, [extra], error, what)
        published = await probe.new()
        check(not published, f"a refused store_many ({what}) published {sorted(published)}")
        _same(await store.lookup(parent.run_id), current, f"the parent after {what}")
        for r in records:
            if r.run_id not in (parent.run_id, live.run_id):
                await _absent(store.lookup(r.run_id), f"lookup of a new run of a refused {what}")
        if isinstance(store, RecordHistory):
            versions = [r.meta.version for r in await store.history(parent.run_id)]
            check(versions == [1, 2], f"a refused {what} left history versions {versions}")
        return err

    stale = _saga(parent, 3, 2, 3)  # version 2 again: stale
    await nothing_written(
        [_child(parent, "a"), stale, _child(parent, "b")],
        ConcurrentUpdateError,
        "one stale update among new runs",
    )
    ghost = _next(_record("ghost"), RunState.RUNNING, 2)
    await nothing_written(
        [_saga(current, 3, 2, 3), ghost], ConcurrentUpdateError, "an update of an unknown run"
    )
    await nothing_written(
        [_saga(current, 3, 2, 3), _child(parent, "twin"), _child(parent, "twin")],
        WorkflowInProgressError,
        "two new runs of one foreign id",
    )
    await nothing_written(
        [_child(parent, "c"), _record("live")],
        WorkflowInProgressError,
        "a new run of a foreign id with an unfinished run",
    )
    await nothing_written(
        [_child(parent, "c"), live],
        (ConcurrentUpdateError, WorkflowInProgressError),
        "version 1 of an existing run",
    )
    # the first record refused decides the error
    await nothing_written(
        [_record("live"), stale], WorkflowInProgressError, "an in-progress run, then a stale one"
    )
    await nothing_written(
        [stale, _record("live")], ConcurrentUpdateError, "a stale run, then an in-progress one"
    )
    # idempotency keys: held by a stored run, or by a new run of the same call
    keyed = _keyed(_record("keyed"), "k-1")
    await store.store(keyed)
    again = _keyed(_child(parent, "k2", workflow_name=WF), "k-1")
    err = await nothing_written(
        [_child(parent, "k1"), again], IdempotencyKeyUsedError, "a new run with a used key"
    )
    check(
        isinstance(err, IdempotencyKeyUsedError) and err.run_id == keyed.run_id,
        f"IdempotencyKeyUsedError names {getattr(err, 'run_id', None)}, want {keyed.run_id}",
    )
    first, second = _keyed(_child(parent, "k3"), "k-2"), _keyed(_child(parent, "k4"), "k-2")
    err = await nothing_written(
        [first, second], IdempotencyKeyUsedError, "two new runs with one key"
    )
    check(
        isinstance(err, IdempotencyKeyUsedError) and err.run_id == first.run_id,
        f"IdempotencyKeyUsedError names {getattr(err, 'run_id', None)}, want {first.run_id}",
    )
    # nothing of the refused calls is left in the way
    await atomic.store_many([_saga(current, 3, 2, 3), _child(parent, "twin"), first])


def composition_checks(
    factory: RecordStoreFactory,
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """The composition behaviours (see :func:`run_atomic_writes_test`)."""
    return [
        ("meta round trip (parent, compensations)", lambda: composition_round_trip(factory)),
        ("Filter.by_parent", lambda: by_parent(factory)),
        ("store_many writes every record and event", lambda: store_many_writes_everything(factory)),
        ("store_many is all or nothing", lambda: store_many_is_all_or_nothing(factory)),
    ]


async def run_atomic_writes_test(factory: RecordStoreFactory) -> None:
    """Check what child workflows need of a record store: the parent and saga fields of
    ``Meta`` round-trip, ``Filter.by_parent``, and ``store_many`` (when the store offers
    :class:`~workflow.abc.AtomicWrites`): every record and extra event written, or on the
    first refusal none, with the error ``store`` would raise for that record. Part of
    ``run_record_store_test``; run it alone for a store that publishes its events to a
    streamer itself (:class:`~workflow.abc.DirectPublisher`), which the outbox checks of
    ``run_record_store_test`` do not fit."""
    await run_checks("record store", composition_checks(factory))
